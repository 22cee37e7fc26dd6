import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { IncrementalDigest, digestOf } from '@ferry/integrity';
import type { Logger } from '@ferry/log';
import {
  FerryError, PackageSealSchema, STREAM_MAX_PART_BYTES, parseManifest, sealManifest,
  type DeploymentResult, type Manifest, type PackageSeal,
} from '@ferry/protocol';
import type { LayerInventory } from '../layers/index.ts';
import { UNPACK_MAX } from '../load/archive.ts';
import { loadArchive, type LoadDeps } from '../load/load.ts';
import { SpentPackage, StreamedPackage, type VerifiedPackage } from '../load/package.ts';
import type { Admitted } from './admission.ts';
import { StreamSpool, removeStreamFiles, type StreamRecord } from './stream-spool.ts';

/** Streams at once: each holds a `docker load` open and up to one part in memory. */
export const MAX_STREAMS = 4;

/** A stream nobody writes to for this long is aborted; its load is dropped. */
export const STREAM_IDLE_MS = 10 * 60_000;

/** How long an ended stream still answers 410 rather than 404, so a late client learns why. */
const TOMBSTONE_MS = 60 * 60_000;

export interface StreamStoreOptions {
  /** FERRY_DATA_DIR/streams: each stream's record and spool; created if missing. */
  dir: string;
  load: LoadDeps;
  /** Streams are offered only while the engine uses the legacy image store (see {@link StreamStore}). */
  layers: LayerInventory;
  logger: Logger;
  /** Publishes the failure of a stream refused before its deployment started: the one rejection event. */
  onRejected: (manifest: Manifest, error: FerryError) => void;
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
  record: StreamRecord;
  openedAt: number;
  offset: number;
  hasher: IncrementalDigest;
  /** The verified parts, in order, on their way into the load. */
  input: PassThrough;
  loading: Promise<unknown>;
  /** Every acknowledged part; undefined once the stream was deployed (its bytes are gone). */
  spool: StreamSpool | undefined;
  /** Settles once what the spool held when this process started went into this process's load. */
  replayed: Promise<void>;
  /** Carried over from a receiver process that stopped: its deployment may have been cut short. */
  recovered: boolean;
  failure: FerryError | undefined;
  busy: boolean;
  /** Set by the first deploy call whose seal matched; the input has ended then. */
  sealed: { seal: PackageSeal; pkg: VerifiedPackage; deploying?: Promise<unknown> } | undefined;
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
 * save` on the build host, the transfer and `docker load` here overlap. What keeps it as safe as
 * a spooled upload:
 *
 * - a part is read whole into memory and forwarded only once its BLAKE3 is the one its request
 *   signed, so nothing unauthenticated reaches the engine;
 * - the archive inspector holds the end-of-archive marker until the input ends, and the input ends
 *   only once the signed seal (whole size and BLAKE3) matches what arrived;
 * - the legacy image store's `docker load` unpacks the whole archive to a temporary directory
 *   before it registers anything, so a load that never sees the end of its archive loads
 *   nothing. The containerd store imports as it reads, which is why streams are refused there.
 *
 * What survives a restart: every acknowledged part is in the stream's spool on disk before its
 * 204 (stream-spool.ts). A receiver that starts again replays each spool into a new load and
 * answers the offset it holds, so the sender goes on from there; a deploy call the stop cut short
 * runs again (the journal resolved it as interrupted at start-up).
 */
export class StreamStore {
  readonly #options: StreamStoreOptions;
  readonly #streams = new Map<string, Stream>();
  readonly #byDeployment = new Map<string, string>();
  readonly #ended = new Map<string, { error: FerryError; until: number }>();
  #closing = false;

  private constructor(options: StreamStoreOptions) {
    this.#options = options;
  }

  /** The store, with the streams a previous process left carried over (their loads start again). */
  static async open(options: StreamStoreOptions): Promise<StreamStore> {
    const store = new StreamStore(options);
    await store.#recover();
    return store;
  }

  /**
   * Opens a stream for an admitted opening manifest (upload/admission.ts) and starts its load. A
   * live stream of the same manifest is answered again (`created: false`): the sender that lost
   * the answer goes on from its offset.
   */
  async open(admitted: Admitted): Promise<{ streamId: string; offset: number; created: boolean }> {
    const { manifest, document: body } = admitted;
    const manifestDigest = digestOf(JSON.stringify(manifest));
    const again = this.#existing(manifest, manifestDigest);
    if (again) return again;
    const receiving = [...this.#streams.values()].filter((stream) => !stream.sealed).length;
    if (receiving >= (this.#options.maxStreams ?? MAX_STREAMS)) {
      throw new FerryError('FERRY_ERR_STREAM_UNAVAILABLE', { message: 'This receiver is loading as many streams as it takes at once; send the package instead', details: { reason: 'busy' } });
    }
    if (await this.#options.layers.imageStore() !== 'legacy') {
      throw new FerryError('FERRY_ERR_STREAM_UNAVAILABLE', { details: { reason: 'the engine uses the containerd image store' } });
    }

    const record: StreamRecord = {
      version: 1, id: randomBytes(16).toString('hex'), opening: body, manifestDigest, openedAt: new Date().toISOString(), state: 'receiving',
    };
    const spool = await StreamSpool.create(this.#options.dir, record);
    // Two opens of one manifest may both have got here: the first to finish wins.
    const raced = this.#existing(manifest, manifestDigest);
    if (raced) {
      await spool.remove();
      return raced;
    }
    const stream = this.#start(record, manifest, spool, 0);
    this.#options.logger.info({ streamId: stream.id, deploymentId: manifest.deploymentId }, 'stream opened');
    return { streamId: stream.id, offset: 0, created: true };
  }

  /** Where a stream stands: its durable offset, or a typed 404/410. */
  offset(streamId: string): number {
    return this.#live(streamId).offset;
  }

  /** The service a stream deploys, if it exists: a key must be granted it to touch the stream. */
  serviceOf(streamId: string): string | undefined {
    return this.#streams.get(streamId)?.manifest.service.name;
  }

  /** The offset of a stream, or undefined when it is gone, for the headers of an error answer. */
  peek(streamId: string): number | undefined {
    return this.#streams.get(streamId)?.offset;
  }

  /**
   * Takes one part: read whole, checked against its signed digest, then written to the spool
   * and handed to the load once the load took the part before it, so the engine unpacks one part
   * while the next travels, and its pace still reaches the sender. Answers the new offset, which
   * then outlives a stop of this process (stream-spool.ts).
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
      await stream.replayed;
      throwIfFailed(stream);
      const spool = stream.spool;
      if (!spool) throw new FerryError('FERRY_ERR_UPLOAD_COMPLETE');
      // The disk and the engine take the part at the same time; the load has it either way, so
      // a part the disk refused ends the stream (the offset cannot stay behind the load).
      const durable = spool.append(chunks.list, chunks.bytes).catch((err: unknown) => {
        this.#fail(stream, asFerryError(err));
        throw err;
      });
      // A load that failed meanwhile ended the stream (and closed its spool): its error is the answer.
      await Promise.all([durable, this.#feed(stream, chunks.list)]).catch((err: unknown) => {
        throw stream.failure ?? err;
      });
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
   * the package to `deploy`. Called again (a lost answer, or after a restart), it hands the same
   * package again, and the deployer answers from its journal — or, when the stop of the receiver
   * cut the deployment short, runs it again.
   */
  async deploy(streamId: string, body: unknown, deploy: (pkg: VerifiedPackage) => Promise<DeploymentResult>): Promise<DeploymentResult> {
    const stream = this.#live(streamId);
    if (stream.busy) throw new FerryError('FERRY_ERR_UPLOAD_BUSY');
    const parsed = PackageSealSchema.safeParse(body);
    if (!parsed.success) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `The seal is {"size": N, "digest": "blake3:<hex>"}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}` });
    const seal = parsed.data;
    if (stream.sealed) {
      if (stream.sealed.seal.size !== seal.size || stream.sealed.seal.digest !== seal.digest) throw new FerryError('FERRY_ERR_UPLOAD_CONFLICT', { message: 'This stream was sealed with another size or digest' });
      return this.#deploy(stream, deploy);
    }
    stream.busy = true;
    try {
      // A stream carried over from a stopped process: its digest covers the spool once replayed.
      await stream.replayed;
    } finally {
      stream.busy = false;
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
    const pkg = new StreamedPackage({
      manifest: checked.manifest, bytes: seal.size, receiveMs: performance.now() - stream.openedAt, loading: stream.loading, resumesInterrupted: stream.recovered,
    });
    stream.sealed = { seal, pkg };
    stream.manifest = checked.manifest;
    // The archive may end now: the engine finishes the load it has been unpacking.
    stream.input.end();
    this.#touch(stream);
    return this.#deploy(stream, deploy);
  }

  /** `DELETE`: the sender gave the stream up; its load is dropped. */
  abort(streamId: string): void {
    const stream = this.#live(streamId);
    if (stream.sealed) throw new FerryError('FERRY_ERR_UPLOAD_COMPLETE');
    this.#end(stream, new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { message: 'The sender abandoned the stream', details: { reason: 'abandoned' } }));
  }

  /**
   * The process stops: the loads go, the records and spools stay for the next start, which
   * carries the streams over.
   */
  close(): void {
    this.#closing = true;
    for (const stream of this.#streams.values()) {
      clearTimeout(stream.idle);
      if (!stream.sealed) stream.input.destroy(new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { message: 'The receiver stopped', details: { reason: 'receiver stopped' } }));
      void stream.spool?.close();
    }
  }

  /** A live stream of this deployment id: answered again for the same manifest, a conflict for another. */
  #existing(manifest: Manifest, manifestDigest: string): { streamId: string; offset: number; created: false } | undefined {
    const existing = this.#streams.get(this.#byDeployment.get(manifest.deploymentId) ?? '');
    if (!existing) return undefined;
    if (existing.record.manifestDigest !== manifestDigest || existing.sealed) {
      throw new FerryError('FERRY_ERR_UPLOAD_CONFLICT', { message: 'A live stream has this deployment id', details: { deploymentId: manifest.deploymentId, streamId: existing.id } });
    }
    return { streamId: existing.id, offset: existing.offset, created: false };
  }

  /**
   * A stream's live half: its load, fed first with `replay` bytes of its spool (a stream carried
   * over from a stopped process) and then with each part as it is acknowledged.
   */
  #start(record: StreamRecord, manifest: Manifest, spool: StreamSpool, replay: number, recovered = false): Stream {
    const input = new PassThrough();
    // A stream deleted or failed before the load has taken its input (one engine call away) is
    // destroyed with an error nobody listens to yet, which would end the process: the load and
    // #fail report it, so this listener only keeps it from being unhandled.
    input.on('error', () => undefined);
    const stream: Stream = {
      id: record.id, manifest, record, openedAt: performance.now(), offset: replay, hasher: new IncrementalDigest(), input,
      loading: loadArchive(this.#options.load, manifest, input, { limit: UNPACK_MAX, endAfterInput: true }),
      spool, replayed: Promise.resolve(), recovered, failure: undefined, busy: false, sealed: undefined, idle: undefined,
    };
    // The load fails on its own (a refused archive, the engine) or because the stream was ended.
    stream.loading.catch((err: unknown) => this.#fail(stream, asFerryError(err)));
    if (replay > 0) {
      const hasher = stream.hasher;
      stream.replayed = pipeline(spool.read(replay), async function* (source: AsyncIterable<Buffer>) {
        for await (const chunk of source) {
          hasher.update(chunk);
          yield chunk;
        }
      }, input, { end: false }).catch((err: unknown) => this.#fail(stream, asFerryError(err)));
    }
    this.#streams.set(stream.id, stream);
    this.#byDeployment.set(manifest.deploymentId, stream.id);
    this.#touch(stream);
    return stream;
  }

  /** Writes one verified part into the load, once the load took the one before it. */
  async #feed(stream: Stream, chunks: readonly Buffer[]): Promise<void> {
    // The previous part had the engine busy while this one arrived; it must be taken before
    // this one goes in, so at most one part waits in memory for the load.
    if (stream.input.writableNeedDrain) await Promise.race([once(stream.input, 'drain'), stream.loading.then(() => undefined)]);
    throwIfFailed(stream);
    for (const chunk of chunks) {
      stream.hasher.update(chunk);
      stream.input.write(chunk);
    }
  }

  /**
   * Hands the sealed package to the deployer. After the first deployment settled, the spool
   * goes: a later deploy call is answered from the journal, which then knows the outcome.
   */
  async #deploy(stream: Stream, deploy: (pkg: VerifiedPackage) => Promise<DeploymentResult>): Promise<DeploymentResult> {
    const sealed = stream.sealed;
    if (!sealed) throw new FerryError('FERRY_ERR_INTERNAL', { message: 'The stream is not sealed' });
    const deploying = deploy(sealed.pkg);
    sealed.deploying ??= deploying.then(() => undefined, () => undefined).then(async () => {
      const spool = stream.spool;
      stream.spool = undefined;
      stream.record = { ...stream.record, state: 'deployed', seal: sealed.seal };
      if (this.#closing || !spool) return;
      await spool.deployed(stream.record).catch((err: unknown) => this.#options.logger.warn({ err, streamId: stream.id }, 'could not retire a deployed stream\'s spool'));
    });
    return deploying;
  }

  /** Carries over the streams a stopped process left: each replays its spool into a new load. */
  async #recover(): Promise<void> {
    const found = await StreamSpool.recover(this.#options.dir, (id, err) => this.#options.logger.warn({ err, streamId: id }, 'unreadable stream record removed'));
    if (found.length === 0) return;
    const legacy = await this.#options.layers.imageStore().then((store) => store === 'legacy', () => false);
    for (const { record, manifest, spool, bytes } of found) {
      if (!spool) {
        this.#restoreDeployed(record, manifest);
        continue;
      }
      if (!legacy) {
        this.#options.logger.warn({ streamId: record.id }, 'a stream of an earlier run was dropped: the engine does not use the legacy image store now');
        await spool.remove();
        continue;
      }
      this.#start(record, manifest, spool, bytes, true);
      this.#options.logger.info({ streamId: record.id, deploymentId: manifest.deploymentId, offset: bytes }, 'stream carried over from an earlier run');
    }
  }

  /** A stream deployed by an earlier run: it only answers repeated deploy calls, from the journal. */
  #restoreDeployed(record: StreamRecord, opening: Manifest): void {
    const seal = record.seal;
    const checked = seal ? parseManifest(sealManifest(opening, seal)) : undefined;
    if (!seal || !checked?.ok) {
      void removeStreamFiles(this.#options.dir, record.id);
      return;
    }
    const gone = Promise.reject(new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { message: 'The stream\'s bytes went with its earlier deployment', details: { reason: 'deployed' } }));
    gone.catch(() => undefined);
    const input = new PassThrough();
    input.end();
    const stream: Stream = {
      id: record.id, manifest: checked.manifest, record, openedAt: performance.now(), offset: seal.size, hasher: new IncrementalDigest(), input,
      loading: gone, spool: undefined, replayed: Promise.resolve(), recovered: true, failure: undefined, busy: false,
      sealed: { seal, pkg: new SpentPackage({ manifest: checked.manifest, bytes: seal.size, receiveMs: 0 }), deploying: Promise.resolve() },
      idle: undefined,
    };
    this.#streams.set(stream.id, stream);
    this.#byDeployment.set(stream.manifest.deploymentId, stream.id);
    this.#touch(stream);
  }

  #live(streamId: string): Stream {
    const stream = this.#streams.get(streamId);
    if (stream) return stream;
    const ended = this.#ended.get(streamId);
    if (ended && ended.until > Date.now()) throw ended.error;
    throw new FerryError('FERRY_ERR_UPLOAD_NOT_FOUND', { message: 'No such stream' });
  }

  /** A load that failed before the stream was sealed ends the stream; the next request learns why. */
  #fail(stream: Stream, error: FerryError): void {
    if (this.#closing) return;
    stream.failure ??= error;
    if (stream.sealed || !this.#streams.has(stream.id)) return;
    this.#options.logger.warn({ streamId: stream.id, deploymentId: stream.manifest.deploymentId, code: error.code }, 'streamed load failed');
    this.#options.onRejected(stream.manifest, error);
    this.#end(stream, error);
  }

  /** Drops a stream: its load sees a broken archive and loads nothing; its files go. */
  #end(stream: Stream, error: FerryError): void {
    stream.failure ??= error;
    clearTimeout(stream.idle);
    if (!stream.sealed) stream.input.destroy(error);
    this.#streams.delete(stream.id);
    if (this.#byDeployment.get(stream.manifest.deploymentId) === stream.id) this.#byDeployment.delete(stream.manifest.deploymentId);
    this.#removeFiles(stream);
    const gone = error.code === 'FERRY_ERR_UPLOAD_INVALIDATED' || error.code === 'FERRY_ERR_UPLOAD_EXPIRED'
      ? error
      : new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { message: `The stream ended: ${error.message}`, details: { reason: error.code } });
    this.#ended.set(stream.id, { error: gone, until: Date.now() + TOMBSTONE_MS });
    for (const [id, entry] of this.#ended) if (entry.until <= Date.now()) this.#ended.delete(id);
  }

  #removeFiles(stream: Stream): void {
    const spool = stream.spool;
    stream.spool = undefined;
    // A sealed stream's deployment may still read its load's input; its files go once it settled.
    void (stream.sealed?.deploying ?? Promise.resolve())
      .then(() => (spool ? spool.remove() : removeStreamFiles(this.#options.dir, stream.id)))
      .catch((err: unknown) => this.#options.logger.warn({ err, streamId: stream.id }, 'could not remove a stream\'s files'));
  }

  /** Re-arms the idle timer; a sealed stream is forgotten once idle, its deployment left to the journal. */
  #touch(stream: Stream): void {
    clearTimeout(stream.idle);
    const idleMs = this.#options.idleMs ?? STREAM_IDLE_MS;
    stream.idle = setTimeout(() => {
      if (stream.busy) return this.#touch(stream);
      if (stream.sealed) {
        this.#streams.delete(stream.id);
        if (this.#byDeployment.get(stream.manifest.deploymentId) === stream.id) this.#byDeployment.delete(stream.manifest.deploymentId);
        this.#removeFiles(stream);
        return;
      }
      this.#end(stream, new FerryError('FERRY_ERR_UPLOAD_EXPIRED', { message: `The stream was idle for ${Math.round(idleMs / 1000)} s` }));
    }, idleMs);
    stream.idle.unref();
  }
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
