import type { BenchImages, SizeName } from '../images.ts';
import type { MachineFacts } from './facts.ts';
import type { SigningCost } from './signing.ts';
import type { Measurement, Method, MethodId, Phase } from './methods.ts';

/** One run of one method, or why it failed. */
export interface Sample {
  size: SizeName;
  phase: Phase;
  method: MethodId;
  run: number;
  /** 1-minute load average when the run started: the machine is shared. */
  load: number;
  measurement?: Measurement;
  error?: string;
}

export interface ReportInput {
  command: string;
  facts: MachineFacts;
  loadAtEnd: string;
  finishedAt: string;
  /** False while the bench is still going or was interrupted. */
  complete: boolean;
  runs: number;
  sizes: SizeName[];
  methods: Pick<Method, 'id' | 'title' | 'commands'>[];
  images: BenchImages[];
  samples: Sample[];
  /** The code measured: commit and whether the tree had changes on top. */
  revision: string;
  /** Given with --note: what the person running the bench wants the reader to know. */
  notes: string[];
  /** What signing and checking one request cost, measured in this run (bench/lib/signing.ts). */
  signing?: SigningCost;
}

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] ?? Number.NaN : ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
}

interface Row {
  method: MethodId;
  title: string;
  runs: number;
  failures: string[];
  move: number;
  start: number;
  total: number;
  wire: number;
  oneHop: number;
  wireDetail: string;
  sender: number;
  receiver: number;
  totals: number[];
}

function rows(input: ReportInput, size: SizeName, phase: Phase): Row[] {
  return input.methods.map((method) => {
    const samples = input.samples.filter((s) => s.size === size && s.phase === phase && s.method === method.id);
    const ok = samples.flatMap((s) => (s.measurement ? [s.measurement] : []));
    const pick = (f: (m: Measurement) => number | undefined): number => median(ok.flatMap((m) => { const v = f(m); return v === undefined ? [] : [v]; }));
    return {
      method: method.id,
      title: `${method.title}${method.id === 'ferry' ? ` (${phase})` : ''}`,
      runs: ok.length,
      failures: samples.flatMap((s) => (s.error ? [s.error] : [])),
      move: pick((m) => m.moveSeconds),
      start: pick((m) => m.startSeconds),
      total: pick((m) => m.totalSeconds),
      wire: pick((m) => m.wireBytes),
      oneHop: pick((m) => m.oneHopBytes ?? m.wireBytes),
      wireDetail: ok.at(-1)?.wireDetail ?? '',
      sender: pick((m) => m.senderPeakKb),
      receiver: pick((m) => m.receiverPeakKb),
      totals: ok.map((m) => m.totalSeconds),
    };
  });
}

/** A pipe inside a table cell ends the cell in Markdown. */
const cell = (text: string): string => text.replaceAll('|', '\\|');
const s = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : '—');
/** Two figures set side by side in a verdict: with two decimals where one would show them equal. */
const pair = (a: number, b: number): [string, string] => (s(a) === s(b) && a !== b ? [a.toFixed(2), b.toFixed(2)] : [s(a), s(b)]);
const x = (n: number, base: number): string => (Number.isFinite(n) && Number.isFinite(base) && base > 0 ? `${(n / base).toFixed(2)}×` : '—');
const MB = (n: number): string => (Number.isFinite(n) ? (n / 1e6).toFixed(1) : '—');
const MiB = (kb: number): string => (Number.isFinite(kb) ? (kb / 1024).toFixed(0) : '—');

function table(input: ReportInput, size: SizeName, phase: Phase): string[] {
  const all = rows(input, size, phase);
  if (all.every((r) => r.runs === 0 && r.failures.length === 0)) return [];
  const floor = all[0];
  const lines = [
    '| Method | image on target, s | × pipe | start + healthy, s | end to end, s | × pipe | on the wire, MB | wire detail (last run) | sender peak, MiB | receiver peak, MiB | end-to-end runs, s |',
    '|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|',
  ];
  for (const row of all) {
    const failed = row.failures.length ? ` (${row.failures.length} failed)` : '';
    lines.push(`| ${cell(row.title)}${failed} | ${s(row.move)} | ${x(row.move, floor?.move ?? Number.NaN)} | ${s(row.start)} | ${s(row.total)} | ${x(row.total, floor?.total ?? Number.NaN)} | ${MB(row.wire)} | ${row.wireDetail} | ${MiB(row.sender)} | ${MiB(row.receiver)} | ${row.totals.map(s).join(', ')} |`);
  }
  return lines;
}

/** The targets of bench/README.md "Performance targets", checked on the largest size measured. */
function targets(input: ReportInput): string[] {
  const size = [...input.sizes].reverse().find((z) => rows(input, z, 'cold').some((r) => r.method === 'ferry' && r.runs > 0));
  if (!size) return [];
  const cold = new Map(rows(input, size, 'cold').map((r) => [r.method, r]));
  const warm = new Map(rows(input, size, 'warm').map((r) => [r.method, r]));
  const verdict = (ok: boolean): string => (ok ? 'met' : '**not met**');
  const out = [`On the ${size} image (medians):`, ''];
  const ferry = cold.get('ferry');
  const pipe = cold.get('pipe');
  if (ferry && pipe && ferry.runs && pipe.runs) {
    out.push(`- cold \`ferry push\` (whole push, incl. deploy and health check) ${s(ferry.total)} s vs the bare pipe's ${s(pipe.move)} s = ${x(ferry.total, pipe.move)} (target ≤ 1.0×): ${verdict(ferry.total <= pipe.move)}; image on target ${s(ferry.move)} s = ${x(ferry.move, pipe.move)}.`);
    for (const other of ['ssh', 'registry'] as const) {
      const row = cold.get(other);
      if (row?.runs) out.push(`- cold, end to end, faster than ${row.title}: ${s(ferry.total)} s vs ${s(row.total)} s: ${verdict(ferry.total < row.total)}.`);
    }
  }
  const ferryWarm = warm.get('ferry');
  const registryWarm = warm.get('registry');
  if (ferryWarm?.runs && registryWarm?.runs) {
    out.push(`- warm bytes: ferry ${MB(ferryWarm.wire)} MB vs the ${MB(registryWarm.oneHop)} MB the registry moves each way (the larger of push and pull; ${MB(registryWarm.wire)} MB both) = ${x(ferryWarm.wire, registryWarm.oneHop)} (target ≤ 1.1×): ${verdict(ferryWarm.wire <= 1.1 * registryWarm.oneHop)}.`);
    // Three readings of "time ≤ the registry's push + pull": like for like (the image on the
    // target), end to end (both also start the container and pass its health check), and the
    // strict one, ferry's whole push against the registry's move alone.
    const like = pair(ferryWarm.move, registryWarm.move);
    const whole = pair(ferryWarm.total, registryWarm.total);
    const strict = pair(ferryWarm.total, registryWarm.move);
    out.push(`- warm time, image on target: ferry ${like[0]} s vs the registry's push + pull ${like[1]} s: ${verdict(ferryWarm.move <= registryWarm.move)}.`);
    out.push(`- warm time, end to end (container replaced and healthy): ferry ${whole[0]} s vs the registry's ${whole[1]} s: ${verdict(ferryWarm.total <= registryWarm.total)}.`);
    out.push(`- warm time, strict: ferry's whole push ${strict[0]} s vs the registry's push + pull alone ${strict[1]} s: ${verdict(ferryWarm.total <= registryWarm.move)}.`);
  }
  const signed = input.samples.filter((x) => x.size === size && x.phase === 'cold' && x.method === 'ferry' && x.measurement?.signedRequests !== undefined);
  if (input.signing && ferry?.runs && signed.length) {
    const requests = median(signed.map((x) => x.measurement?.signedRequests ?? 0));
    const perRequest = input.signing.signMs + input.signing.verifyMs;
    const cost = (requests * perRequest) / 1000;
    out.push(`- signature checks: ${requests} signed requests × ${perRequest.toFixed(3)} ms (Ed25519 sign ${input.signing.signMs.toFixed(3)} + grant, signature and nonce check ${input.signing.verifyMs.toFixed(3)}, mean of ${input.signing.iterations} in this run) = ${cost.toFixed(3)} s, ${(100 * cost / ferry.total).toFixed(2)} % of the cold push's ${s(ferry.total)} s (target < 2 %): ${verdict(cost < 0.02 * ferry.total)}.`);
  }
  const peaks = input.sizes.flatMap((z) => rows(input, z, 'cold').filter((r) => r.method === 'ferry' && r.runs).map((r) => `${z} ${MiB(r.sender)}/${MiB(r.receiver)}`));
  if (peaks.length) out.push(`- memory flat in image size: sender/receiver peak MiB by size: ${peaks.join(', ')}.`);
  return out;
}

/** What the numbers themselves say that a reader might miss. */
function autoNotes(input: ReportInput): string[] {
  const notes: string[] = [];
  const left = (['small', 'medium', 'large'] as const).filter((z) => !input.sizes.includes(z));
  if (left.length) notes.push(`Sizes not measured in this run: ${left.join(', ')}.`);
  for (const size of input.sizes) {
    const ferry = input.samples.filter((x) => x.size === size && x.method === 'ferry').flatMap((x) => (x.measurement?.outsideSeconds !== undefined ? [x.measurement] : []));
    if (ferry.length === 0) continue;
    const outside = median(ferry.map((m) => m.outsideSeconds ?? 0));
    const total = median(ferry.map((m) => m.totalSeconds));
    const lag = median(ferry.map((m) => m.exitLagSeconds ?? Number.NaN).filter(Number.isFinite));
    notes.push(`${size}: of each \`ferry push\` (median ${s(total)} s, cold and warm), a median ${s(outside)} s passed outside the push's own clock`
      + ` (timings.total): starting Node and loading the CLI's modules (TypeScript type stripping) before it, and ${s(lag)} s between printing the result and exiting.`
      + ' The other methods\' commands (docker, gzip, ssh) are native binaries that start in milliseconds.');
  }
  return notes;
}

export function renderReport(input: ReportInput): string {
  const f = input.facts;
  const loads = input.samples.map((sample) => sample.load);
  const out: string[] = [
    '# Ferry benchmark results',
    '',
    `Written by \`${input.command}\` (bench/compare.ts; how to run and read it: bench/README.md).`,
    input.complete ? `Started ${f.date}, finished ${input.finishedAt}.` : `**Incomplete** (still running or interrupted): started ${f.date}, last written ${input.finishedAt}.`,
    '',
    '## Machine',
    '',
    `- ${f.nproc} CPUs (${f.cpu}), ${f.memory} memory, ${f.kernel}`,
    `- build engine: ${f.buildEngine}`,
    `- target engine: ${f.targetEngine}`,
    `- docker CLI ${f.dockerClient}; Node.js ${f.node}; ${f.tools}`,
    `- Ferry: ${input.revision}`,
    `- load average at start ${f.loadAtStart}, at the end ${input.loadAtEnd}; 1-minute load when runs started: min ${s(Math.min(...loads))}, median ${s(median(loads))}, max ${s(Math.max(...loads))}.`,
    '  The machine is shared: other workloads (builds, test suites) ran on the same 2 cores and the same two engines',
    '  during the bench, so absolute times are noisy; runs alternate between methods so that the noise falls on all of them.',
    '',
    '## Images',
    '',
    'Generated by bench/images.ts: FROM scratch, deterministic (sorted file lists, fixed modes and mtimes, seeded generators);',
    'v2 differs from v1 only in the top layer.',
    '',
  ];
  for (const images of input.images) {
    out.push(`- **${images.size}**: ${images.v1.ref} ${(images.v1.bytes / 1e6).toFixed(1)} MB, ${images.v1.diffIds.length} layers: ${images.layers.join('; ')}.`);
  }
  out.push('', '## Methods', '');
  input.methods.forEach((method, index) => {
    out.push(`${index + 1}. **${method.title}**`, '', '   ```sh', ...method.commands.map((c) => `   ${c}`), '   ```', '');
  });
  out.push(
    `Each size: ${input.runs} run(s) of every method, in turn (pipe, ssh, registry, ferry, then again), cold first and then warm; the tables give medians.`,
    '',
    '- **cold**: the image is absent from the target engine (it and its containers are removed, by id, before each run; the registry starts from empty storage).',
    '- **warm**: v2 is moved while v1 is on the target (v1 was pulled from the registry once, untimed, so the target engine also knows the registry\'s blob digests); only v2 is removed between runs, and the registry starts from a copy of its storage holding v1.',
    '- **image on target**: until the image is loaded on the target engine. For ferry this is the whole `ferry push` minus the receiver\'s deploy and health stages (it includes packaging, upload, verification, load).',
    '- **start + healthy**: `docker run -d --network host` and polling /healthz every 100 ms; for ferry the receiver\'s own deploy + health stages (same probe interval).',
    '- **end to end**: the sum; for ferry the wall time of the `ferry push` process.',
    '- **on the wire**: bytes through a counting TCP proxy on loopback (ssh: the encrypted stream; registry: push plus pull, HTTP included; ferry: every request of the push), for the pipe the bytes through the pipe.',
    '- **peak memory**: VmHWM from /proc of the `ferry push` process (sampled every 50 ms) and of the receiver process (reset through /proc/PID/clear_refs before each run).',
    '',
  );
  for (const size of input.sizes) {
    for (const phase of ['cold', 'warm'] as const) {
      const lines = table(input, size, phase);
      if (lines.length === 0) continue;
      out.push(`## ${size}, ${phase}${phase === 'warm' ? ' (v2 while v1 is present)' : ''}`, '', ...lines, '');
    }
  }
  const checked = targets(input);
  if (checked.length) out.push('## Against the performance targets', '', ...checked, '');
  out.push('## Notes', '', ...[...input.notes, ...autoNotes(input)].map((note) => `- ${note}`), '');
  const failures = input.samples.filter((sample) => sample.error);
  if (failures.length) {
    out.push('## Failed runs', '');
    for (const failure of failures) out.push(`- ${failure.size} ${failure.phase} ${failure.method} run ${failure.run}: ${(failure.error ?? '').replaceAll('\n', ' ').slice(0, 600)}`);
    out.push('');
  }
  out.push('## Every run', '', '| size | phase | method | run | load | image on target, s | start, s | end to end, s | wire, MB | sender, MiB | receiver, MiB | stages, s |', '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const sample of input.samples) {
    const m = sample.measurement;
    out.push(`| ${sample.size} | ${sample.phase} | ${sample.method} | ${sample.run} | ${sample.load.toFixed(2)} | ${m ? s(m.moveSeconds) : 'failed'} | ${m ? s(m.startSeconds) : ''} | ${m ? s(m.totalSeconds) : ''} | ${m ? MB(m.wireBytes) : ''} | ${m?.senderPeakKb ? MiB(m.senderPeakKb) : ''} | ${m?.receiverPeakKb ? MiB(m.receiverPeakKb) : ''} | ${m?.detail ?? ''} |`);
  }
  out.push('');
  return out.join('\n');
}
