import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readdir, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { storageError, writeRecordFile } from '@ferry/durable';
import { DigestTap, digestFile } from '@ferry/integrity';
import type { Logger } from '@ferry/log';
import { FerryError, UPLOAD_MAX_PART_BYTES, isFerryError, parseManifest, type DeploymentResult, type Manifest } from '@ferry/protocol';
import { SpentPackage, SpooledPackage, type VerifiedPackage } from '../load/package.ts';
import type { Admitted } from './admission.ts';
import { SpoolWriter } from './spool-writer.ts';

/**
 * - `receiving`: accepting parts; the spool holds exactly `offset` bytes.
 * - `complete`: all bytes are in and the whole file matched `package.digest`.
 * - `deployed`: handed to the deployer at least once; a retry asks the deployer again.
 * - `invalidated`: a tombstone until it expires; the spool is gone and every request gets 410.
 */
export type UploadState = 'receiving' | 'complete' | 'deployed' | 'invalidated';

/** What a client may know about an upload. */
export interface UploadView {
  uploadId: string;
  offset: number;
  length: number;
  expiresAt: string;
  state: UploadState;
}

/** The on-disk record of a session: `<id>.json` beside its spool `<id>.bin`. */
interface SessionRecord {
  version: 1;
  id: string;
  manifest: Manifest;
  manifestDigest: string;
  offset: number;
  state: UploadState;
  reason?: string;
  createdAt: string;
  expiresAt: string;
  /** Time spent receiving parts, reported to the deployer as the receive stage. */
  receiveMs: number;
}

export interface UploadStoreOptions {
  /** FERRY_DATA_DIR/uploads; created if missing. */
  dir: string;
  ttlSeconds: number;
  logger: Logger;
  /** Told of an upload refused after its manifest was admitted (the finished file's digest): the one rejection event. */
  onRejected?: (manifest: Manifest, error: FerryError) => void;
  /** Milliseconds since the epoch; injected by tests. */
  now?: () => number;
}

export interface PartRequest {
  uploadId: string;
  offset: number;
  contentLength: number;
  /** The signed content digest: BLAKE3 of this part's bytes. */
  digest: string;
  body: Readable;
}

const ID = /^[0-9a-f]{32}$/;
const RECORD = /^([0-9a-f]{32})\.json$/;

/**
 * Resumable upload sessions on disk. Every acknowledged offset is durable: a part's bytes are
 * fsynced before the session record moves its offset (write to a temporary file, fsync, rename,
 * fsync the directory), and anything past the recorded offset — the remains of a cut or crashed
 * PATCH — is truncated away, at once on failure and again at start-up. So after any failure the
 * spool's length equals the offset a HEAD reports.
 */
export class UploadStore {
  readonly #options: UploadStoreOptions;
  readonly #now: () => number;
  readonly #sessions = new Map<string, SessionRecord>();
  readonly #byDeployment = new Map<string, string>();
  /** Uploads with a PATCH, a completion check or a deployment in flight: one writer at a time. */
  readonly #busy = new Set<string>();
  /** The PATCH in flight per upload: the request body it reads, and when it has settled. */
  readonly #writers = new Map<string, { body: Readable; settled: Promise<void> }>();
  readonly #deploying = new Map<string, Promise<DeploymentResult>>();
  /** Sessions a previous process left: a deployment of theirs that its stop cut short may run again. */
  readonly #recovered = new Set<string>();
  #sweeper: NodeJS.Timeout | undefined;

  private constructor(options: UploadStoreOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** Loads the sessions a previous process left, cutting every spool back to its durable offset. */
  static async open(options: UploadStoreOptions): Promise<UploadStore> {
    const store = new UploadStore(options);
    await mkdir(options.dir, { recursive: true, mode: 0o700 });
    await store.#recover();
    return store;
  }

  /** Removes expired sessions every so often; the timer never keeps the process alive. */
  startSweeper(intervalMs = Math.min(60_000, Math.max(1000, (this.#options.ttlSeconds * 1000) / 2))): void {
    this.#sweeper ??= setInterval(() => {
      this.sweep().catch((err: unknown) => this.#options.logger.error({ err }, 'upload sweep failed'));
    }, intervalMs).unref();
  }

  close(): void {
    clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }

  /**
   * Opens a session for an admitted manifest (upload/admission.ts). A live session for the same
   * deployment id and the same manifest bytes is returned instead (`created: false`), so a client
   * that lost the answer can simply ask again.
   */
  async create(admitted: Admitted): Promise<{ view: UploadView; created: boolean }> {
    const { manifest, digest: manifestDigest } = admitted;
    const existingId = this.#byDeployment.get(manifest.deploymentId);
    const existing = existingId === undefined ? undefined : this.#sessions.get(existingId);
    if (existing && existing.state !== 'invalidated' && !this.#expired(existing)) {
      if (existing.manifestDigest !== manifestDigest) {
        throw new FerryError('FERRY_ERR_UPLOAD_CONFLICT', { details: { deploymentId: manifest.deploymentId, uploadId: existing.id } });
      }
      return { view: view(existing), created: false };
    }

    const now = this.#now();
    const record: SessionRecord = {
      version: 1, id: randomBytes(16).toString('hex'), manifest, manifestDigest, offset: 0, state: 'receiving',
      createdAt: new Date(now).toISOString(), expiresAt: new Date(now + this.#options.ttlSeconds * 1000).toISOString(), receiveMs: 0,
    };
    // Registered before the first await, so a concurrent create with the same manifest finds it.
    this.#register(record);
    this.#busy.add(record.id);
    try {
      const handle = await open(this.#spool(record.id), 'wx', 0o600);
      await handle.sync().finally(() => handle.close());
      await this.#persist(record);
    } catch (err) {
      this.#forget(record);
      await this.#removeFiles(record.id);
      throw diskError(err, 'The upload session could not be created');
    } finally {
      this.#busy.delete(record.id);
    }
    this.#options.logger.info({ uploadId: record.id, deploymentId: manifest.deploymentId, length: manifest.package.size }, 'upload created');
    return { view: view(record), created: true };
  }

  /** The durable state of an upload, or a typed 404/410. */
  status(uploadId: string): UploadView {
    return view(this.#live(uploadId));
  }

  /** The service an upload deploys, if it exists: a key must be granted it to touch the upload. */
  serviceOf(uploadId: string): string | undefined {
    return this.#sessions.get(uploadId)?.manifest.service.name;
  }

  /** The offset to show on an error answer, if the upload still exists; never throws. */
  peek(uploadId: string): UploadView | undefined {
    const record = this.#sessions.get(uploadId);
    return record && record.state !== 'invalidated' ? view(record) : undefined;
  }

  /**
   * Appends one part at `offset`. The bytes are hashed on their way to the spool and fsynced;
   * only if their digest is the signed one does the offset move. Any failure — a digest
   * mismatch, a cut connection, a full disk — leaves the spool cut back to the old offset.
   * The part that completes the upload also has the whole file checked against the manifest.
   */
  async writePart(part: PartRequest): Promise<UploadView> {
    // A writer whose client went away (its connection closed mid-part, answered 400 at once)
    // moves no offset: the next PATCH waits for it to cut the spool back instead of being busy.
    const abandoned = this.#writers.get(part.uploadId);
    if (abandoned?.body.destroyed === true) await abandoned.settled;
    const record = this.#live(part.uploadId);
    if (record.state !== 'receiving') throw new FerryError('FERRY_ERR_UPLOAD_COMPLETE', { details: { offset: record.offset } });
    if (this.#busy.has(record.id)) throw new FerryError('FERRY_ERR_UPLOAD_BUSY', { details: { offset: record.offset } });
    if (part.offset !== record.offset) {
      throw new FerryError('FERRY_ERR_OFFSET_MISMATCH', { details: { expected: record.offset, given: part.offset } });
    }
    const length = record.manifest.package.size;
    if (part.contentLength > UPLOAD_MAX_PART_BYTES || part.offset + part.contentLength > length) {
      const error = new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', {
        message: part.contentLength > UPLOAD_MAX_PART_BYTES
          ? `A part may hold at most ${UPLOAD_MAX_PART_BYTES} bytes; the upload is invalidated`
          : `The part ends at ${part.offset + part.contentLength}, past Upload-Length ${length}; the upload is invalidated`,
        details: { limit: Math.min(UPLOAD_MAX_PART_BYTES, length - part.offset) },
      });
      await this.#invalidate(record, 'oversized part');
      throw error;
    }

    this.#busy.add(record.id);
    const writing = this.#write(record, part).finally(() => this.#busy.delete(record.id));
    const writer = { body: part.body, settled: writing.then(() => undefined, () => undefined) };
    this.#writers.set(record.id, writer);
    try {
      return await writing;
    } finally {
      if (this.#writers.get(record.id) === writer) this.#writers.delete(record.id);
    }
  }

  async #write(record: SessionRecord, part: PartRequest): Promise<UploadView> {
    await this.#append(record, part);
    if (record.offset === record.manifest.package.size) await this.#complete(record);
    return view(record);
  }

  /**
   * Hands a complete upload to `deploy` (the receiver's Deployer) and returns its outcome. The
   * deployer gets a hard link of the spool, which it deletes; the spool itself goes once the
   * deployer has decided, and stays when it refused for now, before journalling the deployment
   * (see {@link refusedForNow}: a full disk, another deployment in progress), so the client can
   * send the deploy call again. Concurrent calls for one upload share one deployment. The spool also
   * outlives a stop of the receiver in the middle of the deployment: the deploy call, repeated
   * after the restart, runs again the deployment that stop cut short (FERRY_ERR_INTERRUPTED in
   * the journal), from the bytes already here.
   */
  deploy(uploadId: string, deploy: (pkg: VerifiedPackage) => Promise<DeploymentResult>): Promise<DeploymentResult> {
    const inflight = this.#deploying.get(uploadId);
    if (inflight) return inflight;
    const record = this.#live(uploadId);
    if (record.offset < record.manifest.package.size) {
      throw new FerryError('FERRY_ERR_UPLOAD_INCOMPLETE', { details: { offset: record.offset, length: record.manifest.package.size } });
    }
    if (this.#busy.has(record.id)) throw new FerryError('FERRY_ERR_UPLOAD_BUSY', { details: { offset: record.offset } });
    const running = this.#handOver(record, deploy).finally(() => {
      this.#busy.delete(record.id);
      this.#deploying.delete(record.id);
    });
    this.#busy.add(record.id);
    this.#deploying.set(record.id, running);
    return running;
  }

  /** Removes every expired session and its spool; sessions in use wait for the next sweep. */
  async sweep(): Promise<number> {
    let removed = 0;
    for (const record of [...this.#sessions.values()]) {
      if (!this.#expired(record) || this.#busy.has(record.id)) continue;
      this.#forget(record);
      await this.#removeFiles(record.id);
      removed += 1;
      this.#options.logger.info({ uploadId: record.id, deploymentId: record.manifest.deploymentId, state: record.state }, 'expired upload removed');
    }
    return removed;
  }

  async #append(record: SessionRecord, part: PartRequest): Promise<void> {
    const started = performance.now();
    const spool = this.#spool(record.id);
    let handle: FileHandle | undefined;
    try {
      handle = await open(spool, 'r+');
      // The file may hold the tail of a part that failed before: its length must be the offset.
      await handle.truncate(part.offset);
      const tap = new DigestTap();
      const writer = new SpoolWriter(handle, part.offset);
      const written = pipeline(part.body, tap, writer);
      const failure = await Promise.race([written.then(() => undefined), writer.failed]);
      if (failure) {
        // The request drains into the writer, which drops it, until the answer's connection closes.
        written.catch(() => undefined);
        throw failure;
      }
      if (tap.bytes !== part.contentLength) {
        throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `The part ended after ${tap.bytes} of ${part.contentLength} bytes` });
      }
      await handle.sync();
      const received = tap.digest();
      if (received !== part.digest) {
        throw new FerryError('FERRY_ERR_CHECKSUM_MISMATCH', {
          message: 'The part does not match its signed content digest; it was discarded',
          details: { expected: part.digest, received, offset: part.offset },
        });
      }
      const next: SessionRecord = { ...record, offset: part.offset + tap.bytes, receiveMs: record.receiveMs + Math.round(performance.now() - started) };
      await this.#persist(next);
      record.offset = next.offset;
      record.receiveMs = next.receiveMs;
    } catch (err) {
      if (handle) await discard(handle, part.offset).catch((cause: unknown) => this.#options.logger.error({ err: cause, uploadId: record.id }, 'cannot cut the spool back'));
      throw diskError(err, 'The part could not be received');
    } finally {
      await handle?.close();
    }
  }

  /** Checks the finished file against the signed manifest; a mismatch deletes it, never loads it. */
  async #complete(record: SessionRecord): Promise<void> {
    const { manifest } = record;
    const { digest, bytes } = await digestFile(this.#spool(record.id));
    if (digest !== manifest.package.digest || bytes !== manifest.package.size) {
      const error = new FerryError('FERRY_ERR_CHECKSUM_MISMATCH', {
        details: { expected: manifest.package.digest, received: digest, deploymentId: manifest.deploymentId },
      });
      await this.#invalidate(record, 'checksum mismatch');
      this.#options.onRejected?.(manifest, error);
      throw error;
    }
    await this.#persist({ ...record, state: 'complete' });
    record.state = 'complete';
    this.#options.logger.info({ uploadId: record.id, deploymentId: manifest.deploymentId, bytes }, 'upload complete and verified');
  }

  async #handOver(record: SessionRecord, deploy: (pkg: VerifiedPackage) => Promise<DeploymentResult>): Promise<DeploymentResult> {
    if (record.state === 'receiving') await this.#complete(record);
    if (record.state === 'complete') {
      await this.#persist({ ...record, state: 'deployed' });
      record.state = 'deployed';
    }
    const spool = this.#spool(record.id);
    const handoff = join(this.#options.dir, `${record.id}.${randomBytes(4).toString('hex')}.deploy`);
    // Once a first deployment took the spool, a retry hands over no bytes: the deployer answers
    // it from its record of the deployment id.
    const linked = await link(spool, handoff).then(() => true, (err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw diskError(err, 'The upload could not be handed to the deployer');
    });
    const facts = { manifest: record.manifest, bytes: record.manifest.package.size, receiveMs: record.receiveMs, resumesInterrupted: this.#recovered.has(record.id) };
    const pkg: VerifiedPackage = linked ? new SpooledPackage({ ...facts, path: handoff }) : new SpentPackage(facts);
    try {
      const result = await deploy(pkg);
      await rm(spool, { force: true });
      return result;
    } catch (err) {
      if (!refusedForNow(err)) await rm(spool, { force: true });
      throw err;
    }
  }

  async #invalidate(record: SessionRecord, reason: string): Promise<void> {
    await rm(this.#spool(record.id), { force: true });
    record.state = 'invalidated';
    record.reason = reason;
    // The tombstone is what turns later requests into a 410; if it cannot be written (disk
    // full) the in-memory one still answers until a restart.
    await this.#persist(record).catch((err: unknown) => this.#options.logger.warn({ err, uploadId: record.id }, 'cannot persist the invalidated upload'));
    this.#options.logger.info({ uploadId: record.id, deploymentId: record.manifest.deploymentId, reason }, 'upload invalidated');
  }

  /** The session if it can be used; otherwise the typed reason why not. */
  #live(uploadId: string): SessionRecord {
    const record = ID.test(uploadId) ? this.#sessions.get(uploadId) : undefined;
    if (!record) throw new FerryError('FERRY_ERR_UPLOAD_NOT_FOUND', { details: { uploadId } });
    if (this.#expired(record)) throw new FerryError('FERRY_ERR_UPLOAD_EXPIRED', { details: { uploadId, expiresAt: record.expiresAt } });
    if (record.state === 'invalidated') throw new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { details: { uploadId, reason: record.reason } });
    return record;
  }

  #expired(record: SessionRecord): boolean {
    return Date.parse(record.expiresAt) <= this.#now();
  }

  #register(record: SessionRecord): void {
    this.#sessions.set(record.id, record);
    this.#byDeployment.set(record.manifest.deploymentId, record.id);
  }

  #forget(record: SessionRecord): void {
    this.#sessions.delete(record.id);
    this.#recovered.delete(record.id);
    if (this.#byDeployment.get(record.manifest.deploymentId) === record.id) this.#byDeployment.delete(record.manifest.deploymentId);
  }

  #spool(id: string): string {
    return join(this.#options.dir, `${id}.bin`);
  }

  /** Replaces the record atomically and durably (see writeRecordFile). */
  async #persist(record: SessionRecord): Promise<void> {
    await writeRecordFile(this.#options.dir, record.id, record);
  }

  async #removeFiles(id: string): Promise<void> {
    for (const name of [`${id}.json`, `${id}.json.tmp`, `${id}.bin`]) await rm(join(this.#options.dir, name), { force: true });
  }

  async #recover(): Promise<void> {
    const names = await readdir(this.#options.dir);
    const known = new Set<string>();
    for (const name of names) {
      const id = RECORD.exec(name)?.[1];
      if (id === undefined) continue;
      const record = await this.#load(id);
      if (!record) continue;
      known.add(id);
      this.#recovered.add(id);
    }
    // Leftovers: temporary records, hand-over links of a deployment cut short, orphaned spools.
    for (const name of names) {
      const id = name.slice(0, 32);
      const keep = RECORD.test(name) ? known.has(id) : name === `${id}.bin` && known.has(id);
      if (!keep) await rm(join(this.#options.dir, name), { force: true, recursive: true });
    }
    const count = this.#sessions.size;
    if (count > 0) this.#options.logger.info({ uploads: count }, 'uploads recovered');
  }

  async #load(id: string): Promise<SessionRecord | undefined> {
    let record: SessionRecord;
    try {
      record = JSON.parse(await readFile(join(this.#options.dir, `${id}.json`), 'utf8')) as SessionRecord;
      const parsed = parseManifest(record.manifest);
      if (record.version !== 1 || record.id !== id || !parsed.ok || !Number.isSafeInteger(record.offset)) throw new Error('not a session record');
      record.manifest = parsed.manifest;
    } catch (err) {
      this.#options.logger.warn({ err, uploadId: id }, 'unreadable upload record removed');
      return undefined;
    }
    if (this.#expired(record)) return undefined;
    const spool = this.#spool(id);
    if (record.state === 'receiving' || record.state === 'complete') {
      const size = await stat(spool).then((s) => s.size, () => -1);
      if (size < record.offset) {
        this.#register(record);
        await this.#invalidate(record, 'spool lost');
        return record;
      }
      if (size > record.offset) {
        // Bytes of a PATCH that was never acknowledged: the process died while writing them.
        const handle = await open(spool, 'r+');
        await discard(handle, record.offset).finally(() => handle.close());
        this.#options.logger.info({ uploadId: id, offset: record.offset, dropped: size - record.offset }, 'unacknowledged bytes dropped');
      }
    }
    this.#register(record);
    return record;
  }
}

/**
 * A refusal the deployer made before it journalled the deployment, which may not hold later: a
 * full disk (507), another deployment of the service in progress (409), any other 5xx of its own.
 * The deployment id is then still free (docs/protocol.md §6), and the same deploy call, sent again
 * once space is back or the other deployment is done, must find the package it was for. A recorded
 * outcome (`details.deployment`) or a refusal of the package itself is final: its bytes go.
 */
function refusedForNow(err: unknown): boolean {
  if (!isFerryError(err) || err.details?.deployment !== undefined) return false;
  return err.code === 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS' || err.status >= 500;
}

function view(record: SessionRecord): UploadView {
  return { uploadId: record.id, offset: record.offset, length: record.manifest.package.size, expiresAt: record.expiresAt, state: record.state };
}

async function discard(handle: FileHandle, offset: number): Promise<void> {
  await handle.truncate(offset);
  await handle.sync();
}


/** A full disk is the client's to wait out, not a bug: it gets its own code and 507. */
function diskError(err: unknown, message: string): FerryError {
  if (err instanceof FerryError) return err;
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE' || (err as Error | null)?.message === 'aborted') {
    return new FerryError('FERRY_ERR_BAD_REQUEST', { message: `${message}: the connection was cut`, cause: err });
  }
  return storageError(err, message);
}
