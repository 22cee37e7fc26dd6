/**
 * Showcase (not part of CI): the sender's memory while ONE `ferry push` fans a ~1 GB image out
 * to three receivers on three Docker engines.
 *
 *   node bench/fanout-memory.ts        (the local stack must be up: bash deploy/local-stack.sh up)
 *
 * The image is BENCH_IMAGE on the build engine (default ferry-bench-large:v1 from
 * `node bench/images.ts large`: ~1 GB FROM scratch, real binaries and random assets); when it is
 * missing, a FROM-scratch image of busybox plus 10 × 100 MB of random bytes is built instead.
 * Three `ferry receiver` processes run on the stack's target engine and on two private dockerds
 * started here (torn down at the end). The real `ferry push` command runs as a child process; its
 * VmHWM and VmRSS are sampled from /proc/<pid>/status every 50 ms until it exits. Prints the
 * command, the peak, and the fan-out result (bytes read from docker save once, bytes sent per
 * target); exits 1 if the peak reaches BENCH_LIMIT_MB (default 200).
 */
import { spawn } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { copyFile, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PrivateDockerd } from '../test/helpers/dockerd.ts';
import { ROOT, capture, startReceiverProcess, type ReceiverProcess } from '../test/helpers/ferry.ts';
import { dockerodeFor, stack } from '../test/helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../test/helpers/keys.ts';

const s = stack();
const LIMIT_MB = Number(process.env.BENCH_LIMIT_MB ?? 200);
const run = randomBytes(4).toString('hex');
const key = testKey(`fanbench-${run}`);
const service = `fanbench-${run}`;
const log = (msg: string): void => { process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`); };
const mib = (bytes: number): string => `${(bytes / 1024 ** 2).toFixed(1)} MiB`;

async function ensureImage(): Promise<string> {
  const build = dockerodeFor(s.buildDockerHost);
  const wanted = process.env.BENCH_IMAGE ?? 'ferry-bench-large:v1';
  if (await build.getImage(wanted).inspect().then(() => true, () => false)) return wanted;
  const ref = 'ferry-bench-fanout:10x100';
  if (await build.getImage(ref).inspect().then(() => true, () => false)) return ref;
  const ctx = await mkdtemp(join(tmpdir(), 'ferry-fanbench-ctx-'));
  try {
    log(`${wanted} is not on the build engine: writing 10 × 100 MB of random bytes for ${ref}`);
    await copyFile('/bin/busybox', join(ctx, 'busybox'));
    const chunk = Buffer.alloc(4 * 1024 ** 2);
    const lines = ['FROM scratch', 'COPY busybox /bin/busybox'];
    for (let i = 0; i < 10; i++) {
      const handle = await open(join(ctx, `r${i}`), 'w');
      for (let written = 0; written < 100 * 1024 ** 2; written += chunk.length) await handle.write(randomFillSync(chunk));
      await handle.close();
      lines.push(`COPY r${i} /data/r${i}`);
    }
    lines.push('ENTRYPOINT ["/bin/busybox", "sleep", "1000000"]');
    await writeFile(join(ctx, 'Dockerfile'), `${lines.join('\n')}\n`);
    const built = await capture('docker', ['-H', s.buildDockerHost, 'build', '--quiet', '--tag', ref, ctx], { ...process.env, DOCKER_BUILDKIT: '0' });
    if (built.code !== 0) throw new Error(`docker build: ${built.stderr}`);
    return ref;
  } finally {
    await rm(ctx, { recursive: true, force: true });
  }
}

async function sampleMemory(pid: number): Promise<{ hwm: number; rss: number } | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    return {
      hwm: Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0),
      rss: Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0),
    };
  } catch {
    return undefined;
  }
}

function hwmNow(pid: number): number {
  try {
    return Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return { ok: false, text };
  }
}

async function main(): Promise<void> {
  const image = await ensureImage();
  const info = await dockerodeFor(s.buildDockerHost).getImage(image).inspect();
  log(`image ${image}: ${mib(info.Size)} on the build engine`);
  const engines: PrivateDockerd[] = [];
  const receivers: ReceiverProcess[] = [];
  const spool = await mkdtemp(join(tmpdir(), 'ferry-fanbench-spool-'));
  const dockerHosts = [s.targetDockerHost];
  // Others' benchmarks may hold the image on the shared target engine: leave it as it was found.
  const onTarget = await dockerodeFor(s.targetDockerHost).getImage(image).inspect().then(() => true, () => false);
  try {
    log('starting two private dockerds');
    engines.push(...await Promise.all([PrivateDockerd.start(), PrivateDockerd.start()]));
    dockerHosts.push(...engines.map((e) => e.host));
    receivers.push(...await Promise.all(dockerHosts.map((dockerHost, i) => startReceiverProcess({
      DOCKER_HOST: dockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `fanbench${i}-${run}`,
    }))));
    const args = ['push', image, ...receivers.flatMap((r) => ['--to', r.url]), '--name', service, '--network', 'none', '--json', '--entrypoint', '/bin/busybox', '--', 'sleep', '1000000'];
    const command = `DOCKER_HOST=${s.buildDockerHost} FERRY_KEY_ID=… FERRY_KEY_FILE=… TMPDIR=${spool} node bin/ferry.js ${args.join(' ')}`;
    log(`running: ${command}`);
    const env: Record<string, string> = {};
    for (const [name, value] of Object.entries(process.env)) if (value !== undefined && !name.startsWith('FERRY_')) env[name] = value;
    const started = performance.now();
    const child = spawn(process.execPath, [join(ROOT, 'bin/ferry.js'), ...args], {
      env: { ...env, DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), TMPDIR: spool },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => { stdout += c; });
    // The --json progress lines mark the end of packaging: the peak up to then is packaging's.
    let packagingPeakKb: number | undefined;
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
      if (packagingPeakKb === undefined && c.includes('"stage":"transfer"')) packagingPeakKb = hwmNow(child.pid ?? 0);
    });
    const exited = new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? -1)));
    let hwm = 0;
    let rss = 0;
    let samples = 0;
    let done = false;
    void exited.then(() => { done = true; });
    const pid = child.pid ?? 0;
    while (!done) {
      const m = await sampleMemory(pid);
      if (m) { hwm = Math.max(hwm, m.hwm); rss = Math.max(rss, m.rss); samples += 1; }
      await new Promise((r) => setTimeout(r, 50));
    }
    const code = await exited;
    const seconds = (performance.now() - started) / 1000;
    const lastLine = stdout.trim().split('\n').at(-1) ?? '{}';
    const result = parseJson(lastLine) as {
      ok: boolean; bytes?: { image: number; package: number }; timings?: { package: number; total: number };
      targets?: { url: string; host?: string; state: string; bytes: { sent: number }; durationMs: number }[];
    };
    if (code !== 0 || !result.ok) log(`ferry push exited ${code}: ${stdout}\n${stderr.slice(-3000)}`);
    const report = {
      command, image, exitCode: code, seconds: Number(seconds.toFixed(1)), samples,
      sender: {
        peakVmHWM_MiB: Number((hwm / 1024).toFixed(1)), maxSampledVmRSS_MiB: Number((rss / 1024).toFixed(1)), limitMiB: LIMIT_MB,
        vmHWMWhenTransferStarted_MiB: packagingPeakKb === undefined ? null : Number((packagingPeakKb / 1024).toFixed(1)),
      },
      bytes: result.bytes, timings: result.timings,
      targets: result.targets?.map((t) => ({ host: t.host, state: t.state, sentBytes: t.bytes.sent, durationMs: t.durationMs })),
      node: process.version,
    };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    log(`sender peak VmHWM ${mib(hwm * 1024)}, max sampled VmRSS ${mib(rss * 1024)} (limit ${LIMIT_MB} MiB) over ${samples} samples, ${seconds.toFixed(1)} s`);
    if (code !== 0 || hwm / 1024 >= LIMIT_MB) process.exitCode = 1;
  } finally {
    log('cleaning up');
    await Promise.all(receivers.map((r) => r.stop().catch(() => undefined)));
    for (const host of dockerHosts) {
      const docker = dockerodeFor(host);
      for (const suffix of ['', '.ferry-previous', '.ferry-next', '.ferry-parked']) await docker.getContainer(`${service}${suffix}`).remove({ force: true }).catch(() => undefined);
    }
    if (!onTarget) await dockerodeFor(s.targetDockerHost).getImage(image).remove({ force: true }).catch(() => undefined);
    await Promise.all(engines.map((e) => e.stop().catch(() => undefined)));
    await rm(spool, { recursive: true, force: true });
  }
}

await main();
