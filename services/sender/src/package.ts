import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform, type Readable, type TransformCallback, type Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { createCompressor } from '@ferry/compress';
import { LayerStoreUnreadable, type ImageStore } from '@ferry/docker';
import { DigestTap, IncrementalDigest, type Digest } from '@ferry/integrity';
import { FerryError, type Compression } from '@ferry/protocol';
import { LayerFilter, PartialPackageUnavailable } from './layer-filter.ts';
import { planStoreArchive, storeArchiveChunks, storeArchiveSize, streamStoreArchive } from './store-archive.ts';

export interface ImageFacts {
  ref: string;
  id: string;
  diffIds: string[];
  /** The engine's figure for the image's unpacked size, when it gave one: what a push may have to send. */
  size?: number;
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
  /**
   * Bytes of the uncompressed archive: docker save's, before layers were left out; the layer
   * store's, which holds only the layers carried.
   */
  rawBytes: number;
  /** Diff ids whose layer entries this package leaves out (the manifest's `package.omittedLayers`). */
  omittedLayers: string[];
  durationMs: number;
  timings: PackageTimings;
  /** Where the image's bytes came from: read from the engine's layer store, or `docker save`. */
  exportedBy: ExportedBy;
}

export type ExportedBy = 'layer-store' | 'docker-save';

export interface BuiltPackage extends ProducedPackage {
  path: string;
  remove(): Promise<void>;
}

/**
 * A production as it runs, for an estimate of a streamed package's size before its last byte:
 * the archive's size (exact from the layer store; the engine's figure for the image otherwise,
 * unknown when docker save leaves layers out), and what was read of it and written of the package.
 */
export interface ProductionMeter {
  archiveBytes: number | undefined;
  /** The package is the archive itself (uncompressed, nothing filtered) and its size is exact. */
  exact: boolean;
  read(): number;
  written(): number;
}

/** The package's size as far as a meter tells: exact, estimated from the compression so far, or unknown. */
export function meteredSize(meter: ProductionMeter): { bytes: number; estimated: boolean } | undefined {
  if (meter.archiveBytes === undefined) return undefined;
  if (meter.exact) return { bytes: meter.archiveBytes, estimated: false };
  const read = meter.read();
  // Too little read yet to say what compression (or leaving layers out) makes of the rest.
  if (read < 1024 ** 2) return undefined;
  return { bytes: Math.round((meter.archiveBytes * meter.written()) / read), estimated: true };
}

export interface PackageOptions {
  /** Diff ids the targets hold: their entries are left out when the archive layout allows it. */
  omit?: readonly string[];
  dir?: string;
  /** Read the image from the engine's layer store when it can be (see {@link sourceOf}); default true. */
  layerStore?: boolean;
  /** The compressor's level; its default when absent. */
  level?: number;
  /** Stops the production (an interrupted push): it fails with the signal's reason. */
  signal?: AbortSignal | undefined;
}

/** How one production runs, beyond what it makes. */
export interface ProduceOptions {
  level?: number | undefined;
  onMeter?: ((meter: ProductionMeter) => void) | undefined;
  signal?: AbortSignal | undefined;
}

/**
 * What packaging reads an image from: the build engine's ImageStore, or anything that answers the
 * same three questions (a bundle's images, `ferry bundle push`).
 */
export type ImageSource = Pick<ImageStore, 'inspect' | 'save' | 'layerStore'>;

export async function inspectImage(images: ImageSource, ref: string): Promise<ImageFacts> {
  const info = await images.inspect(ref);
  if (!info) throw new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `Image ${ref} is not on the build engine (build or tag it first)`, details: { image: ref } });
  return { ref, id: info.id, diffIds: info.diffIds, ...(info.size > 0 ? { size: info.size } : {}) };
}

/**
 * docker save (or the layer store) → (leave out held layers) → compress → BLAKE3 → spool file, in
 * one pipeline: the image never sits in memory, is written once, and the digest the manifest signs
 * exists before the first byte is sent, because it goes in the request headers. Held layers that
 * cannot be left out (see {@link LayerFilter}) throw PartialPackageUnavailable, a layer store
 * found unreadable midway LayerStoreUnreadable: the caller decides what to make instead.
 */
export async function buildPackage(images: ImageSource, image: ImageFacts, compression: Compression, options: PackageOptions = {}): Promise<BuiltPackage> {
  const path = spoolPath(image, compression, options.dir);
  try {
    const source = await sourceOf(images, image, options.omit ?? [], options.layerStore !== false);
    return spooled(path, await produce(image, compression, source, () => createWriteStream(path, { flags: 'wx', mode: 0o600 }), options));
  } catch (err) {
    await rm(path, { force: true });
    throw err;
  }
}

/** A fresh spool file's path for a package of `image` (in TMPDIR unless `dir`). */
export function spoolPath(image: ImageFacts, compression: Compression, dir = tmpdir()): string {
  return join(dir, `ferry-${image.id.slice(7, 19)}-${process.pid}-${Date.now()}-${randomBytes(3).toString('hex')}.tar${compression === 'none' ? '' : compression === 'zstd' ? '.zst' : '.gz'}`);
}

/** A package whose bytes `path` holds, as {@link buildPackage} answers it. */
export function spooled(path: string, produced: ProducedPackage): BuiltPackage {
  return { ...produced, path, remove: () => rm(path, { force: true }) };
}

/**
 * The same pipeline into `destination` instead of a file: a streamed upload's part cutter
 * (stream.ts), whose backpressure paces the export. Layers in `omit` are left out when the
 * archive layout allows it; when it does not, this throws {@link PartialPackageUnavailable}, and
 * a layer store that turns out unreadable midway throws LayerStoreUnreadable — by then bytes
 * have gone to `destination`, so the caller abandons it and starts again whole, or from docker
 * save. FerryErrors `destination` raises pass through as they are.
 */
export async function producePackage(images: ImageSource, image: ImageFacts, compression: Compression, destination: Writable, options: { omit?: readonly string[]; layerStore?: boolean } & ProduceOptions = {}): Promise<ProducedPackage> {
  return produce(image, compression, await sourceOf(images, image, options.omit ?? [], options.layerStore !== false), () => destination, options);
}

/** Where an image's archive comes from, and what it leaves out. */
interface Source {
  exportedBy: ExportedBy;
  /** The archive's exact size, when known before it is read (the layer store's). */
  bytes?: number;
  open(): Promise<Readable>;
  /** The same archive as chunks each valid only until the next is asked for (the layer store's). */
  chunks?(): AsyncIterable<Buffer>;
  filter?: LayerFilter;
  omitted(): string[];
}

/**
 * The layer store when the engine runs here, on overlay2, with its data root readable and every
 * layer the package carries in it: it streams from the first byte and reads only those layers,
 * where docker save first writes the whole image out. Anything else uses docker save.
 */
async function sourceOf(images: ImageSource, image: ImageFacts, omit: readonly string[], layerStore: boolean): Promise<Source> {
  const store = layerStore ? await images.layerStore() : undefined;
  if (store) {
    try {
      const plan = await planStoreArchive(store, image.id, image.diffIds, omit);
      return {
        exportedBy: 'layer-store', omitted: () => plan.omitted, bytes: storeArchiveSize(image.id, image.diffIds, plan),
        open: () => Promise.resolve(streamStoreArchive(store, image.id, image.diffIds, plan)),
        chunks: () => storeArchiveChunks(store, image.id, image.diffIds, plan, { reuse: true }),
      };
    } catch (err) {
      if (!(err instanceof LayerStoreUnreadable)) throw err;
    }
  }
  const filter = omit.length > 0 ? new LayerFilter(image.diffIds, omit) : undefined;
  return { exportedBy: 'docker-save', open: () => images.save(image.id), ...(filter ? { filter } : {}), omitted: () => filter?.omitted ?? [] };
}

async function produce(image: ImageFacts, compression: Compression, source: Source, destination: () => Writable, options: ProduceOptions): Promise<ProducedPackage> {
  const { level, onMeter, signal } = options;
  if (compression === 'none' && source.chunks && !source.filter) return produceDirect(image, source, source.chunks(), destination(), options);
  const started = performance.now();
  const raw = new ByteCounter();
  const packed = new TimedDigestTap();
  onMeter?.({
    archiveBytes: source.bytes ?? (source.filter ? undefined : image.size),
    exact: source.bytes !== undefined && compression === 'none' && !source.filter,
    read: () => raw.bytes, written: () => packed.bytes,
  });
  const compressor = timed(createCompressor(compression, level));
  let saveMs = 0;
  try {
    const saved = await source.open();
    saved.once('end', () => { saveMs = Math.round(performance.now() - started); });
    await pipeline([saved, raw, ...(source.filter ? [source.filter] : []), compressor.stream, packed, destination()], signal ? { signal } : {});
  } catch (err) {
    throw signal?.aborted ? signal.reason : packagingError(image, err);
  }
  return packaged(image, source, {
    compression, size: packed.bytes, digest: packed.digest(), rawBytes: raw.bytes,
    timings: { save: saveMs, compress: Math.round(compressor.busyMs()), hash: Math.round(packed.busyMs), total: Math.round(performance.now() - started) },
  });
}

/** The package's facts from what its pipeline counted, and what the source left out. */
function packaged(image: ImageFacts, source: Source, counted: Pick<ProducedPackage, 'compression' | 'size' | 'digest' | 'rawBytes' | 'timings'>): ProducedPackage {
  return { image, ...counted, omittedLayers: source.omitted(), durationMs: counted.timings.total, exportedBy: source.exportedBy };
}

/**
 * {@link produce} for an uncompressed package from reused chunks: each is counted, hashed and
 * written, and the next is read only once `destination` called back for it, when it no longer
 * needs the bytes (a part cutter has copied them, a file has them). Nothing is allocated per
 * chunk, where the pipeline takes a new 1 MiB buffer for every one; reading still runs ahead of
 * the network by the part cutter's waiting parts.
 */
async function produceDirect(image: ImageFacts, source: Source, chunks: AsyncIterable<Buffer>, destination: Writable, { onMeter, signal }: ProduceOptions): Promise<ProducedPackage> {
  const started = performance.now();
  const hash = new IncrementalDigest();
  onMeter?.({ archiveBytes: source.bytes, exact: source.bytes !== undefined, read: () => hash.bytes, written: () => hash.bytes });
  let hashMs = 0;
  let failure: Error | undefined;
  const onError = (err: Error): void => { failure ??= err; };
  destination.on('error', onError);
  try {
    for await (const chunk of chunks) {
      signal?.throwIfAborted();
      const hashing = performance.now();
      hash.update(chunk);
      hashMs += performance.now() - hashing;
      await new Promise<void>((resolve, reject) => destination.write(chunk, (err) => (err ? reject(err) : resolve())));
    }
    const saveMs = Math.round(performance.now() - started);
    destination.end();
    await finished(destination);
    return packaged(image, source, {
      compression: 'none', size: hash.bytes, digest: hash.digest(), rawBytes: hash.bytes,
      timings: { save: saveMs, compress: 0, hash: Math.round(hashMs), total: Math.round(performance.now() - started) },
    });
  } catch (err) {
    // The destination's own failure (a part the receiver refused) is the cause, not the write it failed.
    const cause = err instanceof LayerStoreUnreadable ? err : failure ?? err;
    destination.destroy(cause as Error);
    await finished(destination).catch(() => undefined);
    throw signal?.aborted ? signal.reason : packagingError(image, cause);
  } finally {
    destination.off('error', onError);
  }
}

/** Counts what the export produced; hashing it too would cost a second BLAKE3 for nothing. */
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

/** What a packaging failure is reported as: the typed errors as they are, anything else as docker's. */
function packagingError(image: ImageFacts, err: unknown): Error {
  if (err instanceof PartialPackageUnavailable || err instanceof LayerStoreUnreadable || err instanceof FerryError) return err;
  return new FerryError('FERRY_ERR_DOCKER', { message: `docker save of ${image.ref} failed: ${(err as Error).message}`, cause: err });
}
