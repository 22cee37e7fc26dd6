import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createCompressor } from '@ferry/compress';
import type { ImageStore } from '@ferry/docker';
import { DigestTap, type Digest } from '@ferry/integrity';
import { FerryError, type Compression } from '@ferry/protocol';
import { LayerFilter, PartialPackageUnavailable } from './layer-filter.ts';

export interface ImageFacts {
  ref: string;
  id: string;
  diffIds: string[];
}

/**
 * Where packaging spent its time. The stages run at once in one pipeline, so they overlap and do
 * not add up to the total: `save` is the wall time until docker save's stream ended, `compress`
 * and `hash` the time each stage was busy with data (for the compressor, which runs on Node's
 * thread pool, waiting for a pool thread counts as busy).
 */
export interface PackageTimings {
  save: number;
  compress: number;
  hash: number;
  total: number;
}

/** What packaging made and how, wherever its bytes went (a spool file or a streamed upload). */
export interface ProducedPackage {
  image: ImageFacts;
  size: number;
  digest: Digest;
  compression: Compression;
  /** Bytes docker save produced, before layers were left out and before compression. */
  rawBytes: number;
  /** Diff ids whose layer entries this package leaves out (the manifest's `package.omittedLayers`). */
  omittedLayers: string[];
  durationMs: number;
  timings: PackageTimings;
}

export interface BuiltPackage extends ProducedPackage {
  path: string;
  remove(): Promise<void>;
}

export interface PackageOptions {
  /** Diff ids the targets hold: their entries are left out when the archive layout allows it. */
  omit?: readonly string[];
  dir?: string;
}

export async function inspectImage(images: ImageStore, ref: string): Promise<ImageFacts> {
  const info = await images.inspect(ref);
  if (!info) throw new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `Image ${ref} is not on the build engine (build or tag it first)`, details: { image: ref } });
  return { ref, id: info.id, diffIds: info.diffIds };
}

/**
 * docker save → (leave out held layers) → compress → BLAKE3 → spool file, in one pipeline: the
 * image never sits in memory, is written once, and the digest the manifest signs exists before
 * the first byte is sent, because it goes in the request headers. If held layers cannot be left
 * out (see {@link LayerFilter}), the package is built whole.
 */
export async function buildPackage(images: ImageStore, image: ImageFacts, compression: Compression, options: PackageOptions = {}): Promise<BuiltPackage> {
  const omit = options.omit ?? [];
  if (omit.length === 0) return build(images, image, compression, options.dir ?? tmpdir(), undefined);
  try {
    return await build(images, image, compression, options.dir ?? tmpdir(), new LayerFilter(image.diffIds, omit));
  } catch (err) {
    if (err instanceof PartialPackageUnavailable) return build(images, image, compression, options.dir ?? tmpdir(), undefined);
    throw err;
  }
}

async function build(images: ImageStore, image: ImageFacts, compression: Compression, dir: string, filter: LayerFilter | undefined): Promise<BuiltPackage> {
  const path = join(dir, `ferry-${image.id.slice(7, 19)}-${process.pid}-${Date.now()}.tar${compression === 'none' ? '' : compression === 'zstd' ? '.zst' : '.gz'}`);
  try {
    const produced = await produce(images, image, compression, filter, () => createWriteStream(path, { flags: 'wx', mode: 0o600 }));
    return { ...produced, path, remove: () => rm(path, { force: true }) };
  } catch (err) {
    await rm(path, { force: true });
    throw err;
  }
}

/**
 * The same pipeline into `destination` instead of a file: a streamed upload's part cutter
 * (stream.ts), whose backpressure paces docker save. Layers in `omit` are left out when the
 * archive layout allows it; when it does not, this throws {@link PartialPackageUnavailable} — by
 * then bytes have gone to `destination`, so the caller abandons it and starts again whole.
 * FerryErrors `destination` raises pass through as they are.
 */
export async function producePackage(images: ImageStore, image: ImageFacts, compression: Compression, destination: Writable, options: { omit?: readonly string[] } = {}): Promise<ProducedPackage> {
  const omit = options.omit ?? [];
  return produce(images, image, compression, omit.length === 0 ? undefined : new LayerFilter(image.diffIds, omit), () => destination);
}

async function produce(images: ImageStore, image: ImageFacts, compression: Compression, filter: LayerFilter | undefined, destination: () => Writable): Promise<ProducedPackage> {
  const started = performance.now();
  const raw = new ByteCounter();
  const packed = new TimedDigestTap();
  const compressor = timed(createCompressor(compression));
  let saveMs = 0;
  try {
    const saved = await images.save(image.id);
    saved.once('end', () => { saveMs = Math.round(performance.now() - started); });
    await pipeline(saved, raw, ...(filter ? [filter] : []), compressor.stream, packed, destination());
  } catch (err) {
    if (err instanceof PartialPackageUnavailable || err instanceof FerryError) throw err;
    throw new FerryError('FERRY_ERR_DOCKER', { message: `docker save of ${image.ref} failed: ${(err as Error).message}`, cause: err });
  }
  const total = Math.round(performance.now() - started);
  return {
    image, compression,
    size: packed.bytes,
    digest: packed.digest(),
    rawBytes: raw.bytes,
    omittedLayers: filter?.omitted ?? [],
    durationMs: total,
    timings: { save: saveMs, compress: Math.round(compressor.busyMs()), hash: Math.round(packed.busyMs), total },
  };
}

/** Counts what docker save produced; hashing it too would cost a second BLAKE3 for nothing. */
class ByteCounter extends Transform {
  bytes = 0;
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    callback(null, chunk);
  }
}

/** BLAKE3 runs synchronously in `_transform`, so the time spent there is the hashing time. */
class TimedDigestTap extends DigestTap {
  busyMs = 0;
  override _transform(chunk: Buffer, encoding: BufferEncoding, callback: TransformCallback): void {
    const started = performance.now();
    super._transform(chunk, encoding, (err, data) => {
      this.busyMs += performance.now() - started;
      callback(err, data);
    });
  }
}

/**
 * A compressor's busy time: a zlib stream takes one chunk at a time and calls back once it is
 * compressed (on the thread pool), so the spans from each chunk to its callback do not overlap.
 */
function timed(stream: Transform): { stream: Transform; busyMs: () => number } {
  let busy = 0;
  const transform = stream._transform.bind(stream);
  const flush = stream._flush?.bind(stream);
  stream._transform = (chunk: unknown, encoding: BufferEncoding, callback: TransformCallback): void => {
    const started = performance.now();
    transform(chunk, encoding, (err, data) => {
      busy += performance.now() - started;
      callback(err, data);
    });
  };
  if (flush) {
    stream._flush = (callback: TransformCallback): void => {
      const started = performance.now();
      flush((err, data) => {
        busy += performance.now() - started;
        callback(err, data);
      });
    };
  }
  return { stream, busyMs: () => busy };
}
