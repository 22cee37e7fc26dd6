/**
 * Showcase (not part of CI): a ~1 GB image pushed over the resumable upload while things break.
 *
 *   node bench/resume-large.ts            (the local stack must be up: bash deploy/local-stack.sh up)
 *
 * Builds (or reuses) an image FROM scratch on the build engine — busybox plus LAYERS layers of
 * LAYER_MB incompressible random bytes — packages it, and uploads it to a `ferry receiver`
 * process in parts. Mid-way one PATCH is cut at a random byte, and later the receiver is
 * SIGKILLed in the middle of a PATCH and restarted on the same data directory; each time the
 * upload resumes from the acknowledged offset. Then it checks the assembled file's BLAKE3,
 * deploys, checks that the service answers, and prints each receiver process's peak memory
 * (VmHWM from /proc/<pid>/status).
 *
 * Env: BENCH_LAYERS (default 10), BENCH_LAYER_MB (default 100), BENCH_PART_MB (default 64),
 * BENCH_NODE_OPTIONS (passed to the receiver, e.g. --max-semi-space-size=16 for V8's default).
 */
import { spawn } from 'node:child_process';
import { createReadStream, readFileSync } from 'node:fs';
import { randomBytes, randomFillSync, randomInt } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { DigestTap, digestFile } from '@ferry/integrity';
import type { ManifestInput } from '@ferry/protocol';
import { ResumableClient, buildPackage, inspectImage } from '@ferry/sender';
import { freePort, startReceiverProcess, type ReceiverProcess } from '../test/helpers/ferry.ts';
import { dockerodeFor, stack } from '../test/helpers/stack.ts';
import { testKey, trustFile } from '../test/helpers/keys.ts';

const LAYERS = Number(process.env.BENCH_LAYERS ?? 10);
const LAYER_MB = Number(process.env.BENCH_LAYER_MB ?? 100);
const PART_BYTES = Number(process.env.BENCH_PART_MB ?? 64) * 1024 ** 2;
const s = stack();
const ref = `ferry-bench-large:${LAYERS}x${LAYER_MB}`;
const run = randomBytes(4).toString('hex');
const key = testKey(`bench-${run}`);
const hostId = `bench-${run}`;
const service = `bench-large-${run}`;
const log = (msg: string): void => { process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`); };
const mb = (n: number): string => `${(n / 1024 ** 2).toFixed(1)} MiB`;

function sh(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => { out += c; });
    child.stderr.setEncoding('utf8').on('data', (c: string) => { err += c; });
    child.once('close', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`${cmd} ${args.join(' ')}: ${code} ${err}`))));
  });
}

async function ensureImage(): Promise<void> {
  const build = dockerodeFor(s.buildDockerHost);
  if (await build.getImage(ref).inspect().then(() => true, () => false)) {
    log(`reusing ${ref} on the build engine`);
    return;
  }
  const ctx = await mkdtemp(join(tmpdir(), 'ferry-bench-ctx-'));
  try {
    log(`writing ${LAYERS} × ${LAYER_MB} MB of random bytes for ${ref}`);
    await mkdir(join(ctx, 'www'));
    await copyFile('/bin/busybox', join(ctx, 'busybox'));
    await writeFile(join(ctx, 'www', 'healthz'), 'ok\n');
    const chunk = Buffer.alloc(4 * 1024 ** 2);
    const lines = ['FROM scratch', 'COPY busybox /bin/busybox', 'COPY www /www'];
    for (let i = 0; i < LAYERS; i++) {
      const handle = await open(join(ctx, `r${i}`), 'w');
      for (let written = 0; written < LAYER_MB * 1024 ** 2; written += chunk.length) await handle.write(randomFillSync(chunk));
      await handle.close();
      lines.push(`COPY r${i} /data/r${i}`);
    }
    lines.push('ENV PORT=8080', 'WORKDIR /www', `ENTRYPOINT ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM INT; /bin/busybox httpd -f -p 0.0.0.0:\${PORT:-8080} -h /www & wait"]`);
    await writeFile(join(ctx, 'Dockerfile'), `${lines.join('\n')}\n`);
    log(`docker build ${ref}`);
    await sh('docker', ['-H', s.buildDockerHost, 'build', '--quiet', '--tag', ref, ctx], { DOCKER_BUILDKIT: '0' });
  } finally {
    await rm(ctx, { recursive: true, force: true });
  }
}

/** Peak resident memory of a live process, from the kernel's own high-water mark. */
function peakKb(pid: number | undefined): number {
  const status = readFileSync(`/proc/${pid ?? 0}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
}

/** A part whose body stops after `cutAt` bytes and then fails, which tears down the connection. */
function cutBody(path: string, offset: number, length: number, cutAt: number, onCut: () => void): () => Readable {
  return () => {
    let sent = 0;
    const source = (async function* () {
      const handle = await open(path, 'r');
      try {
        while (sent < length) {
          const size = Math.min(256 * 1024, length - sent, cutAt - sent);
          if (size <= 0) break;
          const buffer = Buffer.alloc(size);
          await handle.read(buffer, 0, size, offset + sent);
          sent += size;
          yield buffer;
        }
      } finally {
        await handle.close();
      }
      onCut();
      throw new Error('connection cut on purpose');
    })();
    return Readable.from(source);
  };
}

async function main(): Promise<void> {
  await ensureImage();
  const images = new ImageStore(createDockerClient(s.buildDockerHost));
  log('packaging (docker save | zstd | BLAKE3)');
  const pkg = await buildPackage(images, await inspectImage(images, ref), 'zstd');
  log(`package ${mb(pkg.size)} (${pkg.digest})`);
  const dataDir = await mkdtemp(join(tmpdir(), 'ferry-bench-rx-'));
  const port = await freePort();
  const env: Record<string, string> = {
    DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_DATA_DIR: dataDir,
    // `ferry receiver` picks 1 MiB semi-spaces itself (bin/main.ts); BENCH_NODE_OPTIONS=--max-semi-space-size=16 measures V8's default.
    ...(process.env.BENCH_NODE_OPTIONS ? { NODE_OPTIONS: process.env.BENCH_NODE_OPTIONS } : {}),
  };
  const peaks: { process: string; peakKb: number }[] = [];
  let receiver: ReceiverProcess | undefined;
  const start = async (): Promise<ReceiverProcess> => {
    const r = await startReceiverProcess(env);
    // Requests signed in the second the receiver started are refused (its nonces are new).
    const started = Math.floor(Date.now() / 1000);
    while (Math.floor(Date.now() / 1000) <= started) await new Promise((res) => setTimeout(res, 50));
    return r;
  };
  try {
    receiver = await start();
    let client = new ResumableClient({ url: receiver.url, credentials: key, audience: hostId });
    const manifest: ManifestInput = {
      schema: 'ferry.manifest/v1', deploymentId: crypto.randomUUID(), createdAt: new Date().toISOString(),
      image: { ref: pkg.image.ref, id: pkg.image.id, diffIds: pkg.image.diffIds },
      package: { format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest },
      service: { name: service, env: { PORT: String(port) }, network: 'host', health: { type: 'http', url: `http://127.0.0.1:${port}/healthz`, retries: 120, intervalMs: 250 } },
    };
    const { uploadId } = await client.create(JSON.stringify(manifest));
    const parts = Math.ceil(pkg.size / PART_BYTES);
    const cutPart = randomInt(1, Math.max(2, Math.floor(parts / 3)));
    const killPart = randomInt(Math.max(cutPart + 1, Math.floor(parts / 2)), Math.max(cutPart + 2, parts));
    log(`upload ${uploadId}: ${parts} parts of ${mb(PART_BYTES)}; cut in part ${cutPart}, SIGKILL in part ${killPart}`);
    const started = performance.now();
    let offset = 0;
    let lastPeak = 0;
    let part = 0;
    let resumes = 0;
    while (offset < pkg.size) {
      const length = Math.min(PART_BYTES, pkg.size - offset);
      if (part === cutPart || part === killPart) {
        const cutAt = randomInt(1, length);
        const kill = part === killPart;
        const victim: ReceiverProcess = receiver;
        const failed = await client.patch(uploadId, offset, {
          digest: (await digestRange(pkg.path, offset, length)), bodyBytes: length,
          body: cutBody(pkg.path, offset, length, cutAt, () => {
            if (kill) {
              // Give the receiver a moment to write what it got, then kill it without warning.
              setTimeout(() => {
                lastPeak = Math.max(lastPeak, peakKb(victim.child.pid));
                victim.child.kill('SIGKILL');
              }, 200);
            }
          }),
        }).then(() => false, () => true);
        if (!failed) throw new Error('the interrupted PATCH was acknowledged');
        if (kill) {
          peaks.push({ process: `receiver #1 (pid ${victim.child.pid}, before SIGKILL)`, peakKb: lastPeak });
          await new Promise((res) => (victim.child.exitCode !== null || victim.child.signalCode !== null ? res(null) : victim.child.once('exit', res)));
          receiver = await start();
          client = new ResumableClient({ url: receiver.url, credentials: key, audience: hostId });
        }
        const position = await client.head(uploadId);
        log(`${kill ? 'SIGKILL + restart' : 'cut'} at byte ${offset + cutAt}: the receiver holds ${position.offset} acknowledged bytes (part started at ${offset})`);
        if (position.offset !== offset) throw new Error(`expected the acknowledged offset ${offset}, got ${position.offset}`);
        resumes += 1;
        part += 1;
        continue;
      }
      offset = await patchWhenFree(client, uploadId, pkg.path, offset, length);
      lastPeak = Math.max(lastPeak, peakKb(receiver.child.pid));
      part += 1;
    }
    const transferMs = performance.now() - started;
    const spool = join(dataDir, 'uploads', `${uploadId}.bin`);
    const assembled = await digestFile(spool);
    if (assembled.digest !== pkg.digest) throw new Error(`assembled ${assembled.digest} ≠ package ${pkg.digest}`);
    log(`all ${mb(pkg.size)} acknowledged after ${resumes} resumes in ${(transferMs / 1000).toFixed(1)} s; assembled BLAKE3 = package BLAKE3`);
    const deployStarted = performance.now();
    const result = await client.deploy(uploadId);
    const answer = await fetch(`http://127.0.0.1:${port}/healthz`);
    if (result.state !== 'COMPLETED' || answer.status !== 200) throw new Error(`deployment ${result.state}, service answered ${answer.status}`);
    log(`deployed in ${((performance.now() - deployStarted) / 1000).toFixed(1)} s (${JSON.stringify(result.timings)}); the service answers`);
    peaks.push({ process: `receiver #2 (pid ${receiver.child.pid}, resume + verify + docker load + deploy)`, peakKb: peakKb(receiver.child.pid) });
    const result2 = {
      image: ref, receiverCommand: readFileSync(`/proc/${receiver.child.pid}/cmdline`, 'utf8').split('\0').join(' ').trim(), packageBytes: pkg.size, partBytes: PART_BYTES, resumes, transferSeconds: Number((transferMs / 1000).toFixed(1)),
      digest: pkg.digest, deployment: result.state, peaks: peaks.map((p) => ({ ...p, peakMiB: Number((p.peakKb / 1024).toFixed(1)) })),
    };
    process.stdout.write(`${JSON.stringify(result2, null, 2)}\n`);
    const worst = Math.max(...peaks.map((p) => p.peakKb)) / 1024;
    log(`peak receiver memory: ${worst.toFixed(1)} MiB (limit 150 MiB)`);
    if (worst >= 150) process.exitCode = 1;
  } finally {
    await receiver?.stop().catch(() => undefined);
    const target = dockerodeFor(s.targetDockerHost);
    for (const name of [service, `${service}.ferry-previous`, `${service}.ferry-next`]) await target.getContainer(name).remove({ force: true }).catch(() => undefined);
    await target.getImage(ref).remove({ force: true }).catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
    await pkg.remove();
  }
}

/** The receiver may still be noticing the cut of the PATCH before; then the upload is busy a moment. */
async function patchWhenFree(client: ResumableClient, uploadId: string, path: string, offset: number, length: number): Promise<number> {
  for (;;) {
    try {
      return (await client.patchFile(uploadId, path, offset, length)).offset;
    } catch (err) {
      if ((err as { code?: string }).code !== 'FERRY_ERR_UPLOAD_BUSY') throw err;
      await new Promise((res) => setTimeout(res, 50));
    }
  }
}

async function digestRange(path: string, offset: number, length: number): Promise<string> {
  const tap = new DigestTap();
  tap.resume();
  await pipeline(createReadStream(path, { start: offset, end: offset + length - 1 }), tap);
  return tap.digest();
}

await main();
