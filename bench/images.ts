/**
 * Deterministic benchmark images, built FROM scratch on the build engine.
 *
 *   node bench/images.ts [small,medium,large,xlarge]     builds (or confirms) them ahead of a bench run
 *
 * Each size is 8 layers that compress like a real image: busybox and its httpd (so the image
 * runs and answers /healthz), shared libraries, executables and a language runtime copied from
 * this machine's /usr, documentation and generated logs (text), random "assets" (already
 * compressed data) and a small application layer on top. v2 of a size differs from v1 only in
 * that top layer. Files are taken in sorted order up to each layer's byte budget, copied with
 * fixed modes and mtimes, and generated content comes from seeded generators: the layers (diff
 * ids) come out the same on every build, as long as this machine's /usr does not change. A
 * label holds a fingerprint of the inputs, so an image already on the engine is reused.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, copyFile, lstat, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Processes, run, runAllowingFailure } from './lib/proc.ts';
import { stack } from '../test/helpers/stack.ts';

/** Bumped whenever the generator's output changes, so older images are rebuilt. */
const GENERATOR_VERSION = '1';
const MiB = 1024 ** 2;
/** 2000-01-01T00:00:00Z: the mtime of every file and directory in every layer. */
const FIXED_MTIME = 946_684_800;
const BUSYBOX = '/bin/busybox';

export const SIZES = ['small', 'medium', 'large', 'xlarge'] as const;
export type SizeName = (typeof SIZES)[number];
/** What the bench moves unless told otherwise: the three sizes of the comparison. xlarge (~3 GB) is
 * there to check that memory does not grow past the large one's; it takes ~10 minutes to build. */
export const DEFAULT_SIZES: readonly SizeName[] = ['small', 'medium', 'large'];

interface SizeSpec {
  totalBytes: number;
  /** The application layer, the one v2 changes. */
  topBytes: number;
}

export const SIZE_SPECS: Readonly<Record<SizeName, SizeSpec>> = {
  small: { totalBytes: 10 * MiB, topBytes: 1 * MiB },
  medium: { totalBytes: 200 * MiB, topBytes: 5 * MiB },
  large: { totalBytes: 1024 * MiB, topBytes: 10 * MiB },
  xlarge: { totalBytes: 3072 * MiB, topBytes: 10 * MiB },
};

/** Share of the bytes between busybox and the top layer that each middle layer gets. */
const MIDDLE_LAYERS = [
  { dir: 'l2', what: 'shared libraries', share: 0.38, roots: ['/usr/lib/x86_64-linux-gnu'] },
  { dir: 'l3', what: 'executables', share: 0.17, roots: ['/usr/bin', '/usr/sbin'] },
  { dir: 'l4', what: 'language runtimes', share: 0.15, roots: ['/usr/lib/python3.11', '/usr/lib/node_modules', '/usr/lib/jvm'] },
  { dir: 'l5', what: 'documentation', share: 0.08, roots: ['/usr/share/doc', '/usr/share/man'] },
  { dir: 'l6', what: 'generated logs', share: 0.10, generate: 'logs' },
  { dir: 'l7', what: 'random assets', share: 0.12, generate: 'random' },
] as const;

export interface BenchImage {
  ref: string;
  id: string;
  /** Uncompressed size as the engine reports it. */
  bytes: number;
  diffIds: string[];
}

export interface BenchImages {
  size: SizeName;
  v1: BenchImage;
  /** The same image with a different top layer. */
  v2: BenchImage;
  /** What each layer holds, for the report. */
  layers: string[];
}

type Log = (message: string) => void;

/** Builds the size's v1 and v2 on the engine unless they are already there with the same inputs. */
export async function ensureImages(dockerHost: string, size: SizeName, procs: Processes, log: Log): Promise<BenchImages> {
  const spec = SIZE_SPECS[size];
  const busybox = (await lstat(BUSYBOX)).size;
  const middle = spec.totalBytes - spec.topBytes - busybox;
  const plan = await Promise.all(MIDDLE_LAYERS.map(async (layer) => {
    const budget = Math.floor(middle * layer.share);
    return 'roots' in layer
      ? { ...layer, budget, files: await pickFiles(layer.roots, budget) }
      : { ...layer, budget, files: [] };
  }));
  const layers = [
    `busybox ${(busybox / MiB).toFixed(1)} MiB + /www/healthz`,
    ...plan.map((l) => ('roots' in l
      ? `${l.what} ${(l.files.reduce((n, f) => n + f.size, 0) / MiB).toFixed(1)} MiB (${l.files.length} files from ${l.roots.join(', ')})`
      : `${l.what} ${(l.budget / MiB).toFixed(1)} MiB (seeded generator)`)),
    `application ${(spec.topBytes / MiB).toFixed(1)} MiB (text and random bytes seeded by the variant)`,
  ];
  const inputs = createHash('sha256').update(`${GENERATOR_VERSION}\n${size}\n${JSON.stringify(spec)}\n${busybox}\n`);
  for (const layer of plan) {
    inputs.update(`${layer.dir} ${layer.budget}\n`);
    for (const file of layer.files) inputs.update(`${file.path} ${file.size} ${file.mtimeMs}\n`);
  }
  const base = inputs.digest('hex').slice(0, 16);
  const images: Partial<Record<'v1' | 'v2', BenchImage>> = {};
  let context: string | undefined;
  try {
    for (const variant of ['v1', 'v2'] as const) {
      const ref = `ferry-bench-${size}:${variant}`;
      const fingerprint = `${base}-${variant}`;
      const existing = await inspect(procs, dockerHost, ref);
      if (existing?.fingerprint === fingerprint) {
        images[variant] = existing.image;
        continue;
      }
      if (context === undefined) {
        context = await mkdtemp(join(tmpdir(), `ferry-bench-ctx-${size}-`));
        log(`${size}: writing the build context (${layers.length} layers, ~${(spec.totalBytes / MiB).toFixed(0)} MiB)`);
        await writeLowerLayers(context, plan);
      }
      await rm(join(context, 'l8'), { recursive: true, force: true });
      await writeTopLayer(join(context, 'l8'), size, variant, spec.topBytes);
      await writeFile(join(context, 'Dockerfile'), dockerfile(size, variant, fingerprint));
      await normalize(procs, context);
      log(`${size}: docker build ${ref}`);
      await run(procs, 'docker', ['-H', dockerHost, 'build', '--quiet', '--tag', ref, context], { ...process.env, DOCKER_BUILDKIT: '0' });
      const built = await inspect(procs, dockerHost, ref);
      if (built?.fingerprint !== fingerprint) throw new Error(`${ref} was built but does not carry its fingerprint`);
      images[variant] = built.image;
    }
  } finally {
    if (context !== undefined) await rm(context, { recursive: true, force: true });
  }
  if (!images.v1 || !images.v2) throw new Error(`${size}: images missing after the build`);
  return { size, v1: images.v1, v2: images.v2, layers };
}

interface SourceFile {
  path: string;
  size: number;
  mtimeMs: number;
  executable: boolean;
}

/** Regular files under the roots, in sorted order, as many as fit in the budget. */
async function pickFiles(roots: readonly string[], budget: number): Promise<SourceFile[]> {
  const picked: SourceFile[] = [];
  let left = budget;
  for (const root of roots) {
    for await (const file of walk(root)) {
      if (file.size > left) continue;
      picked.push(file);
      left -= file.size;
      if (left < 4096) return picked;
    }
  }
  return picked;
}

async function* walk(dir: string): AsyncGenerator<SourceFile> {
  const names = await readdir(dir).catch(() => [] as string[]);
  names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  for (const name of names) {
    // Python writes these on its own when modules are imported: they would change the layers.
    if (name === '__pycache__' || name.endsWith('.pyc')) continue;
    const path = join(dir, name);
    const stats = await lstat(path).catch(() => undefined);
    if (stats?.isDirectory()) yield* walk(path);
    else if (stats?.isFile()) yield { path, size: stats.size, mtimeMs: stats.mtimeMs, executable: (stats.mode & 0o111) !== 0 };
  }
}

type Planned = (typeof MIDDLE_LAYERS)[number] & { budget: number; files: SourceFile[] };

async function writeLowerLayers(context: string, plan: Planned[]): Promise<void> {
  await mkdir(join(context, 'l1/bin'), { recursive: true });
  await mkdir(join(context, 'l1/www'), { recursive: true });
  await copyFile(BUSYBOX, join(context, 'l1/bin/busybox'));
  await chmod(join(context, 'l1/bin/busybox'), 0o755);
  await writeFile(join(context, 'l1/www/healthz'), 'ok\n');
  for (const layer of plan) {
    const dir = join(context, layer.dir);
    await mkdir(dir, { recursive: true });
    if ('roots' in layer) {
      for (const file of layer.files) {
        const target = join(dir, file.path);
        await mkdir(dirname(target), { recursive: true });
        await copyFile(file.path, target);
        await chmod(target, file.executable ? 0o755 : 0o644);
      }
    } else if (layer.generate === 'logs') {
      await writeLogs(join(dir, 'var/log/app'), `logs-${layer.budget}`, layer.budget);
    } else {
      await writeRandom(join(dir, 'opt/assets'), `assets-${layer.budget}`, layer.budget);
    }
  }
}

/** The application layer: a config naming the variant, logs-like text and random bytes, all seeded by it. */
async function writeTopLayer(dir: string, size: SizeName, variant: string, bytes: number): Promise<void> {
  await mkdir(join(dir, 'app'), { recursive: true });
  await writeFile(join(dir, 'app/VERSION'), `ferry-bench-${size} ${variant}\n`);
  await writeLogs(join(dir, 'app/data'), `app-${size}-${variant}`, Math.floor(bytes * 0.6));
  await writeRandom(join(dir, 'app/bin'), `app-${size}-${variant}`, Math.floor(bytes * 0.4));
}

/** Incompressible bytes from AES-256-CTR keyed by the seed: a fast, seeded generator. */
async function writeRandom(dir: string, seed: string, bytes: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  const fileBytes = 8 * MiB;
  for (let index = 0, left = bytes; left > 0; index += 1, left -= fileBytes) {
    const length = Math.min(fileBytes, left);
    const key = createHash('sha256').update(`${seed}/${index}`).digest();
    const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
    const zeros = Buffer.alloc(MiB);
    function* chunks(): Generator<Buffer> {
      for (let done = 0; done < length; done += MiB) yield cipher.update(zeros.subarray(0, Math.min(MiB, length - done)));
    }
    await pipeline(Readable.from(chunks()), createWriteStream(join(dir, `blob-${String(index).padStart(4, '0')}.bin`)));
  }
}

const LEVELS = ['INFO', 'INFO', 'INFO', 'INFO', 'DEBUG', 'DEBUG', 'WARN', 'ERROR'];
const METHODS = ['GET', 'GET', 'GET', 'POST', 'PUT', 'DELETE'];
const PATHS = ['/api/v1/orders', '/api/v1/users', '/api/v1/items', '/healthz', '/static/app.js', '/api/v1/search', '/login', '/api/v2/reports'];
const MESSAGES = ['request completed', 'cache miss', 'cache hit', 'slow query', 'retrying upstream', 'connection reset by peer', 'session created', 'token refreshed'];

/** Application-log text from a seeded PRNG: timestamps, levels, request lines, ids, latencies. */
async function writeLogs(dir: string, seed: string, bytes: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  const next = mulberry32(createHash('sha256').update(seed).digest().readUInt32LE(0));
  const pick = <T>(list: readonly T[]): T => list[Math.floor(next() * list.length)];
  const hex = (n: number): string => Array.from({ length: n }, () => Math.floor(next() * 16).toString(16)).join('');
  const fileBytes = 4 * MiB;
  let clock = Date.UTC(2026, 0, 1);
  for (let index = 0, left = bytes; left > 0; index += 1, left -= fileBytes) {
    const length = Math.min(fileBytes, left);
    const lines: string[] = [];
    let size = 0;
    while (size < length) {
      clock += Math.floor(next() * 250);
      const line = `${new Date(clock).toISOString()} ${pick(LEVELS)} [worker-${Math.floor(next() * 16)}] ${pick(METHODS)} ${pick(PATHS)}`
        + ` status=${pick([200, 200, 200, 201, 204, 304, 404, 500])} duration_ms=${(next() * 900).toFixed(1)} request_id=${hex(16)}`
        + ` client=10.${Math.floor(next() * 256)}.${Math.floor(next() * 256)}.${Math.floor(next() * 256)} msg="${pick(MESSAGES)}"\n`;
      lines.push(line);
      size += line.length;
    }
    await writeFile(join(dir, `app-${String(index).padStart(4, '0')}.log`), lines.join('').slice(0, length));
  }
}

function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function dockerfile(size: SizeName, variant: string, fingerprint: string): string {
  return [
    'FROM scratch',
    ...['l1', ...MIDDLE_LAYERS.map((l) => l.dir), 'l8'].map((dir) => `COPY ${dir}/ /`),
    'ENV PORT=8080',
    'WORKDIR /www',
    'STOPSIGNAL SIGTERM',
    `ENTRYPOINT ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM INT; /bin/busybox httpd -f -p 0.0.0.0:\${PORT:-8080} -h /www & wait"]`,
    `LABEL ferry.bench.size="${size}" ferry.bench.variant="${variant}" ferry.bench.fingerprint="${fingerprint}"`,
    '',
  ].join('\n');
}

/** Fixed directory modes and one mtime for everything: COPY keeps both in the layer. */
async function normalize(procs: Processes, context: string): Promise<void> {
  await run(procs, 'find', [context, '-type', 'd', '-exec', 'chmod', '0755', '{}', '+']);
  await run(procs, 'find', [context, '-exec', 'touch', '-h', '-d', `@${FIXED_MTIME}`, '{}', '+']);
}

async function inspect(procs: Processes, dockerHost: string, ref: string): Promise<{ image: BenchImage; fingerprint: string } | undefined> {
  const result = await runAllowingFailure(procs, 'docker', ['-H', dockerHost, 'image', 'inspect', ref]);
  if (result.code !== 0) return undefined;
  const [info] = JSON.parse(result.stdout) as { Id: string; Size: number; RootFS: { Layers?: string[] }; Config: { Labels?: Record<string, string> | null } }[];
  if (!info) return undefined;
  return {
    image: { ref, id: info.Id, bytes: info.Size, diffIds: info.RootFS.Layers ?? [] },
    fingerprint: info.Config.Labels?.['ferry.bench.fingerprint'] ?? '',
  };
}

if (import.meta.main) {
  const procs = new Processes();
  const sizes = (process.argv[2] ?? DEFAULT_SIZES.join(',')).split(',') as SizeName[];
  const log: Log = (message) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`);
  try {
    for (const size of sizes) {
      if (!SIZES.includes(size)) throw new Error(`unknown size "${size}" (${SIZES.join(', ')})`);
      const images = await ensureImages(stack().buildDockerHost, size, procs, log);
      for (const image of [images.v1, images.v2]) process.stdout.write(`${image.ref} ${image.id} ${(image.bytes / MiB).toFixed(1)} MiB ${image.diffIds.length} layers\n`);
    }
  } finally {
    await procs.stopAll();
  }
}
