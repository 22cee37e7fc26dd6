import { createReadStream } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { signRequest } from '@ferry/auth';
import { DigestTap, digestOf } from '@ferry/integrity';
import { FerryError, PATHS, UPLOAD_PART_MEDIA_TYPE, errorFromBody, isFerryError, type DeploymentResult, type ErrorCode } from '@ferry/protocol';
import { parseTarget, readJson, type Credentials, type UploadOutcome } from './upload.ts';

/** Parts are fsynced one by one; this size keeps a lost part cheap and the fsyncs few. */
export const DEFAULT_PART_BYTES = 32 * 1024 ** 2;

/** Failures in a row, without any acknowledged progress between them, before a push gives up. */
const DEFAULT_ATTEMPTS = 6;

export interface ResumableTarget {
  /** The receiver's base URL, e.g. http://10.0.0.5:7701. */
  url: string;
  credentials: Credentials;
  /** The receiver's host id from its signed identity; the signature is valid on that host only. */
  audience: string;
}

/** Where an upload stands, as the receiver last acknowledged it. */
export interface UploadPosition {
  uploadId: string;
  offset: number;
  length: number;
  expiresAt?: string;
}

/**
 * The resumable upload protocol (docs/protocol.md §10), one call per request. Every request is
 * signed for the receiver's host id, and a PATCH also signs the `Upload-Offset` it carries.
 */
export class ResumableClient {
  readonly #target: ResumableTarget;

  constructor(target: ResumableTarget) {
    this.#target = target;
    // A malformed URL is a usage error now, not at the first request.
    parseTarget(target.url);
  }

  /** `POST /v1/uploads`: opens a session, or finds the live one for this manifest's deployment id. */
  async create(manifestJson: string): Promise<UploadPosition & { created: boolean }> {
    const body = Buffer.from(manifestJson, 'utf8');
    const answer = await this.#send('POST', PATHS.uploads, { digest: digestOf(body), headers: { 'content-type': 'application/json' }, body: () => Readable.from([body]), bodyBytes: body.length });
    if (answer.status !== 201 && answer.status !== 200) throw errorFromBody(answer.status, answer.body);
    const json = answer.body as Partial<UploadPosition> | null;
    if (typeof json?.uploadId !== 'string' || typeof json.offset !== 'number' || typeof json.length !== 'number') {
      throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The receiver did not describe the upload it created' });
    }
    return { uploadId: json.uploadId, offset: json.offset, length: json.length, expiresAt: json.expiresAt, created: answer.status === 201 };
  }

  /** `HEAD /v1/uploads/<id>`: the durable offset. */
  async head(uploadId: string): Promise<UploadPosition> {
    const answer = await this.#send('HEAD', `${PATHS.uploads}/${uploadId}`, {});
    if (answer.status !== 200 && answer.status !== 204) throw new FerryError(headCode(answer.status), { status: answer.status, details: { uploadId } });
    return { uploadId, ...offsets(answer.headers) };
  }

  /**
   * `PATCH /v1/uploads/<id>`: sends `length` bytes of `path` from `offset`. The part is read
   * twice — once to sign its digest, once to send it — so memory stays flat whatever its size.
   */
  async patchFile(uploadId: string, path: string, offset: number, length: number, onSent?: (bytes: number) => void): Promise<UploadPosition> {
    const digest = length === 0 ? digestOf('') : await digestRange(path, offset, length);
    const body = (): Readable => {
      const stream = length === 0 ? Readable.from([]) : createReadStream(path, { start: offset, end: offset + length - 1 });
      let sent = 0;
      return stream.on('data', (chunk: Buffer) => { sent += chunk.length; onSent?.(sent); });
    };
    return this.patch(uploadId, offset, { digest, body, bodyBytes: length });
  }

  /** A PATCH with a body of the caller's choosing; `digest` is what gets signed for it. */
  async patch(uploadId: string, offset: number, part: { digest: string; body: () => Readable; bodyBytes: number }): Promise<UploadPosition> {
    const answer = await this.#send('PATCH', `${PATHS.uploads}/${uploadId}`, {
      ...part, offset, headers: { 'content-type': UPLOAD_PART_MEDIA_TYPE },
    });
    if (answer.status !== 204) throw errorFromBody(answer.status, answer.body).withDetails(offsetDetails(answer.headers));
    return { uploadId, ...offsets(answer.headers) };
  }

  /** `POST /v1/uploads/<id>/deploy`: the deployment's outcome, like a one-shot upload's answer. */
  async deploy(uploadId: string): Promise<DeploymentResult> {
    const answer = await this.#send('POST', `${PATHS.uploads}/${uploadId}/deploy`, {});
    if (answer.status !== 200) throw errorFromBody(answer.status, answer.body);
    return answer.body as DeploymentResult;
  }

  #send(method: string, path: string, options: SignedRequestOptions): Promise<SignedAnswer> {
    return sendSigned(this.#target, method, path, options);
  }
}

export interface SignedRequestOptions {
  /** The signed content digest; default the BLAKE3 of an empty body. */
  digest?: string;
  /** Sent as `Upload-Offset` and signed (line 9 of the canonical string). */
  offset?: number;
  headers?: Record<string, string>;
  /** Called once per attempt, so a retry sends a fresh stream of the same bytes. */
  body?: () => Readable;
  bodyBytes?: number;
}

export interface SignedAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: unknown;
}

/**
 * One request to a receiver, signed for its host id (docs/protocol.md §3); shared by the
 * resumable and the streamed upload. A failed connection or a cut answer rejects with
 * FERRY_ERR_RECEIVER_UNREACHABLE; any HTTP answer resolves, whatever its status.
 */
export async function sendSigned(target: ResumableTarget, method: string, path: string, options: SignedRequestOptions): Promise<SignedAnswer> {
  const base = parseTarget(target.url);
  const fullPath = `${base.basePath}${path}`;
  const headers: Record<string, string> = {
    ...signRequest({
      method, path: fullPath, contentDigest: options.digest ?? digestOf(''), audience: target.audience,
      ...(options.offset === undefined ? {} : { offset: options.offset }), ...target.credentials,
    }),
    ...options.headers,
    'content-length': String(options.bodyBytes ?? 0),
  };
  if (options.offset !== undefined) headers['upload-offset'] = String(options.offset);
  const send = base.protocol === 'https:' ? httpsRequest : httpRequest;
  const req = send({ host: base.hostname, port: base.port, path: fullPath, method, headers });
  const response = new Promise<IncomingMessage>((resolve, reject) => {
    req.once('response', resolve);
    req.once('error', (err: NodeJS.ErrnoException) => {
      reject(new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE', { message: `The receiver connection failed: ${err.code ?? err.message}`, cause: err }));
    });
  });
  // If the receiver answers early (409, 413…) it stops reading; its answer is what matters.
  const sending = options.body ? pipeline(options.body(), req).catch(() => undefined) : Promise.resolve(req.end());
  const res = await response;
  await sending;
  const body = method === 'HEAD' ? null : await readJson(res).catch((err: unknown) => {
    throw new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE', { message: 'The receiver connection failed mid-answer', cause: err });
  });
  if (method === 'HEAD') res.resume();
  return { status: res.statusCode ?? 0, headers: res.headers, body };
}

export interface ResumableOptions extends ResumableTarget {
  manifestJson: string;
  packagePath: string;
  packageSize: number;
  partBytes?: number;
  /** Failures in a row without progress before giving up. */
  attempts?: number;
  /** Pause before the first retry; it doubles with each failure in a row. */
  retryDelayMs?: number;
  /** Package bytes acknowledged or handed to the socket so far. */
  onProgress?: (sent: number) => void;
  /** Every package byte is acknowledged by the receiver. */
  onSent?: () => void;
  /** The session is open and the receiver holds `offset` bytes of it (more than 0 = a resume). */
  onSession?: (offset: number) => void;
}

/** Answers after which asking the receiver where the upload stands, and going on, makes sense. */
const RETRYABLE: readonly ErrorCode[] = [
  'FERRY_ERR_RECEIVER_UNREACHABLE', 'FERRY_ERR_OFFSET_MISMATCH', 'FERRY_ERR_UPLOAD_BUSY',
  'FERRY_ERR_CHECKSUM_MISMATCH', 'FERRY_ERR_DISK_FULL', 'FERRY_ERR_INTERNAL', 'FERRY_ERR_BAD_RESPONSE',
  // A restarted receiver refuses what was signed before it started; every retry is signed anew.
  'FERRY_ERR_REPLAY',
];

/**
 * A push over the resumable protocol: create the session, send parts from the acknowledged
 * offset, and after any failure ask the receiver (HEAD) where to go on from, until every byte is
 * acknowledged; then deploy, retrying a lost answer (the receiver answers a retry from its
 * record of the deployment id). Gives up after `attempts` failures in a row without progress.
 */
export async function uploadResumable(options: ResumableOptions): Promise<UploadOutcome & { uploadId: string; retries: number }> {
  const client = new ResumableClient(options);
  const partBytes = options.partBytes ?? DEFAULT_PART_BYTES;
  const attempts = options.attempts ?? DEFAULT_ATTEMPTS;
  const retryDelay = options.retryDelayMs ?? 500;
  let failures = 0;
  let retries = 0;
  let bodyBytes = 0;
  const retrying = async (err: unknown): Promise<void> => {
    failures += 1;
    retries += 1;
    if (!isFerryError(err) || !RETRYABLE.includes(err.code) || failures >= attempts) throw err;
    await delay(retryDelay * 2 ** (failures - 1));
  };

  let session: UploadPosition | undefined;
  while (!session) session = await client.create(options.manifestJson).catch(async (err: unknown) => { await retrying(err); return undefined; });
  const { uploadId } = session;
  let offset = session.offset;
  options.onSession?.(offset);
  while (offset < options.packageSize) {
    const length = Math.min(partBytes, options.packageSize - offset);
    const from = offset;
    try {
      offset = (await client.patchFile(uploadId, options.packagePath, from, length, (sent) => options.onProgress?.(from + sent))).offset;
      bodyBytes += length;
      failures = 0;
    } catch (err) {
      bodyBytes += length;
      // The whole-file check refused the package: the upload is gone, and a retry cannot help.
      if (isFerryError(err, 'FERRY_ERR_CHECKSUM_MISMATCH') && from + length === options.packageSize && err.details?.offset === undefined) throw err;
      await retrying(err);
      const position = await client.head(uploadId).catch(async (headErr: unknown) => { await retrying(headErr); return undefined; });
      if (position) offset = position.offset;
    }
    options.onProgress?.(offset);
  }
  options.onSent?.();
  failures = 0;
  for (;;) {
    try {
      return { result: await client.deploy(uploadId), bodyBytes, uploadId, retries };
    } catch (err) {
      // Only a lost answer is worth asking again; a deployment's own failure is the outcome.
      if (!isFerryError(err, 'FERRY_ERR_RECEIVER_UNREACHABLE')) throw err;
      await retrying(err);
    }
  }
}

async function digestRange(path: string, offset: number, length: number): Promise<string> {
  const tap = new DigestTap();
  tap.resume();
  await pipeline(createReadStream(path, { start: offset, end: offset + length - 1 }), tap);
  return tap.digest();
}

function offsets(headers: IncomingHttpHeaders): { offset: number; length: number } {
  const offset = Number(headers['upload-offset']);
  const length = Number(headers['upload-length']);
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) {
    throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The receiver did not say where the upload stands (Upload-Offset, Upload-Length)' });
  }
  return { offset, length };
}

function offsetDetails(headers: IncomingHttpHeaders): Record<string, unknown> {
  const offset = headers['upload-offset'];
  return typeof offset === 'string' ? { uploadOffset: Number(offset) } : {};
}

/** A HEAD answer has no body, so its status alone names the error. */
function headCode(status: number): ErrorCode {
  if (status === 404) return 'FERRY_ERR_UPLOAD_NOT_FOUND';
  if (status === 410) return 'FERRY_ERR_UPLOAD_EXPIRED';
  if (status === 401) return 'FERRY_ERR_BAD_SIGNATURE';
  return 'FERRY_ERR_BAD_RESPONSE';
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
