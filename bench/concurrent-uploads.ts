/**
 * Measurement (not part of CI): the receiver's memory under reliability row 32's load at full
 * size — five ~1 GB uploads at once plus a stream of small deployments — against one large upload
 * alone, in the same invocation and the same receiver process.
 *
 *   node bench/concurrent-uploads.ts        (the local stack must be up: bash deploy/local-stack.sh up)
 *
 * Builds (or reuses) BENCH_UPLOADS images FROM scratch on the build engine, each busybox plus
 * BENCH_LAYERS layers of BENCH_LAYER_MB random bytes of its own, and BENCH_SMALL small images.
 * One `ferry receiver` runs on the stack's target engine with the stack's NATS. Then, with the
 * real `ferry push` command:
 *
 * 1. single: one large image pushed alone (streamed, the default); then its container and image
 *    are removed from the target, so that the next phase sends it whole again;
 * 2. concurrent: all large images pushed at once, BENCH_STREAMED of them streamed and the others
 *    over the resumable upload (`--no-stream`), and once the receiver takes in all of them, the
 *    small images pushed one after another to one service, alternately streamed and one-shot.
 *
 * Before each phase the receiver's VmHWM is reset (/proc/PID/clear_refs, 5); during it VmRSS and
 * VmHWM are sampled from /proc/PID/status every 50 ms. Prints the figures as JSON: each phase's
 * peak, the ratio of the concurrent peak to the single one, the receiver's resident size idle and
 * after the load, and each push's outcome and path. Exits 1 if any push failed.
 *
 * Env: BENCH_UPLOADS (default 5), BENCH_STREAMED (default BENCH_UPLOADS - 1), BENCH_LAYERS
 * (default 10), BENCH_LAYER_MB (default 100), BENCH_SMALL (default 10). The large images stay on
 * the build engine for the next run (`docker rmi` them by their `ferry-bench-concurrent` tags).
 */
import { randomBytes, randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { copyFile, mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PushResult } from '@ferry/sender';
import { buildLayeredImage, capture, runFerry, startReceiverProcess, type ReceiverProcess } from '../test/helpers/ferry.ts';
import { dockerodeFor, stack } from '../test/helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../test/helpers/keys.ts';
import { resetPeak } from './lib/proc.ts';

const UPLOADS = Number(process.env.BENCH_UPLOADS ?? 5);
const STREAMED = Number(process.env.BENCH_STREAMED ?? UPLOADS - 1);
const LAYERS = Number(process.env.BENCH_LAYERS ?? 10);
const LAYER_MB = Number(process.env.BENCH_LAYER_MB ?? 100);
const SMALL = Number(process.env.BENCH_SMALL ?? 10);
const s = stack();
const run = randomBytes(4).toString('hex');
const key = testKey(`cbench-${run}`);
const hostId = `cbench-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const senderEnv = { DOCKER_HOST: s.buildDockerHost, FERRY_NATS_URL: s.natsUrl, ...keyEnv(key) };
const log = (msg: string): void => { process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`); };
const mib = (kb: number): number => Number((kb / 1024).toFixed(1));

interface Memory { hwmKb: number; rssKb: number }

function memory(pid: number | undefined): Memory {
  try {
    const status = readFileSync(`/proc/${pid ?? 0}/status`, 'utf8');
    return { hwmKb: Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0), rssKb: Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) };
  } catch {
    return { hwmKb: 0, rssKb: 0 };
  }
}

/** Samples a process's VmRSS and VmHWM every 50 ms until stopped; its VmHWM is reset first. */
function sampleMemory(pid: number | undefined): () => { peakHwmKb: number; maxRssKb: number; samples: number } {
  resetPeak(pid);
  let peakHwmKb = 0;
  let maxRssKb = 0;
  let samples = 0;
  const take = (): void => {
    const m = memory(pid);
    peakHwmKb = Math.max(peakHwmKb, m.hwmKb);
    maxRssKb = Math.max(maxRssKb, m.rssKb);
    samples += 1;
  };
  take();
  const timer = setInterval(take, 50);
  return () => {
    clearInterval(timer);
    take();
    return { peakHwmKb, maxRssKb, samples };
  };
}

/** The large image `index`: busybox and LAYERS layers of LAYER_MB random bytes of its own; built once, then reused. */
async function ensureLarge(index: number): Promise<{ ref: string; imageId: string; bytes: number }> {
  const ref = `ferry-bench-concurrent:${index}-${LAYERS}x${LAYER_MB}`;
  const found = await build.getImage(ref).inspect().catch(() => undefined);
  if (found) return { ref, imageId: found.Id, bytes: found.Size };
  const ctx = await mkdtemp(join(tmpdir(), 'ferry-cbench-ctx-'));
  try {
    log(`writing ${LAYERS} × ${LAYER_MB} MB of random bytes for ${ref}`);
    await copyFile(process.env.FERRY_BUSYBOX ?? '/bin/busybox', join(ctx, 'busybox'));
    const chunk = Buffer.alloc(4 * 1024 ** 2);
    const lines = ['FROM scratch', 'COPY busybox /bin/busybox'];
    for (let i = 0; i < LAYERS; i++) {
      const handle = await open(join(ctx, `r${i}`), 'w');
      for (let written = 0; written < LAYER_MB * 1024 ** 2; written += chunk.length) await handle.write(randomFillSync(chunk));
      await handle.close();
      lines.push(`COPY r${i} /data/r${i}`);
    }
    lines.push('ENTRYPOINT ["/bin/busybox", "sleep", "1000000"]');
    await writeFile(join(ctx, 'Dockerfile'), `${lines.join('\n')}\n`);
    log(`docker build ${ref}`);
    const built = await capture('docker', ['-H', s.buildDockerHost, 'build', '--quiet', '--tag', ref, ctx], { ...process.env, DOCKER_BUILDKIT: '0' });
    if (built.code !== 0) throw new Error(`docker build ${ref}: ${built.stderr}`);
  } finally {
    await rm(ctx, { recursive: true, force: true });
  }
  const image = await build.getImage(ref).inspect();
  return { ref, imageId: image.Id, bytes: image.Size };
}

interface Pushed { ref: string; service: string; streamedAsked: boolean; ok: boolean; seconds: number; path?: string; streamed?: boolean; packageBytes?: number; error?: string }

async function push(receiver: ReceiverProcess, ref: string, service: string, streamed: boolean): Promise<Pushed> {
  const started = performance.now();
  const answer = await runFerry([
    'push', ref, '--to', receiver.url, '--name', service, '--network', 'none', '--json',
    ...(streamed ? [] : ['--no-stream', '--resumable-threshold', String(1024 ** 2)]),
    // `busybox sleep` as PID 1 ignores SIGTERM: each small deployment would wait out the engine's stop timeout for the one before.
    '--entrypoint', '/bin/busybox', '--', 'sh', '-c', "trap 'exit 0' TERM; sleep 1000000 & wait",
  ], senderEnv);
  const seconds = Number(((performance.now() - started) / 1000).toFixed(1));
  try {
    const result = JSON.parse(answer.stdout) as PushResult & { ok: boolean; error?: { code: string; message: string } };
    if (answer.code !== 0 || !result.ok) return { ref, service, streamedAsked: streamed, ok: false, seconds, error: `${result.error?.code ?? answer.code}: ${result.error?.message ?? answer.stderr.slice(-500)}` };
    return { ref, service, streamedAsked: streamed, ok: result.deployment.state === 'COMPLETED', seconds, path: result.path.join('→'), streamed: result.streamed, packageBytes: result.bytes.package };
  } catch {
    return { ref, service, streamedAsked: streamed, ok: false, seconds, error: `exit ${answer.code}: ${answer.stderr.slice(-500)}` };
  }
}

/** Waits until the receiver has spooled bytes of `count` different uploads (streams or resumable sessions). */
async function untilReceiving(dataDir: string, count: number): Promise<void> {
  const seen = new Set<string>();
  while (seen.size < count) {
    for (const dir of ['streams', 'uploads']) {
      for (const name of await readdir(join(dataDir, dir)).catch(() => [] as string[])) if (name.endsWith('.bin')) seen.add(join(dir, name));
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function main(): Promise<void> {
  const large: { ref: string; imageId: string; bytes: number }[] = [];
  for (let i = 0; i < UPLOADS; i++) large.push(await ensureLarge(i));
  const smallBase = randomBytes(512 * 1024);
  const small: { ref: string; imageId: string }[] = [];
  for (let i = 0; i < SMALL; i++) {
    const ref = `ferry-bench-concurrent-small:${run}-${i}`;
    small.push({ ref, imageId: await buildLayeredImage(s.buildDockerHost, ref, smallBase, `small-${i}-${run}`) });
  }
  // Images already on the shared target engine (someone else's) are left there at the end.
  const preexisting = new Set<string>();
  for (const { imageId } of [...large, ...small]) if (await target.getImage(imageId).inspect().then(() => true, () => false)) preexisting.add(imageId);
  if (large.some((l) => preexisting.has(l.imageId))) throw new Error('a large image is already on the target engine: it would not be sent whole');

  const services = new Set<string>();
  let receiver: ReceiverProcess | undefined;
  try {
    receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: hostId });
    const pid = receiver.child.pid;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const idle = memory(pid);
    const first = large[0];
    if (!first) throw new Error('BENCH_UPLOADS must be at least 1');

    log(`single: ${first.ref} (${(first.bytes / 1024 ** 2).toFixed(0)} MiB) alone`);
    const singleService = `cbench-${run}-single`;
    services.add(singleService);
    let stop = sampleMemory(pid);
    let started = performance.now();
    const single = await push(receiver, first.ref, singleService, true);
    const singleSeconds = (performance.now() - started) / 1000;
    const singleMemory = stop();
    log(`single: ${single.ok ? 'ok' : `FAILED ${single.error ?? ''}`}, ${singleSeconds.toFixed(0)} s, receiver peak ${mib(singleMemory.peakHwmKb)} MiB`);
    await target.getContainer(singleService).remove({ force: true }).catch(() => undefined);
    await target.getImage(first.imageId).remove({ force: true }).catch(() => undefined);
    const between = memory(pid);

    log(`concurrent: ${UPLOADS} large uploads (${STREAMED} streamed) and then ${SMALL} small deployments in a row`);
    stop = sampleMemory(pid);
    started = performance.now();
    const largeDone = Promise.all(large.map((l, i) => {
      const service = `cbench-${run}-large-${i}`;
      services.add(service);
      return push(receiver as ReceiverProcess, l.ref, service, i < STREAMED);
    }));
    await untilReceiving(receiver.dataDir, UPLOADS);
    log(`concurrent: the receiver takes in all ${UPLOADS} after ${((performance.now() - started) / 1000).toFixed(0)} s; small deployments start`);
    const smallService = `cbench-${run}-small`;
    services.add(smallService);
    const smallDone: Pushed[] = [];
    for (const [i, image] of small.entries()) smallDone.push(await push(receiver, image.ref, smallService, i % 2 === 0));
    const largeResults = await largeDone;
    const concurrentSeconds = (performance.now() - started) / 1000;
    const concurrentMemory = stop();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const afterLoad = memory(pid);
    const pushes = [...largeResults, ...smallDone];
    const failed = [single, ...pushes].filter((p) => !p.ok);
    log(`concurrent: ${pushes.length - failed.length}/${pushes.length} ok, ${concurrentSeconds.toFixed(0)} s, receiver peak ${mib(concurrentMemory.peakHwmKb)} MiB`);

    const report = {
      command: 'node bench/concurrent-uploads.ts',
      settings: { uploads: UPLOADS, streamed: STREAMED, layers: LAYERS, layerMB: LAYER_MB, small: SMALL },
      images: large.map((l) => ({ ref: l.ref, MiB: mib(l.bytes / 1024) })),
      receiver: {
        command: readFileSync(`/proc/${pid ?? 0}/cmdline`, 'utf8').split('\0').join(' ').trim(),
        idleRssMiB: mib(idle.rssKb), rssBetweenPhasesMiB: mib(between.rssKb), rssAfterLoadMiB: mib(afterLoad.rssKb),
      },
      single: { seconds: Number(singleSeconds.toFixed(1)), peakVmHWM_MiB: mib(singleMemory.peakHwmKb), maxSampledVmRSS_MiB: mib(singleMemory.maxRssKb), samples: singleMemory.samples, push: single },
      concurrent: {
        seconds: Number(concurrentSeconds.toFixed(1)), peakVmHWM_MiB: mib(concurrentMemory.peakHwmKb), maxSampledVmRSS_MiB: mib(concurrentMemory.maxRssKb), samples: concurrentMemory.samples,
        pushes,
      },
      peakRatio: Number((concurrentMemory.peakHwmKb / singleMemory.peakHwmKb).toFixed(2)),
      failed: failed.length,
      loadAverage: loadavg().map((l) => Number(l.toFixed(1))),
      node: process.version,
    };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    log(`receiver peak: ${report.single.peakVmHWM_MiB} MiB for one upload, ${report.concurrent.peakVmHWM_MiB} MiB for ${UPLOADS} at once with ${SMALL} small deployments (${report.peakRatio}×)`);
    if (failed.length > 0) process.exitCode = 1;
  } finally {
    log('cleaning up');
    await receiver?.stop().catch(() => undefined);
    for (const service of services) {
      for (const suffix of ['', '.ferry-previous', '.ferry-next']) await target.getContainer(`${service}${suffix}`).remove({ force: true }).catch(() => undefined);
    }
    for (const { imageId } of [...large, ...small]) if (!preexisting.has(imageId)) await target.getImage(imageId).remove({ force: true }).catch(() => undefined);
    for (const { ref } of small) await build.getImage(ref).remove({ force: true }).catch(() => undefined);
  }
}

await main();
