import { Readable, Writable } from 'node:stream';
import { LayerStoreUnreadable } from '@ferry/docker';
import { IncrementalDigest, digestOf, type Digest } from '@ferry/integrity';
import {
  FerryError, PATHS, STREAM_MAX_PART_BYTES, STREAM_PART_BYTES, UPLOAD_PART_MEDIA_TYPE, errorFromBody, isErrorCode, isFerryError,
  type DeploymentResult, type ErrorCode, type PackageSeal,
} from '@ferry/protocol';
import { sendSigned, type ResumableTarget } from './receiver-client.ts';
import { DEFAULT_BACKOFF, isRetryable, retry, systemClock, type BackoffPolicy, type Clock } from './retry.ts';

export type StreamTarget = ResumableTarget;

/**
 * The stream cannot carry this push, and the packaged path can: the receiver does not offer
 * streams (`unavailable`: 404 or FERRY_ERR_STREAM_UNAVAILABLE at create), or the stream went away
 * under it (`vanished`: 404/410 on a part — receiver restarted, stream aborted or expired).
 */
export class StreamUnavailable extends Error {
  override readonly name = 'StreamUnavailable';
  readonly reason: 'unavailable' | 'vanished';

  constructor(reason: 'unavailable' | 'vanished', cause: FerryError) {
    super(reason === 'unavailable' ? `The receiver does not take streams: ${cause.message}` : `The stream went away: ${cause.message}`, { cause });
    this.reason = reason;
  }
}

/** How long the DELETE of an abandoned stream may take: past that the receiver drops it when it idles out. */
const ABORT_WAIT_MS = 5000;

/**
 * The streamed upload protocol (docs/protocol.md §10.6), one call per request, each signed for
 * the receiver's host id like the resumable ones; a PATCH also signs its `Upload-Offset`.
 */
export class StreamClient {
  readonly #target: StreamTarget;

  constructor(target: StreamTarget) {
    this.#target = target;
  }

  /**
   * `POST /v1/streams` with the deferred manifest (no package size or digest): the stream's id.
   * A receiver without streams (404, FERRY_ERR_STREAM_UNAVAILABLE) throws {@link StreamUnavailable}.
   */
  async create(manifestJson: string): Promise<string> {
    return (await this.open(manifestJson)).streamId;
  }

  /**
   * {@link create} with the offset: a receiver that already holds a live stream of this very
   * manifest (an earlier open whose answer was lost) answers it again, 200 with where it stands.
   */
  async open(manifestJson: string): Promise<{ streamId: string; offset: number }> {
    const body = Buffer.from(manifestJson, 'utf8');
    const answer = await sendSigned(this.#target, 'POST', PATHS.streams, {
      digest: digestOf(body), headers: { 'content-type': 'application/json' }, body: () => Readable.from([body]), bodyBytes: body.length,
    });
    if (answer.status !== 201 && answer.status !== 200) {
      const error = errorFromBody(answer.status, answer.body);
      // An older receiver does not know the route: its 404 says nothing typed about streams.
      if (answer.status === 404 || error.code === 'FERRY_ERR_STREAM_UNAVAILABLE') throw new StreamUnavailable('unavailable', error);
      throw error;
    }
    const { streamId, offset } = (answer.body ?? {}) as { streamId?: unknown; offset?: unknown };
    if (typeof streamId !== 'string' || !/^[0-9a-f]{32}$/.test(streamId)) throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The receiver did not name the stream it opened' });
    return { streamId, offset: typeof offset === 'number' && Number.isSafeInteger(offset) && offset >= 0 ? offset : 0 };
  }

  /** `HEAD /v1/streams/<id>`: the offset the receiver holds durably (404/410 as typed errors). */
  async head(streamId: string): Promise<number> {
    const answer = await sendSigned(this.#target, 'HEAD', `${PATHS.streams}/${streamId}`, {});
    if (answer.status !== 204 && answer.status !== 200) {
      const code: ErrorCode = answer.status === 404 ? 'FERRY_ERR_UPLOAD_NOT_FOUND' : answer.status === 410 ? 'FERRY_ERR_UPLOAD_INVALIDATED' : answer.status >= 500 ? 'FERRY_ERR_RECEIVER_UNREACHABLE' : 'FERRY_ERR_BAD_RESPONSE';
      throw new FerryError(code, { status: answer.status, message: `HEAD of the stream answered ${answer.status}`, details: { streamId } });
    }
    const offset = Number(answer.headers['upload-offset']);
    if (typeof answer.headers['upload-offset'] !== 'string' || !Number.isSafeInteger(offset) || offset < 0) {
      throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The receiver did not say where the stream stands (Upload-Offset)' });
    }
    return offset;
  }

  /**
   * `PATCH /v1/streams/<id>`: one part at `offset`, signed with its own BLAKE3; the receiver's new
   * offset. A refusal is a FerryError whose details carry the receiver's `uploadOffset` if it said one.
   */
  async patch(streamId: string, offset: number, part: Part): Promise<number> {
    const answer = await sendSigned(this.#target, 'PATCH', `${PATHS.streams}/${streamId}`, {
      digest: part.digest ?? partDigest(part), offset, headers: { 'content-type': UPLOAD_PART_MEDIA_TYPE }, body: () => Readable.from(part.chunks), bodyBytes: part.bytes,
    });
    const said = Number(answer.headers['upload-offset']);
    const uploadOffset = typeof answer.headers['upload-offset'] === 'string' && Number.isSafeInteger(said) ? said : undefined;
    if (answer.status !== 204) throw errorFromBody(answer.status, answer.body).withDetails({ streamId, ...(uploadOffset === undefined ? {} : { uploadOffset }) });
    if (uploadOffset === undefined) throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The receiver did not say where the stream stands (Upload-Offset)' });
    return uploadOffset;
  }

  /** `POST /v1/streams/<id>/deploy` with the seal: the deployment's outcome, as for a resumable upload. */
  async deploy(streamId: string, seal: PackageSeal): Promise<DeploymentResult> {
    const body = Buffer.from(JSON.stringify(seal), 'utf8');
    const answer = await sendSigned(this.#target, 'POST', `${PATHS.streams}/${streamId}/deploy`, {
      digest: digestOf(body), headers: { 'content-type': 'application/json' }, body: () => Readable.from([body]), bodyBytes: body.length,
    });
    if (answer.status !== 200) throw errorFromBody(answer.status, answer.body);
    return answer.body as DeploymentResult;
  }

  /** `DELETE /v1/streams/<id>`: whether the stream is known to be gone (aborted now, or already). */
  async abort(streamId: string): Promise<boolean> {
    // Its own deadline, not the push's signal: after an interrupted push this still frees the stream.
    const answer = await sendSigned(this.#target, 'DELETE', `${PATHS.streams}/${streamId}`, { signal: AbortSignal.timeout(ABORT_WAIT_MS) });
    return answer.status === 204 || answer.status === 404 || answer.status === 410;
  }
}

export interface StreamOptions extends StreamTarget {
  /** The deferred manifest: its `package` has no size and digest; the seal brings them. */
  manifestJson: string;
  /** Default STREAM_PART_BYTES; at most STREAM_MAX_PART_BYTES. */
  partBytes?: number;
  /** Failures in a row before giving up (default: the retry policy's attempts). */
  attempts?: number;
  /** Pause ceiling before the first retry; it doubles with each failure in a row (default: the retry policy's). */
  retryDelayMs?: number;
  /** The retry policy for lost connections, 5xx and a receiver restarting (default DEFAULT_BACKOFF). */
  backoff?: BackoffPolicy;
  clock?: Clock;
  /** The stream is open: the package starts now. */
  onOpened?: () => void;
  /** Package bytes the receiver acknowledged so far. */
  onProgress?: (acknowledged: number) => void;
  /** Every part is acknowledged; the seal goes out now. */
  onSent?: () => void;
}

export interface StreamOutcome<T> {
  result: DeploymentResult;
  /** What `produce` returned: the package's facts. */
  produced: T;
  streamId: string;
  /** Bytes of every PATCH body sent, resent parts included. */
  bodyBytes: number;
  /** Part requests sent again after a failure. */
  retries: number;
  /** Milliseconds from the first PATCH until the seal went out (0 when no part went). */
  sendMs: number;
  /** Milliseconds from the start until the last part was acknowledged. */
  packageMs: number;
}

/** Answers after which sending the same part again can help, besides those {@link isRetryable} names. */
const RESEND: readonly ErrorCode[] = ['FERRY_ERR_UPLOAD_BUSY'];

/**
 * One push as a streamed upload: open the stream, let `produce` write the package into the part
 * cutter it is given (docker save → … → BLAKE3 → here), PATCH each part as it fills, then send
 * the seal — the size and BLAKE3 `produce` reports — and return the deployment's outcome.
 *
 * The receiver keeps every part it acknowledged on disk, and a stream outlives its restart
 * (docs/protocol.md §10.6). So whatever call a lost connection, a 5xx or a restart cuts short,
 * this waits for the receiver with the retry policy, asks where the stream stands (`HEAD`), and
 * goes on from there: the part in flight is sent from the receiver's offset on (it is still in
 * memory: a part is dropped only once acknowledged), nothing acknowledged is sent again, and a
 * repeated seal gets the deployment's outcome. Only a stream the receiver lost (404/410) goes to
 * the packaged fallback ({@link StreamUnavailable}). A failure after the stream opened and before
 * the seal sends `DELETE` (best effort), so the receiver loads nothing; {@link idFree} then says
 * whether the deployment id may be used again.
 */
export class StreamUpload {
  readonly #client: StreamClient;
  readonly #options: StreamOptions;
  readonly #partBytes: number;
  readonly #policy: BackoffPolicy;
  readonly #clock: Clock;
  #streamId: string | undefined;
  /** The receiver may hold a stream (or, after the seal, a journal record) under this deployment id. */
  #idHeld = false;
  #vanished: FerryError | undefined;
  #bodyBytes = 0;
  #retries = 0;
  #firstPatch: number | undefined;

  constructor(options: StreamOptions) {
    this.#client = new StreamClient(options);
    this.#options = options;
    this.#partBytes = options.partBytes ?? STREAM_PART_BYTES;
    if (!Number.isSafeInteger(this.#partBytes) || this.#partBytes < 1 || this.#partBytes > STREAM_MAX_PART_BYTES) {
      throw new FerryError('FERRY_ERR_USAGE', { message: `A stream part is 1 to ${STREAM_MAX_PART_BYTES} bytes, not ${this.#partBytes}` });
    }
    const base = options.backoff ?? DEFAULT_BACKOFF;
    this.#policy = { ...base, attempts: options.attempts ?? base.attempts, baseMs: options.retryDelayMs ?? base.baseMs };
    this.#clock = options.clock ?? systemClock;
  }

  /**
   * Whether the deployment id is free for another attempt after a failure: false when the seal
   * went out (the receiver may have journalled the id) or the stream may still be live.
   */
  get idFree(): boolean {
    return !this.#idHeld;
  }

  async run<T extends { size: number; digest: Digest }>(produce: (destination: PartCutter) => Promise<T>): Promise<StreamOutcome<T>> {
    const started = performance.now();
    // A lost answer may have opened the stream: the receiver answers the same manifest again.
    this.#idHeld = true;
    let streamId: string;
    try {
      streamId = await this.#retrying((failure) => failure !== undefined && isRetryable(failure), () => this.#client.create(this.#options.manifestJson));
    } catch (err) {
      if (err instanceof StreamUnavailable || (isFerryError(err) && !isRetryable(err))) this.#idHeld = false;
      throw err;
    }
    this.#streamId = streamId;
    this.#options.onOpened?.();
    const cutter = new PartCutter(this.#partBytes, (part, offset) => this.#sendPart(streamId, part, offset));
    let produced: T;
    try {
      produced = await produce(cutter);
      if (cutter.acknowledged !== produced.size) {
        throw new FerryError('FERRY_ERR_INTERNAL', { message: `The stream carried ${cutter.acknowledged} bytes of a ${produced.size}-byte package` });
      }
    } catch (err) {
      await this.#abandon();
      // A layer store that went wrong midway sent bytes the receiver may have refused already,
      // so the stream is gone too; the cause is the store: stream again from docker save.
      if (this.#vanished && !(err instanceof LayerStoreUnreadable)) throw new StreamUnavailable('vanished', this.#vanished);
      throw err;
    }
    const packageMs = Math.round(performance.now() - started);
    const sendMs = this.#firstPatch === undefined ? 0 : Math.round(performance.now() - this.#firstPatch);
    this.#options.onSent?.();
    const result = await this.#deploy(streamId, { size: produced.size, digest: produced.digest });
    return { result, produced, streamId, bodyBytes: this.#bodyBytes, retries: this.#retries, sendMs, packageMs };
  }

  /** Best effort: a stream the receiver still holds is aborted, so it loads nothing and frees the id. */
  async #abandon(): Promise<void> {
    if (this.#streamId === undefined || !this.#idHeld) return;
    if (await this.#client.abort(this.#streamId).catch(() => false)) this.#idHeld = false;
  }

  /**
   * Runs `attempt` until it succeeds; after a failure `again` says whether to try once more, after
   * the policy's pause (retry.ts: failures in a row are counted; `attempts` of them end it).
   */
  #retrying<R>(again: (failure: unknown) => boolean, attempt: () => Promise<R>): Promise<R> {
    return retry(attempt, { policy: this.#policy, clock: this.#clock, shouldRetry: again, onRetry: () => { this.#retries += 1; } });
  }

  /**
   * Sends one part until the receiver holds it. After a failure that sending again can cure (a
   * lost answer, a 5xx, a restart) the receiver is asked where the stream stands, after the
   * policy's pause, and only the bytes of the part it lacks go; a part digest refused once is
   * sent again once; a stream gone (404/410) is reported for the packaged fallback.
   */
  async #sendPart(streamId: string, part: Part, offset: number): Promise<void> {
    const end = offset + part.bytes;
    let at = offset;
    let ask = false;
    let digestRefusals = 0;
    this.#firstPatch ??= performance.now();
    const again = (err: unknown): boolean => !(isFerryError(err, 'FERRY_ERR_CHECKSUM_MISMATCH') && digestRefusals > 1) && this.#resendable(err);
    await this.#retrying(again, async () => {
      if (ask) at = this.#held(await this.#client.head(streamId), offset, end);
      ask = false;
      if (at === end) return;
      const rest = at === offset ? part : slice(part, at - offset);
      this.#bodyBytes += rest.bytes;
      let now: number;
      try {
        now = await this.#client.patch(streamId, at, rest);
      } catch (err) {
        const said = isFerryError(err) ? err.details?.uploadOffset : undefined;
        if (isFerryError(err, 'FERRY_ERR_OFFSET_MISMATCH') && typeof said === 'number') {
          // A lost attempt was taken after all, in whole or in part.
          at = this.#held(said, offset, end);
          if (at === end) return;
        } else if (isFerryError(err, 'FERRY_ERR_CHECKSUM_MISMATCH')) {
          digestRefusals += 1;
        } else {
          ask = true;
        }
        throw err;
      }
      if (now !== end) throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `The receiver took the part at ${at} and says it stands at ${now}, not ${end}`, status: 400 });
      at = end;
    });
    this.#options.onProgress?.(end);
  }

  /** Whether sending the part again may help; a refusal that ends the stream never does. */
  #resendable(err: unknown): boolean {
    if (!isFerryError(err)) return false;
    const refusal = endedBy(err);
    if (refusal) throw refusal;
    // Gone: the DELETE that follows costs one request, and frees the stream should only the
    // answer have been wrong (a proxy, a misrouted request).
    if (err.status === 404 || err.status === 410) {
      this.#vanished = err;
      throw err;
    }
    return isRetryable(err) || RESEND.includes(err.code) || err.code === 'FERRY_ERR_OFFSET_MISMATCH' || err.code === 'FERRY_ERR_CHECKSUM_MISMATCH';
  }

  /**
   * The receiver's offset while the part [offset, end) is in flight. Anything before the part was
   * acknowledged and must still be there: a receiver that lost it makes the stream vanish (the
   * package then goes again from its start, the packaged way).
   */
  #held(said: number, offset: number, end: number): number {
    if (said < offset) {
      throw new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', { message: `The receiver holds ${said} bytes of the stream; ${offset} were acknowledged`, details: { uploadOffset: said } });
    }
    if (said > end) throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `The receiver says the stream stands at ${said}, past the part in flight (${end})`, status: 400 });
    return said;
  }

  /**
   * The seal, sent again after a lost answer, a 5xx or a restart: the receiver answers a repeat
   * from its journal (or runs again a deployment its stop cut short), and one still running is
   * asked again after a pause. A stream the receiver no longer knows (404/410) goes to the
   * packaged fallback, under a new id (the id stays held here), as the receiver may have begun a
   * record of it.
   */
  async #deploy(streamId: string, seal: PackageSeal): Promise<DeploymentResult> {
    return this.#retrying((err) => isRetryable(err) || isFerryError(err, 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS'), async () => {
      try {
        return await this.#client.deploy(streamId, seal);
      } catch (err) {
        const refusal = isFerryError(err) ? endedBy(err) : undefined;
        if (refusal) throw refusal;
        if (isFerryError(err) && (err.code === 'FERRY_ERR_UPLOAD_NOT_FOUND' || err.code === 'FERRY_ERR_UPLOAD_INVALIDATED' || err.code === 'FERRY_ERR_UPLOAD_EXPIRED')) {
          throw new StreamUnavailable('vanished', err);
        }
        throw err;
      }
    });
  }
}

/** The bytes of `part` from `from` on, without a copy. */
function slice(part: Part, from: number): Part {
  const chunks: Buffer[] = [];
  let skip = from;
  for (const chunk of part.chunks) {
    if (skip >= chunk.length) {
      skip -= chunk.length;
      continue;
    }
    chunks.push(chunk.subarray(skip));
    skip = 0;
  }
  return { chunks, bytes: part.bytes - from };
}

/**
 * Cuts the package into parts of exactly `partBytes` (the last one shorter) and hands each to
 * `send`, one at a time and in order. Up to `ahead` full parts wait behind the one in flight, so
 * docker save keeps producing while a part travels and the next is ready the moment the receiver
 * answers; past that, this stream takes no more bytes, so backpressure reaches docker save and
 * memory stays at `ahead + 2` parts whatever the image's size.
 */
export class PartCutter extends Writable {
  readonly #partBytes: number;
  readonly #ahead: number;
  readonly #send: (part: Part, offset: number) => Promise<void>;
  /**
   * Part buffers, reused once their part was acknowledged (its request body is then written):
   * the pipeline's chunks are copied out at once and die young, so memory does not grow with
   * chunks kept alive across a part's round trip until a full garbage collection.
   */
  readonly #free: Buffer[] = [];
  #part: Buffer | undefined;
  #fill = 0;
  #offset = 0;
  /** The last part handed on; each part's sending starts once the one before it was acknowledged. */
  #tail: Promise<void> = Promise.resolve();
  /** Parts cut and not yet acknowledged, the one in flight included. */
  #pending: Promise<void>[] = [];
  #acknowledged = 0;

  constructor(partBytes: number, send: (part: Part, offset: number) => Promise<void>, ahead = 2) {
    super();
    this.#partBytes = partBytes;
    this.#ahead = ahead;
    this.#send = send;
  }

  /** Bytes of parts whose sending finished. */
  get acknowledged(): number {
    return this.#acknowledged;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#take(chunk).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    (async () => {
      if (this.#fill > 0) this.#cut();
      await this.#tail;
    })().then(() => callback(), callback);
  }

  async #take(chunk: Buffer): Promise<void> {
    let at = 0;
    while (at < chunk.length) {
      this.#part ??= this.#free.pop() ?? Buffer.allocUnsafe(this.#partBytes);
      const take = Math.min(this.#partBytes - this.#fill, chunk.length - at);
      chunk.copy(this.#part, this.#fill, at, at + take);
      this.#fill += take;
      at += take;
      if (this.#fill === this.#partBytes) {
        this.#cut();
        // The one in flight plus `ahead` waiting: take nothing more until the oldest is acknowledged.
        while (this.#pending.length > this.#ahead) await this.#pending[0];
      }
    }
  }

  /**
   * Queues a part cut elsewhere, as if its bytes had been written: a broadcast cuts and hashes each
   * part once for every target that sends it. `done` runs once the part was sent or given up (its
   * buffer is free again then), also when this throws. Resolves when the queue has room again.
   */
  async takePart(part: Part, done: () => void): Promise<void> {
    if (this.destroyed || this.#fill > 0 || part.bytes > this.#partBytes) {
      done();
      throw new FerryError('FERRY_ERR_INTERNAL', { message: this.destroyed ? 'The stream ended' : 'A part cut elsewhere must start and end at a part boundary' });
    }
    this.#queue(part).then(done, done);
    while (this.#pending.length > this.#ahead) await this.#pending[0];
  }

  #cut(): void {
    const buffer = this.#part ?? Buffer.alloc(0);
    const part: Part = { chunks: [buffer.subarray(0, this.#fill)], bytes: this.#fill };
    this.#part = undefined;
    this.#fill = 0;
    this.#queue(part).then(() => { if (buffer.length === this.#partBytes) this.#free.push(buffer); }, () => undefined);
  }

  /** Sends `part` after the parts before it; settles once it was acknowledged or failed. */
  #queue(part: Part): Promise<void> {
    const offset = this.#offset;
    this.#offset += part.bytes;
    const sending = this.#tail.then(() => this.#send(part, offset)).then(() => {
      this.#acknowledged += part.bytes;
      void this.#pending.shift();
    });
    // A failure ends the pipeline at once, not only at the next write, which may be far off.
    sending.catch((err: unknown) => this.destroy(err as Error));
    this.#pending.push(sending);
    this.#tail = sending;
    return sending;
  }
}

/** A part's bytes, as one or more buffers. */
export interface Part {
  chunks: readonly Buffer[];
  bytes: number;
  /** Its BLAKE3, when whoever cut it computed it once for every target that sends it. */
  digest?: Digest;
}

function partDigest(part: Part): Digest {
  const hash = new IncrementalDigest();
  for (const chunk of part.chunks) hash.update(chunk);
  return hash.digest();
}

/**
 * A stream the receiver ended because of what it carried (a refused archive, layers missing, a
 * failed load) answers later requests 410 with that error's code as `details.reason`: that error
 * is the outcome, not a stream gone for the packaged path to replace.
 */
function endedBy(err: FerryError): FerryError | undefined {
  const reason = err.details?.reason;
  if (err.code !== 'FERRY_ERR_UPLOAD_INVALIDATED' || !isErrorCode(reason) || reason === 'FERRY_ERR_UPLOAD_EXPIRED') return undefined;
  return new FerryError(reason, { message: err.message, details: err.details });
}
