/**
 * `ferry bundle create` and `ferry bundle apply` against what Docker and zstd do with the same
 * images, in one run:
 *
 *   PATH=$PWD/node_modules/.bin:$PATH node bench/bundle.ts [--images REF,REF,…] [--ferry checkout|release]
 *
 * 1. size: the bundle against the sum of the images' unique layers, each compressed with `zstd -3`;
 * 2. create: `ferry bundle create` against `docker save IMG… | zstd -T0 -3 > file`, on the build engine;
 * 3. apply: `ferry bundle apply` onto a private engine that lacks the images (its own
 *    FERRY_DATA_DIR, a trust file for the signing key, services without health checks) against
 *    `docker load` of the uncompressed `docker save` tar onto another private engine that lacks them.
 *
 * By default the images are `ferry-bench-large:v1` and `:v2` from images.ts (~1 GB each, sharing
 * their 7 lower layers) and `ferry-bench-bundle-extra:v1`, built here FROM `ferry-bench-large:v1`
 * with a 4 MiB layer of its own: three services, ten unique layers, the 7 lower ones in all three.
 * It needs the local stack up (the build engine; the targets are private engines it starts).
 * One run of each: the machine is shared, so the load average is printed with the figures.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureImages } from './images.ts';
import { Engine } from './lib/docker.ts';
import { Processes, run, runAllowingFailure, type Outcome } from './lib/proc.ts';
import { ferryEntry } from './lib/release.ts';
import { PrivateDockerd } from '../test/helpers/dockerd.ts';
import { testKey, trustFile } from '../test/helpers/keys.ts';
import { stack } from '../test/helpers/stack.ts';

const ROOT = resolve(import.meta.dirname, '..');
const MiB = 1024 ** 2;
const EXTRA = 'ferry-bench-bundle-extra:v1';

const log = (message: string): void => { process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`); };
const load = (): string => loadavg().map((n) => n.toFixed(2)).join(' ');
const mb = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

async function timed(what: () => Promise<Outcome>): Promise<{ seconds: number; outcome: Outcome }> {
  const started = performance.now();
  const outcome = await what();
  return { seconds: (performance.now() - started) / 1000, outcome };
}

function must(label: string, outcome: Outcome): Outcome {
  if (outcome.code !== 0) throw new Error(`${label} exited with ${outcome.code}: ${(outcome.stderr + outcome.stdout).trim().slice(-2000)}`);
  return outcome;
}

/** A small image FROM the large one with a layer of its own (seeded bytes: the same on every build). */
async function ensureExtra(procs: Processes, build: Engine, base: string, dir: string): Promise<void> {
  const inspected = await runAllowingFailure(procs, 'docker', ['-H', build.host, 'image', 'inspect', '--format', '{{index .Config.Labels "ferry.bench.base"}}', EXTRA]);
  if (inspected.code === 0 && inspected.stdout.trim() === base) return;
  const context = join(dir, 'extra');
  await mkdir(join(context, 'srv'), { recursive: true });
  let seed = 0x9e3779b9;
  const bytes = Buffer.alloc(4 * MiB);
  for (let i = 0; i < bytes.length; i += 4) {
    seed = (Math.imul(seed, 1_664_525) + 1_013_904_223) >>> 0;
    bytes.writeUInt32LE(i < bytes.length / 2 ? seed : seed & 0x0f0f0f0f, i);
  }
  await writeFile(join(context, 'srv/data.bin'), bytes);
  await run(procs, 'touch', ['-h', '-d', '@946684800', join(context, 'srv'), join(context, 'srv/data.bin')]);
  await writeFile(join(context, 'Dockerfile'), `FROM ${base}\nCOPY srv/ /srv/\nLABEL ferry.bench.base="${base}"\n`);
  log(`docker build ${EXTRA} FROM ${base}`);
  await run(procs, 'docker', ['-H', build.host, 'build', '--quiet', '--tag', EXTRA, context], { ...process.env, DOCKER_BUILDKIT: '0' });
}

interface ImageFacts { ref: string; id: string; diffIds: string[] }

async function inspect(procs: Processes, host: string, ref: string): Promise<ImageFacts> {
  const out = await run(procs, 'docker', ['-H', host, 'image', 'inspect', ref]);
  const [info] = JSON.parse(out.stdout) as Array<{ Id: string; RootFS: { Layers?: string[] } }>;
  if (!info) throw new Error(`no image ${ref}`);
  return { ref, id: info.Id, diffIds: info.RootFS.Layers ?? [] };
}

/** Each unique layer (by diff id) of the uncompressed save, compressed alone with `zstd -3`: the floor a bundle is held to. */
async function zstdLayers(procs: Processes, tarFile: string, images: ImageFacts[]): Promise<{ layers: number; raw: number; packed: number }> {
  const manifest = JSON.parse(must('tar', await runAllowingFailure(procs, 'tar', ['-xOf', tarFile, 'manifest.json'])).stdout) as Array<{ Config: string; Layers: string[] }>;
  const byDiffId = new Map<string, string>();
  for (const entry of manifest) {
    const image = images.find((i) => entry.Config.includes(i.id.slice(7)));
    if (!image || image.diffIds.length !== entry.Layers.length) throw new Error(`manifest.json entry ${entry.Config} matches no image`);
    entry.Layers.forEach((name, i) => { if (!byDiffId.has(image.diffIds[i] ?? '')) byDiffId.set(image.diffIds[i] ?? '', name); });
  }
  let raw = 0;
  let packed = 0;
  for (const name of byDiffId.values()) {
    const sizes = must('zstd', await runAllowingFailure(procs, 'bash', ['-o', 'pipefail', '-c',
      'tar -xOf "$1" "$2" | tee >(wc -c >&2) | zstd -3 -T1 -q -c | wc -c', 'bash', tarFile, name]));
    raw += Number(sizes.stderr.trim().split('\n').at(-1));
    packed += Number(sizes.stdout.trim());
  }
  return { layers: byDiffId.size, raw, packed };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { images: { type: 'string' }, ferry: { type: 'string' } } });
  const build = values.ferry ?? 'checkout';
  if (build !== 'checkout' && build !== 'release') throw new Error('--ferry: checkout or release');
  const loadAtStart = load();
  const procs = new Processes();
  const cleanups: Array<() => Promise<unknown>> = [];
  const stop = async (): Promise<void> => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err: unknown) => log(`clean-up: ${String(err)}`));
    await procs.stopAll();
  };
  process.once('SIGINT', () => { void stop().then(() => process.exit(130)); });
  try {
    const engine = new Engine(stack().buildDockerHost, procs);
    const dir = await mkdtemp(join(tmpdir(), 'ferry-bench-bundle-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    let refs: string[];
    if (values.images) refs = values.images.split(',').map((r) => r.trim()).filter(Boolean);
    else {
      const large = await ensureImages(engine.host, 'large', procs, log);
      await ensureExtra(procs, engine, large.v1.ref, dir);
      refs = [large.v1.ref, large.v2.ref, EXTRA];
    }
    const images = await Promise.all(refs.map((ref) => inspect(procs, engine.host, ref)));
    const ferry = await ferryEntry(procs, ROOT, dir, build, log);
    const key = testKey(`bench-${randomBytes(3).toString('hex')}`);
    const names = images.map((_, i) => `bench-bundle-${randomBytes(3).toString('hex')}-${i}`);
    const file = join(dir, 'ferry.yaml');
    // Trivial services: each image's own entrypoint (busybox httpd) in a network of its own, no health check.
    await writeFile(file, JSON.stringify({
      version: 1, name: 'bench-bundle',
      services: Object.fromEntries(images.map((image, i) => [names[i], { image: image.ref, targets: ['http://127.0.0.1:1'], network: 'none' }])),
    }));
    const ferryRun = (args: string[], env: Record<string, string>): Promise<Outcome> =>
      runAllowingFailure(procs, process.execPath, [ferry.script, ...args], { ...process.env, ...env });

    // Untimed: the uncompressed save (for the floor and for docker load), which also reads every layer once so both timed runs find the same page cache.
    const saveTar = join(dir, 'images.tar');
    log(`docker save ${refs.join(' ')} > images.tar (untimed)`);
    must('docker save', await runAllowingFailure(procs, 'bash', ['-o', 'pipefail', '-c', 'docker -H "$1" save "${@:3}" > "$2"', 'bash', engine.host, saveTar, ...refs]));
    const saveBytes = (await stat(saveTar)).size;

    log(`ferry bundle create (load ${load()})`);
    const bundleFile = join(dir, 'app.ferry');
    const created = await timed(() => ferryRun(['bundle', 'create', '-f', file, '-o', bundleFile, '--key', key.file, '--key-id', key.keyId, '--json'], { DOCKER_HOST: engine.host }));
    must('ferry bundle create', created.outcome);
    const createdJson = JSON.parse(created.outcome.stdout.trim().split('\n').at(-1) ?? '{}') as { bytes: number; layers: { stored: number; shared: number } };
    const loadAfterCreate = load();

    log(`docker save | zstd -T0 -3 (load ${load()})`);
    const zstdFile = join(dir, 'images.tar.zst');
    const piped = await timed(() => runAllowingFailure(procs, 'bash', ['-o', 'pipefail', '-c', 'docker -H "$1" save "${@:3}" | zstd -T0 -3 -q > "$2"', 'bash', engine.host, zstdFile, ...refs]));
    must('docker save | zstd', piped.outcome);
    const zstdBytes = (await stat(zstdFile)).size;
    await rm(zstdFile, { force: true });

    log('each unique layer through zstd -3 (untimed)');
    const floor = await zstdLayers(procs, saveTar, images);

    log('two private engines for the loads');
    const loadEngine = await PrivateDockerd.start();
    cleanups.push(() => loadEngine.stop());
    const applyEngine = await PrivateDockerd.start();
    cleanups.push(() => applyEngine.stop());

    log(`docker load -i images.tar onto an empty engine (load ${load()})`);
    const loaded = await timed(() => runAllowingFailure(procs, 'docker', ['-H', loadEngine.host, 'load', '-q', '-i', saveTar]));
    must('docker load', loaded.outcome);
    await loadEngine.stop();

    log(`ferry bundle apply onto an empty engine (load ${load()})`);
    const applied = await timed(() => ferryRun(['bundle', 'apply', bundleFile, '--json'], {
      DOCKER_HOST: applyEngine.host, FERRY_DATA_DIR: join(dir, 'apply-data'), FERRY_TRUST_FILE: trustFile(key),
      FERRY_HOST_ID: `bench-bundle-${randomBytes(3).toString('hex')}`, FERRY_STABILITY_WINDOW_MS: '0',
    }));
    must('ferry bundle apply', applied.outcome);
    const appliedJson = JSON.parse(applied.outcome.stdout.trim().split('\n').at(-1) ?? '{}') as { ok: boolean; services: Array<{ name: string; state: string }> };
    if (!appliedJson.ok) throw new Error(`ferry bundle apply: ${applied.outcome.stdout}`);

    const ratio = (a: number, b: number): string => (a / b).toFixed(2);
    const verdict = (r: number, target: number): string => (r <= target ? 'met' : 'MISSED');
    const sizeRatio = createdJson.bytes / floor.packed;
    const createRatio = created.seconds / piped.seconds;
    const applyRatio = applied.seconds / loaded.seconds;
    const out = [
      `machine: ${availableParallelism()} CPUs (${cpus()[0]?.model ?? '?'}), load average at start ${loadAtStart}, after create ${loadAfterCreate}, at the end ${load()}`,
      `ferry: ${ferry.describe}`,
      `images: ${images.map((i) => `${i.ref} (${i.diffIds.length} layers)`).join(', ')}; ${floor.layers} unique layers, ${mb(floor.raw)} uncompressed; docker save of all: ${mb(saveBytes)}`,
      `bundle: ${createdJson.layers.stored} layers stored, ${createdJson.layers.shared} more uses shared; ${appliedJson.services.length} services applied (${appliedJson.services.map((s) => s.state).join(', ')})`,
      '',
      '| what | ferry | against | ratio | target |',
      '|---|---:|---:|---:|---|',
      `| size | bundle ${mb(createdJson.bytes)} | unique layers, each \`zstd -3\`: ${mb(floor.packed)} (\`docker save \\| zstd -3\`: ${mb(zstdBytes)}) | ${ratio(createdJson.bytes, floor.packed)} | ≤ 1.05 ${verdict(sizeRatio, 1.05)} |`,
      `| create | \`ferry bundle create\` ${created.seconds.toFixed(1)} s | \`docker save … \\| zstd -T0 -3\` ${piped.seconds.toFixed(1)} s | ${ratio(created.seconds, piped.seconds)} | ≤ 1 ${verdict(createRatio, 1)} |`,
      `| apply | \`ferry bundle apply\` ${applied.seconds.toFixed(1)} s | \`docker load\` ${loaded.seconds.toFixed(1)} s | ${ratio(applied.seconds, loaded.seconds)} | ≤ 1 ${verdict(applyRatio, 1)} |`,
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  log(err instanceof Error ? err.stack ?? err.message : String(err));
  process.exitCode = 1;
});
