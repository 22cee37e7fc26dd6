import type { BenchImages, SizeName } from '../images.ts';
import type { MachineFacts } from './facts.ts';
import type { FanoutMode, FanoutSample } from './fanout.ts';
import { wireLimitSeconds, type LinkProfile } from './link.ts';
import type { SigningCost } from './signing.ts';
import type { Measurement, Method, MethodId, Phase } from './methods.ts';

/** One run of one method, or why it failed. */
export interface Sample {
  /** The link profile's name (`loopback`, `100mbit`, …). */
  link: string;
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
  /** The link profiles measured, in order, each with its methods (their commands name its addresses). */
  links: LinkMethods[];
  images: BenchImages[];
  samples: Sample[];
  fanout: FanoutSample[];
  /** Whether the kernel had netem (round trips from the kernel) or not (from delaying relays); undefined: no shaped link. */
  netem?: boolean;
  /** The code measured: commit and whether the tree had changes on top. */
  revision: string;
  /** Which `ferry` ran: the installed release or the checkout's sources. */
  ferryBuild: string;
  /** Given with --note: what the person running the bench wants the reader to know. */
  notes: string[];
  /** What signing and checking one request cost, measured in this run (bench/lib/signing.ts). */
  signing?: SigningCost;
}

export interface LinkMethods {
  link: LinkProfile;
  methods: Pick<Method, 'id' | 'title' | 'commands'>[];
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
  /** Seconds the busier direction's bytes take at the link's rate (NaN on loopback). */
  limit: number;
  wireDetail: string;
  sender: number;
  receiver: number;
  totals: number[];
}

function rows(input: ReportInput, links: LinkMethods, size: SizeName, phase: Phase): Row[] {
  return links.methods.map((method) => {
    const samples = input.samples.filter((s) => s.link === links.link.name && s.size === size && s.phase === phase && s.method === method.id);
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
      limit: pick((m) => (m.limitBytes === undefined ? undefined : wireLimitSeconds(m.limitBytes, links.link))),
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

function table(input: ReportInput, links: LinkMethods, size: SizeName, phase: Phase): string[] {
  const all = rows(input, links, size, phase);
  if (all.every((r) => r.runs === 0 && r.failures.length === 0)) return [];
  const floor = all[0];
  const shaped = links.link.rateBits !== undefined;
  const lines = [
    `| Method | image on target, s | × pipe |${shaped ? ' wire limit, s | × limit |' : ''} start + healthy, s | end to end, s | × pipe | on the wire, MB | wire detail (last run) | sender peak, MiB | receiver peak, MiB | end-to-end runs, s |`,
    `|---|---:|---:|${shaped ? '---:|---:|' : ''}---:|---:|---:|---:|---|---:|---:|---|`,
  ];
  for (const row of all) {
    const failed = row.failures.length ? ` (${row.failures.length} failed)` : '';
    const limit = shaped ? ` ${s(row.limit)} | ${x(row.move, row.limit)} |` : '';
    lines.push(`| ${cell(row.title)}${failed} | ${s(row.move)} | ${x(row.move, floor?.move ?? Number.NaN)} |${limit} ${s(row.start)} | ${s(row.total)} | ${x(row.total, floor?.total ?? Number.NaN)} | ${MB(row.wire)} | ${row.wireDetail} | ${MiB(row.sender)} | ${MiB(row.receiver)} | ${row.totals.map(s).join(', ')} |`);
  }
  return lines;
}

/** One push to N targets against the same N one after another, per size and phase. */
function fanoutTables(input: ReportInput): string[] {
  const first = input.fanout[0];
  if (!first) return [];
  const out = [
    `## Fan-out: one sender, ${first.targets} targets, each behind its own ${first.link} link`,
    '',
    `Each target is a private engine with a \`ferry receiver\` in a namespace of its own behind its own link. **fan-out**: one \`ferry push --to A --to B …\`;`,
    `**one after another**: ${first.targets} single \`ferry push --to X\`, timed together. The containers run with \`--network none\` and no health check`,
    `(${first.targets} containers on the host network would want one port). Wire limit: fan-out, the slowest link's busier direction over the rate`,
    '(the links run side by side); one after another, the sum over the links. Receiver peak: the highest VmHWM of the receivers, each reset before the push',
    '(one after another: the highest over the single pushes). Medians of the runs.',
    '',
  ];
  for (const size of [...new Set(input.fanout.map((f) => f.size))]) {
    for (const phase of ['cold', 'warm'] as const) {
      const of = (mode: FanoutMode): FanoutSample[] => input.fanout.filter((f) => f.size === size && f.phase === phase && f.mode === mode);
      if (of('fanout').length + of('sequential').length === 0) continue;
      const pick = (samples: FanoutSample[], f: (x: FanoutSample) => number | undefined): number => median(samples.flatMap((x) => { const v = x.error ? undefined : f(x); return v === undefined ? [] : [v]; }));
      const sequential = pick(of('sequential'), (x) => x.totalSeconds);
      out.push(`### ${size}, ${phase}`, '', '| | end to end, s | × one after another | per target (last run), s | wire limit, s | × limit | on the links, MB | sender peak, MiB | receiver peak, MiB | detail (last run) | runs, s |', '|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|');
      for (const mode of ['fanout', 'sequential'] as const) {
        const samples = of(mode);
        const ok = samples.filter((x) => !x.error);
        const total = pick(samples, (x) => x.totalSeconds);
        const limit = pick(samples, (x) => x.limitSeconds);
        const failed = samples.length - ok.length ? ` (${samples.length - ok.length} failed)` : '';
        const title = mode === 'fanout' ? `fan-out: one \`ferry push\` to ${first.targets}` : `one after another: ${first.targets} × \`ferry push\``;
        out.push(`| ${title}${failed} | ${s(total)} | ${x(total, sequential)} | ${ok.at(-1)?.targetSeconds?.map(s).join(', ') ?? ''} | ${s(limit)} | ${x(total, limit)} | ${MB(pick(samples, (x) => x.wireBytes))} | ${MiB(pick(samples, (x) => x.senderPeakKb))} | ${MiB(pick(samples, (x) => x.receiverPeakKb))} | ${cell(ok.at(-1)?.detail ?? '')} | ${ok.map((x) => s(x.totalSeconds ?? Number.NaN)).join(', ')} |`);
      }
      out.push('');
    }
  }
  const failures = input.fanout.filter((f) => f.error);
  if (failures.length) out.push(...failures.map((f) => `- failed: ${f.size} ${f.phase} ${f.mode} run ${f.run}: ${(f.error ?? '').replaceAll('\n', ' ').slice(0, 600)}`), '');
  return out;
}

/** What a shaped link is and how its numbers read. */
function linkSection(input: ReportInput): string[] {
  const shaped = input.links.filter((l) => l.link.rateBits !== undefined);
  if (shaped.length === 0 && input.fanout.length === 0) return [];
  const delay = input.netem === false
    ? 'This kernel has no netem: a profile\'s round trip comes from a delaying relay (bench/lib/delay-relay.ts) inside the namespace, in front of each service, that holds every chunk for half the round trip in each direction. It adds the round trip to every request and answer, but TCP itself runs over the short veth path, so the window growth a long real link would slow is not modelled.'
    : 'A profile\'s round trip is netem\'s, half of it on each end of the veth pair, under the rate.';
  const out = [
    '## Links',
    '',
    'A shaped link is a network namespace of the bench\'s own joined to the root namespace by a veth pair, with HTB at the profile\'s rate on both ends (each direction has the full rate).',
    'The sender, the build engine and the clients of the pipe, ssh and docker run in the root namespace; the receiver, sshd (and the `gunzip | docker load` it runs), the registry and the pipe\'s far end (`socat | docker load`) run in the namespace and reach the target engine over its unix socket.',
    'The engines reach the registry through a forwarder on 127.0.0.1 (they allow plain HTTP to 127.0.0.0/8 only): the push crosses the link one way, the pull the other way, as through a registry host of its own.',
    'Ferry\'s receiver probes the health URL back across the link (the container runs on the target engine\'s host network, in the root namespace); the other methods\' `docker run` and health polls go straight to the engine.',
    delay,
    '',
    '- **on the wire**, over a link: the bytes through the veth pair, both directions (the interface\'s counters: frames with their IP and TCP headers, one per offload segment).',
    '- **wire limit**: the bytes of the busier direction divided by the rate, summed over steps that run one after another (the registry\'s push, then its pull): no method moves its bytes faster. **× limit**: "image on target" over that.',
    '- Untimed set-up (the registry\'s v1 for the warm phase) runs with the shaping lifted.',
    '',
  ];
  for (const links of shaped.slice(0, 1)) {
    out.push(`Commands through the ${links.link.name} link (the other links differ only in addresses):`, '');
    links.methods.forEach((method, index) => {
      out.push(`${index + 1}. **${method.title}**`, '', '   ```sh', ...method.commands.map((c) => `   ${c}`), '   ```', '');
    });
  }
  return out;
}


/** The targets of bench/README.md "Performance targets", checked on the largest size measured, on the first link. */
function targets(input: ReportInput): string[] {
  const links = input.links[0];
  if (!links) return [];
  const size = [...input.sizes].reverse().find((z) => rows(input, links, z, 'cold').some((r) => r.method === 'ferry' && r.runs > 0));
  if (!size) return [];
  const cold = new Map(rows(input, links, size, 'cold').map((r) => [r.method, r]));
  const warm = new Map(rows(input, links, size, 'warm').map((r) => [r.method, r]));
  const verdict = (ok: boolean): string => (ok ? 'met' : '**not met**');
  const out = [`On the ${size} image${input.links.length > 1 || links.link.name !== 'loopback' ? `, ${links.link.name}` : ''} (medians):`, ''];
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
  const signed = input.samples.filter((x) => x.link === links.link.name && x.size === size && x.phase === 'cold' && x.method === 'ferry' && x.measurement?.signedRequests !== undefined);
  if (input.signing && ferry?.runs && signed.length) {
    const requests = median(signed.map((x) => x.measurement?.signedRequests ?? 0));
    const perRequest = input.signing.signMs + input.signing.verifyMs;
    const cost = (requests * perRequest) / 1000;
    out.push(`- signature checks: ${requests} signed requests × ${perRequest.toFixed(3)} ms (Ed25519 sign ${input.signing.signMs.toFixed(3)} + grant, signature and nonce check ${input.signing.verifyMs.toFixed(3)}, mean of ${input.signing.iterations} in this run) = ${cost.toFixed(3)} s, ${(100 * cost / ferry.total).toFixed(2)} % of the cold push's ${s(ferry.total)} s (target < 2 %): ${verdict(cost < 0.02 * ferry.total)}.`);
  }
  const peaks = input.sizes.flatMap((z) => rows(input, links, z, 'cold').filter((r) => r.method === 'ferry' && r.runs).map((r) => `${z} ${MiB(r.sender)}/${MiB(r.receiver)}`));
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
      + ` (timings.total): starting Node and loading the CLI's modules before it (from a checkout, stripping their TypeScript too), and ${s(lag)} s between printing the result and exiting.`
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
    `- Ferry: ${input.revision}; measured as ${input.ferryBuild}`,
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
  (input.links[0]?.methods ?? []).forEach((method, index) => {
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
    '- **on the wire**: on loopback, bytes through a counting TCP proxy (ssh: the encrypted stream; registry: push plus pull, HTTP included; ferry: every request of the push), for the pipe the bytes through the pipe.',
    '- **peak memory**: VmHWM from /proc of the `ferry push` process (sampled every 50 ms) and of the receiver process (reset through /proc/PID/clear_refs before each run).',
    '',
  );
  out.push(...linkSection(input));
  const onlyLoopback = input.links.length === 1 && input.links[0]?.link.name === 'loopback';
  for (const links of input.links) {
    for (const size of input.sizes) {
      for (const phase of ['cold', 'warm'] as const) {
        const lines = table(input, links, size, phase);
        if (lines.length === 0) continue;
        out.push(`## ${onlyLoopback ? '' : `${links.link.name}: `}${size}, ${phase}${phase === 'warm' ? ' (v2 while v1 is present)' : ''}`, '', ...lines, '');
      }
    }
  }
  out.push(...fanoutTables(input));
  const checked = targets(input);
  if (checked.length) out.push('## Against the performance targets', '', ...checked, '');
  out.push('## Notes', '', ...[...input.notes, ...autoNotes(input)].map((note) => `- ${note}`), '');
  const failures = input.samples.filter((sample) => sample.error);
  if (failures.length) {
    out.push('## Failed runs', '');
    for (const failure of failures) out.push(`- ${failure.link} ${failure.size} ${failure.phase} ${failure.method} run ${failure.run}: ${(failure.error ?? '').replaceAll('\n', ' ').slice(0, 600)}`);
    out.push('');
  }
  out.push('## Every run', '', '| link | size | phase | method | run | load | image on target, s | start, s | end to end, s | wire, MB | sender, MiB | receiver, MiB | stages, s |', '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const sample of input.samples) {
    const m = sample.measurement;
    out.push(`| ${sample.link} | ${sample.size} | ${sample.phase} | ${sample.method} | ${sample.run} | ${sample.load.toFixed(2)} | ${m ? s(m.moveSeconds) : 'failed'} | ${m ? s(m.startSeconds) : ''} | ${m ? s(m.totalSeconds) : ''} | ${m ? MB(m.wireBytes) : ''} | ${m?.senderPeakKb ? MiB(m.senderPeakKb) : ''} | ${m?.receiverPeakKb ? MiB(m.receiverPeakKb) : ''} | ${m?.detail ?? ''} |`);
  }
  out.push('');
  return out.join('\n');
}
