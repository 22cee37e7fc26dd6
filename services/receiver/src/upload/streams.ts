import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { PassThrough, type Readable } from 'node:stream';
import { IncrementalDigest } from '@ferry/integrity';
import type { Logger } from '@ferry/log';
import {
  FerryError, PackageSealSchema, STREAM_MAX_PART_BYTES, parseDeferredManifest, parseManifest, sealManifest,
  type DeploymentResult, type Manifest, type PackageSeal,
} from '@ferry/protocol';
import type { VerifiedPackage } from '../deploy/engine.ts';
import type { LayerInventory } from '../layers/index.ts';
import { UNPACK_MAX } from '../load/archive.ts';
import { loadArchive, type LoadDeps } from '../load/load.ts';

/** Streams at once: each holds a `docker load` open and up to one part in memory. */
export const MAX_STREAMS = 4;

/** A stream nobody writes to for this long is aborted; its load is dropped. */
export const STREAM_IDLE_MS = 10 * 60_000;

/** How long an ended stream still answers 410 rather than 404, so a late client learns why. */
const TOMBSTONE_MS = 60 * 60_000;

export interface StreamStoreOptions {
  load: LoadDeps;
  /** Streams are offered only while the engine uses the legacy image store (see {@link StreamStore}). */
  layers: LayerInventory;
  logger: Logger;
  /** Publishes the failure of a stream refused before its deployment started. */
  onRejected: (manifest: Manifest, error: FerryError) => void;
  /** Refuses a new stream when the data directory is short of space. */
  assertDiskSpace?: () => Promise<void>;
  maxStreams?: number;
  idleMs?: number;
  /**
   * Runs after each part went to its load: the receiver's buffer budget (@ferry/memory), whose
   * full collections free the parts' buffers, which live too long to die in a scavenge.
   */
  afterPart?: () => void;
}

interface Stream {
  id: string;
  /** The opening manifest, with a placeholder seal until the deploy call brings the real one. */
  manifest: Manifest;
  openedAt: number;
  offset: number;
  hasher: IncrementalDigest;
  /** The verified parts, in order, on their way into the load. */
  input: PassThrough;
  loading: Promise<unknown>;
  failure: FerryError | undefined;
  busy: boolean;
  /** Set by the first deploy call whose seal matched; the input has ended then. */
  sealed: { seal: PackageSeal; pkg: VerifiedPackage } | undefined;
  idle: NodeJS.Timeout | undefined;
}

export interface PartWrite {
  streamId: string;
  offset: number;
  contentLength: number;
  /** The signed X-Ferry-Content-Digest of this request: BLAKE3 of the part. */
  digest: string;
  body: Readable;
}

/**
 * Streamed uploads (docs/protocol.md §10.6): the package is loaded while it arrives, so `docker
 * save` on the build host, the transfer and `docker load` here overlap, and no side writes the
 * package to a file. What keeps it as safe as a spooled upload:
 *
 * - a part is read whole into memory and forwarded only once its BLAKE3 is the one its request
 *   signed, so nothing unauthenticated reaches the engine;
 * - the archive inspector holds the end-of-archive marker until the input ends, and the input ends
 *   only once the signed seal (whole size and BLAKE3) matches what arrived;
 * - the legacy image store's `docker load` unpacks the whole archive to a temporary directory
 *   before it registers anything, so a load that never sees the end of its archive loads
 *   nothing. The containerd store imports as it reads, which is why streams are refused there.
 *
 * Streams live in memory: a receiver restart ends them (404), and the sender sends the package
 * the spooled way instead.
 */
export class StreamStore {
  readonly #options: StreamStoreOptions;
  readonly #streams = new Map<string, Stream>();
  readonly #byDeployment = new Map<string, string>();
  readonly #ended = new Map<string, { error: FerryError; until: number }>();

  constructor(options: StreamStoreOptions) {
    this.#options = options;
  }

  /** Opens a stream for an opening manifest (a signed body) and starts its load; `admit` is the policy. */
  async open(body: unknown, admit?: (manifest: Manifest) => void): Promise<{ streamId: string }> {
    const manifest = readOpeningManifest(body);
    try {
      admit?.(manifest);
    } catch (err) {
      // A refusal by the policy ends this deployment: watchers see it fail, as for a one-shot upload.
      if (err instanceof FerryError) this.#options.onRejected(manifest, err);
      throw err;
    }
    const existing = this.#byDeployment.get(manifest.deploymentId);
    if (existing !== undefined && this.#streams.has(existing)) {
      throw new FerryError('FERRY_ERR_UPLOAD_CONFLICT', { message: 'A live stream has this deployment id', details: { deploymentId: manifest.deploymentId, streamId: existing } });
    }
    const receiving = [...this.#streams.values()].filter((stream) => !stream.sealed).length;
    if (receiving >= (this.#options.maxStreams ?? MAX_STREAMS)) {
      throw new FerryError('FERRY_ERR_STREAM_UNAVAILABLE', { message: 'This receiver is loading as many streams as it takes at once; send the package instead', details: { reason: 'busy' } });
    }
    if (await this.#options.layers.imageStore() !== 'legacy') {
      throw new FerryError('FERRY_ERR_STREAM_UNAVAILABLE', { details: { reason: 'the engine uses the containerd image store' } });
    }
    await this.#options.assertDiskSpace?.();

    const id = randomBytes(16).toString('hex');
    const input = new PassThrough();
    const stream: Stream = {
      id, manifest, openedAt: performance.now(), offset: 0, hasher: new IncrementalDigest(), input,
      loading: loadArchive(this.#options.load, manifest, input, { limit: UNPACK_MAX, endAfterInput: true }),
      failure: undefined, busy: false, sealed: undefined, idle: undefined,
    };
    // The load fails on its own (a refused archive, the engine) or because the stream was ended.
    stream.loading.catch((err: unknown) => this.#fail(stream, asFerryError(err)));
    this.#streams.set(id, stream);
    this.#byDeployment.set(manifest.deploymentId, id);
    this.#touch(stream);
    this.#options.logger.info({ streamId: id, deploymentId: manifest.deploymentId }, 'stream opened');
    return { streamId: id };
  }

  /** Where a stream stands: its offset, or a typed 404/410. */
  offset(streamId: string): number {
    return this.#live(streamId).offset;
  }

  /** The offset of a stream, or undefined when it is gone, for the headers of an error answer. */
  /** The service a stream deploys, if it exists: a key must be granted it to touch the stream. */
  serviceOf(streamId: string): string | undefined {
    return this.#streams.get(streamId)?.manifest.service.name;
  }

  peek(streamId: string): number | undefined {
    return this.#streams.get(streamId)?.offset;
  }

  /**
   * Takes one part: read whole, checked against its signed digest, then handed to the load once
   * the load took the part before it, so the engine unpacks one part while the next travels, and
   * its pace still reaches the sender. Answers the new offset.
   */
  async writePart(part: PartWrite): Promise<number> {
    const stream = this.#live(part.streamId);
    if (stream.busy) throw new FerryError('FERRY_ERR_UPLOAD_BUSY');
    if (stream.sealed) throw new FerryError('FERRY_ERR_UPLOAD_COMPLETE');
    if (part.offset !== stream.offset) throw new FerryError('FERRY_ERR_OFFSET_MISMATCH', { details: { expected: stream.offset, given: part.offset } });
    if (part.contentLength > STREAM_MAX_PART_BYTES) {
      throw new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: `A streamed part is at most ${STREAM_MAX_PART_BYTES} bytes`, details: { limit: STREAM_MAX_PART_BYTES } });
    }
    stream.busy = true;
    this.#touch(stream);
    try {
      const chunks = await readPart(part.body, part.contentLength);
      if (chunks.digest() !== part.digest) throw new FerryError('FERRY_ERR_CHECKSUM_MISMATCH', { message: 'The part is not the one its request signed', details: { offset: part.offset } });
      // The previous part had the engine busy while this one arrived; it must be taken before
      // this one goes in, so at most one part waits in memory for the load.
      if (stream.input.writableNeedDrain) await Promise.race([once(stream.input, 'drain'), stream.loading.then(() => undefined)]);
      throwIfFailed(stream);
      for (const chunk of chunks.list) {
        stream.hasher.update(chunk);
        stream.input.write(chunk);
      }
      stream.offset += chunks.bytes;
      this.#options.afterPart?.();
      return stream.offset;
    } finally {
      stream.busy = false;
      this.#touch(stream);
    }
  }

  /**
   * The deploy call: checks the signed seal against what arrived, lets the load finish, and hands
   * the package to `deploy`. Called again (a lost answer), it hands the same package again, and
   * the deployer answers from its journal.
   */
  async deploy(streamId: string, body: unknown, deploy: (pkg: VerifiedPackage) => Promise<DeploymentResult>): Promise<DeploymentResult> {
    const stream = this.#live(streamId);
    if (stream.busy) throw new FerryError('FERRY_ERR_UPLOAD_BUSY');
    const parsed = PackageSealSchema.safeParse(body);
    if (!parsed.success) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `The seal is {"size": N, "digest": "blake3:<hex>"}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}` });
    const seal = parsed.data;
    if (stream.sealed) {
      if (stream.sealed.seal.size !== seal.size || stream.sealed.seal.digest !== seal.digest) throw new FerryError('FERRY_ERR_UPLOAD_CONFLICT', { message: 'This stream was sealed with another size or digest' });
      return deploy(stream.sealed.pkg);
    }
    if (stream.failure) throw stream.failure;
    if (seal.size !== stream.offset) {
      throw new FerryError('FERRY_ERR_UPLOAD_INCOMPLETE', { message: `The stream has ${stream.offset} of the ${seal.size} bytes its seal names`, details: { offset: stream.offset, size: seal.size } });
    }
    if (seal.digest !== stream.hasher.digest()) {
      const error = new FerryError('FERRY_ERR_CHECKSUM_MISMATCH', { message: 'The streamed package is not the one its seal names; nothing was loaded', details: { reason: 'checksum mismatch' } });
      this.#end(stream, error);
      this.#options.onRejected(stream.manifest, error);
      throw error;
    }
    const manifest = sealManifest(stream.manifest, seal);
    const checked = parseManifest(manifest);
    if (!checked.ok) throw new FerryError('FERRY_ERR_BAD_MANIFEST', { message: `Manifest is invalid: ${checked.problems.join('; ')}` });
    const pkg: VerifiedPackage = { manifest: checked.manifest, bytes: seal.size, durationMs: performance.now() - stream.openedAt, loading: stream.loading };
    stream.sealed = { seal, pkg };
    stream.manifest = checked.manifest;
    // The archive may end now: the engine finishes the load it has been unpacking.
    stream.input.end();
    this.#touch(stream);
    return deploy(pkg);
  }

  /** `DELETE`: the sender gave the stream up; its load is dropped. */
  abort(streamId: string): void {
    const stream = this.#live(streamId);
    if (stream.sealed) throw new FerryError('FERRY_ERR_UPLOAD_COMPLETE');
    this.#end(stream, new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { message: 'The sender abandoned the stream', details: { reason: 'abandoned' } }));
  }

  close(): void {
    for (const stream of [...this.#streams.values()]) {
      this.#end(stream, new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { message: 'The receiver stopped', details: { reason: 'receiver stopped' } }));
    }
  }

  #live(streamId: string): Stream {
    const stream = this.#streams.get(streamId);
    if (stream) return stream;
    const ended = this.#ended.get(streamId);
    if (ended && ended.until > Date.now()) throw ended.error;
    throw new FerryError('FERRY_ERR_UPLOAD_NOT_FOUND', { message: 'No such stream (a receiver restart ends every stream)' });
  }

  /** A load that failed before the stream was sealed ends the stream; the next request learns why. */
  #fail(stream: Stream, error: FerryError): void {
    stream.failure ??= error;
    if (stream.sealed || !this.#streams.has(stream.id)) return;
    this.#options.logger.warn({ streamId: stream.id, deploymentId: stream.manifest.deploymentId, code: error.code }, 'streamed load failed');
    this.#options.onRejected(stream.manifest, error);
    this.#end(stream, error);
  }

  /** Drops a stream: its load sees a broken archive and loads nothing. */
  #end(stream: Stream, error: FerryError): void {
    stream.failure ??= error;
    clearTimeout(stream.idle);
    if (!stream.sealed) stream.input.destroy(error);
    this.#streams.delete(stream.id);
    if (this.#byDeployment.get(stream.manifest.deploymentId) === stream.id) this.#byDeployment.delete(stream.manifest.deploymentId);
    const gone = error.code === 'FERRY_ERR_UPLOAD_INVALIDATED' || error.code === 'FERRY_ERR_UPLOAD_EXPIRED'
      ? error
      : new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { message: `The stream ended: ${error.message}`, details: { reason: error.code } });
    this.#ended.set(stream.id, { error: gone, until: Date.now() + TOMBSTONE_MS });
    for (const [id, entry] of this.#ended) if (entry.until <= Date.now()) this.#ended.delete(id);
  }

  /** Re-arms the idle timer; a sealed stream is left to its deployment. */
  #touch(stream: Stream): void {
    clearTimeout(stream.idle);
    const idleMs = this.#options.idleMs ?? STREAM_IDLE_MS;
    stream.idle = setTimeout(() => {
      if (stream.busy) return this.#touch(stream);
      if (stream.sealed) {
        this.#streams.delete(stream.id);
        return;
      }
      this.#end(stream, new FerryError('FERRY_ERR_UPLOAD_EXPIRED', { message: `The stream was idle for ${Math.round(idleMs / 1000)} s` }));
    }, idleMs);
    stream.idle.unref();
  }
}

function readOpeningManifest(json: unknown): Manifest {
  const parsed = parseDeferredManifest(json);
  if (!parsed.ok) throw new FerryError('FERRY_ERR_BAD_MANIFEST', { message: `Manifest is invalid: ${parsed.problems.join('; ')}`, details: { problems: parsed.problems } });
  return parsed.manifest;
}

/**
 * A part whole, as the socket delivered it (no copy into one buffer) and hashed on the way, or an
 * error when the connection ends first (the part is then not taken).
 */
async function readPart(body: Readable, length: number): Promise<{ list: Buffer[]; bytes: number; digest: () => string }> {
  const list: Buffer[] = [];
  const hash = new IncrementalDigest();
  for await (const chunk of body as AsyncIterable<Buffer>) {
    if (hash.bytes + chunk.length > length) throw new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: 'The part is longer than its Content-Length' });
    hash.update(chunk);
    list.push(chunk);
  }
  if (hash.bytes !== length) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `The part ended after ${hash.bytes} of ${length} bytes` });
  return { list, bytes: length, digest: () => hash.digest() };
}

function throwIfFailed(stream: Stream): void {
  if (stream.failure) throw stream.failure;
}

function asFerryError(err: unknown): FerryError {
  return err instanceof FerryError ? err : new FerryError('FERRY_ERR_LOAD_FAILED', { cause: err });
}
