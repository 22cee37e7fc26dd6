import { randomBytes, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SignedClient, type ClientCredentials, type Identity } from '@ferry/auth';
import { DigestTap, digestOf } from '@ferry/integrity';
import {
  CapacitySchema, FerryError, PATHS, UPLOAD_PART_MEDIA_TYPE, errorFromBody, type CapacityReport,
  type DeploymentResult, type DeploymentFailure, type DeploymentState, type ErrorCode, type HealthCheckProgress, type ReleaseRef, type StageTimings,
} from '@ferry/protocol';

/** The key the sender signs with, and its grant. */
export type Credentials = ClientCredentials;

/** A receiver to talk to. */
export interface ReceiverTarget {
  /** The receiver's base URL, e.g. http://10.0.0.5:7701. */
  url: string;
  /** The key requests are signed with; without one, only the receiver's identity can be asked. */
  credentials?: Credentials | undefined;
  /** The receiver's host id, when already proven; otherwise its signed identity is asked once. */
  audience?: string | undefined;
  /**
   * The fingerprint (`SHA256:…`) of the host key the receiver must prove (from the registry's
   * enrollment, or `ferry push --host-key`): any other key is FERRY_ERR_HOST_KEY_MISMATCH.
   */
  hostKey?: string | undefined;
  /** Ends every request to this receiver (an interrupted push); see SignedClientOptions.signal. */
  signal?: AbortSignal | undefined;
}

/**
 * A receiver whose host id is known, for the upload protocols' clients. `client`, when given, is
 * the push's own client for that receiver, so every request of the push goes through it.
 */
export interface ResumableTarget {
  url: string;
  credentials: Credentials;
  audience: string;
  client?: ReceiverClient;
}

/** A signed request with a streamed body, and its answer (SignedClient.send of @ferry/auth). */
export type SignedRequestOptions = NonNullable<Parameters<SignedClient['send']>[2]>;
export type SignedAnswer = Awaited<ReturnType<SignedClient['send']>>;

/** What a one-shot or resumable upload ends with. */
export interface UploadOutcome {
  result: DeploymentResult;
  /** Package bytes sent over every request of the upload, resent ones included. */
  bodyBytes: number;
}

/** What one target said of the layers it holds; `present` counts the image's bottom layers it has (0 when it could not say). */
export interface TargetLayers {
  url: string;
  present: number;
  imageStore?: string;
  /** Why the target holds nothing as far as the push knows, when it did not answer. */
  unanswered?: string;
}

/** A journal record as `GET /v1/deployments…` returns it (docs/protocol.md §11.2). */
export interface DeploymentRecord {
  deploymentId: string;
  host: string;
  service: string;
  image: string;
  imageId: string;
  /** `remove`: the service's containers were taken off the host (`DELETE /v1/services/:name`). */
  kind: 'deploy' | 'rollback' | 'remove';
  state: DeploymentState;
  states: { state: DeploymentState; at: string }[];
  events?: { type: string; at: string }[];
  containerId?: string;
  previousContainerId?: string;
  timings?: StageTimings;
  error?: { code: string; message: string };
  /** Once the deployment failed: what it failed on, the container's last words, what runs now. */
  failure?: DeploymentFailure;
  /** While an `http` or `tcp` health check runs, and after: how far it got. */
  healthCheck?: HealthCheckProgress;
  /** The release the manifest filed it under (a deployment), or went back to (a rollback to a release). */
  release?: ReleaseRef;
  /** A rollback to a retained release: its id. */
  toRelease?: string;
  createdAt: string;
  updatedAt?: string;
  finishedAt?: string;
}

/** One service of a release a receiver retains (`GET /v1/releases`, docs/protocol.md §11.5). */
export interface RetainedService {
  service: string;
  image: string;
  imageId: string;
  configHash: string;
  /** The deployment that brought it to this host. */
  deploymentId: string;
  state: DeploymentState;
  /** When that deployment completed. */
  at: string;
  phase?: number;
  wave?: number;
}

/** A release a receiver retains: the services of it this host can go back to. */
export interface RetainedRelease {
  id: string;
  services: RetainedService[];
}

/** Where an upload stands, as the receiver last acknowledged it. */
export interface UploadPosition {
  uploadId: string;
  offset: number;
  length: number;
  expiresAt?: string;
}

/** A layer question costs one image list on the target; a receiver slower than this gets every layer. */
const LAYERS_TIMEOUT_MS = 15_000;

/**
 * One receiver, as the sender talks to it: its identity (asked once, `GET /v1/identity` over a
 * fresh challenge, checked against the expected host key), every request signed for the host id
 * it proved (through @ferry/auth's SignedClient, the one place requests are signed), and the
 * requests of each protocol — layer inventory, one-shot upload, resumable upload (through
 * {@link resumable}), streamed upload (stream.ts, through {@link send}), the journal and rollback.
 */
export class ReceiverClient {
  readonly url: string;
  readonly #credentials: Credentials | undefined;
  readonly #signed: SignedClient;

  constructor(target: ReceiverTarget) {
    // Validated with the CLI's wording (--to URL) before the signed client parses it again.
    parseTarget(target.url);
    this.url = target.url;
    this.#credentials = target.credentials;
    this.#signed = new SignedClient({
      url: target.url, credentials: target.credentials, peer: 'receiver', unreachable: 'FERRY_ERR_RECEIVER_UNREACHABLE', learn: 'identity',
      ...(target.audience ? { audience: target.audience } : {}), ...(target.hostKey ? { hostKey: target.hostKey } : {}),
      ...(target.signal ? { signal: target.signal } : {}),
    });
  }

  /**
   * The receiver's host id, proven by its host key over a fresh challenge, asked before minutes
   * go into packaging for a host that is not there (or is not the one expected).
   *
   * @throws FerryError FERRY_ERR_RECEIVER_UNREACHABLE, FERRY_ERR_BAD_RESPONSE (not a Ferry
   *   receiver), FERRY_ERR_HOST_KEY_MISMATCH (another key than the one expected).
   */
  identify(): Promise<string> {
    return this.#asReceiver(() => this.#signed.identify());
  }

  /**
   * What the receiver proves about itself, asked afresh: its host id, host key and Ferry version,
   * signed by its host key over a new challenge (no key of ours is needed).
   *
   * @throws FerryError as {@link identify}.
   */
  identity(): Promise<Identity> {
    return this.#asReceiver(() => this.#signed.identity());
  }

  /** The key this client signs with (for the upload protocols' clients it hands the receiver to). */
  get credentials(): Credentials {
    if (!this.#credentials) throw new FerryError('FERRY_ERR_CONFIG', { message: `No key to sign requests to ${this.url} with (FERRY_KEY_ID and FERRY_KEY_FILE)` });
    return this.#credentials;
  }

  /** A 404 to the identity is a server that is not a Ferry receiver, not a missing thing. */
  async #asReceiver<T>(ask: () => Promise<T>): Promise<T> {
    try {
      return await ask();
    } catch (err) {
      if (err instanceof FerryError && err.status === 404) {
        throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `${this.url} does not answer like a Ferry receiver (no signed identity)`, cause: err });
      }
      throw err;
    }
  }

  /** One signed request with a streamed body; any HTTP answer resolves (see SignedClient.send). */
  send(method: string, path: string, options: SignedRequestOptions = {}): Promise<SignedAnswer> {
    return this.#signed.send(method, path, options);
  }

  /**
   * `POST /v1/layers` (docs/protocol.md §8): how many of the image's bottom layers the target
   * holds. Never throws: a receiver that does not know the route, refuses or does not answer is
   * sent every layer, and the upload that follows reports any real problem.
   */
  async layers(diffIds: readonly string[]): Promise<TargetLayers> {
    const body = Buffer.from(JSON.stringify({ diffIds }), 'utf8');
    try {
      const answer = await Promise.race([
        this.send('POST', PATHS.layers, { digest: digestOf(body), headers: { 'content-type': 'application/json' }, body: () => Readable.from([body]), bodyBytes: body.length }),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${LAYERS_TIMEOUT_MS} ms`)), LAYERS_TIMEOUT_MS).unref()),
      ]);
      if (answer.status !== 200) return { url: this.url, present: 0, unanswered: `HTTP ${answer.status}` };
      const json = answer.body as { imageStore?: unknown; present?: unknown } | null;
      const present = Array.isArray(json?.present) ? json.present : undefined;
      // Only a bottom part of the asked list makes sense; anything else is not trusted.
      if (present === undefined || present.length > diffIds.length || present.some((id, i) => id !== diffIds[i])) {
        return { url: this.url, present: 0, unanswered: 'the answer does not describe the asked layers' };
      }
      return { url: this.url, present: present.length, ...(typeof json?.imageStore === 'string' ? { imageStore: json.imageStore } : {}) };
    } catch (err) {
      return { url: this.url, present: 0, unanswered: (err as Error).message };
    }
  }

  /**
   * The one-shot upload (docs/protocol.md §5): one multipart request whose signed content digest
   * is the manifest's, which in turn carries the package's, sent with `Expect: 100-continue`.
   */
  async sendPackage(options: OneShotOptions): Promise<UploadOutcome> {
    const boundary = `ferry-${randomBytes(12).toString('hex')}`;
    const head = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="manifest"\r\nContent-Type: application/json\r\n\r\n`
      + `${options.manifestJson}\r\n`
      + `--${boundary}\r\nContent-Disposition: form-data; name="package"; filename="package"\r\nContent-Type: application/octet-stream\r\n\r\n`,
      'utf8',
    );
    const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'utf8');
    const bodyBytes = head.length + options.packageSize + tail.length;
    const body = (): Readable => Readable.from((async function* body(): AsyncGenerator<Buffer> {
      yield head;
      let sent = 0;
      for await (const chunk of createReadStream(options.packagePath) as AsyncIterable<Buffer>) {
        sent += chunk.length;
        options.onProgress?.(sent);
        yield chunk;
      }
      yield tail;
    })());
    const answer = await this.send('POST', PATHS.packages, {
      digest: digestOf(Buffer.from(options.manifestJson, 'utf8')), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` },
      body, bodyBytes, expectContinue: true, ...(options.onSent ? { onSent: options.onSent } : {}),
    });
    if (answer.status !== 200) throw answerError(answer.status, answer.body);
    if (answer.body === undefined) throw new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE', { message: 'The receiver connection failed mid-answer' });
    return { result: answer.body as DeploymentResult, bodyBytes };
  }

  /** The resumable upload's requests (docs/protocol.md §10) to this receiver. */
  resumable(): ResumableClient {
    return new ResumableClient(this);
  }

  /** @throws FerryError FERRY_ERR_NOT_FOUND when the receiver's journal has no such deployment. */
  async deployment(id: string): Promise<DeploymentRecord> {
    return await this.#request('GET', `${PATHS.deployments}/${encodeURIComponent(id)}`) as DeploymentRecord;
  }

  /** The newest deployments (and rollbacks) first, of one service or of all. */
  async deployments(options: { service?: string; limit?: number } = {}): Promise<DeploymentRecord[]> {
    const query = new URLSearchParams();
    if (options.service !== undefined) query.set('service', options.service);
    if (options.limit !== undefined) query.set('limit', String(options.limit));
    const search = query.size > 0 ? `?${query.toString()}` : '';
    return (await this.#request('GET', `${PATHS.deployments}${search}`) as { deployments: DeploymentRecord[] }).deployments;
  }

  /** The releases this receiver retains, newest first (docs/protocol.md §11.5). */
  async releases(): Promise<RetainedRelease[]> {
    return (await this.#request('GET', PATHS.releases) as { releases: RetainedRelease[] }).releases;
  }

  /**
   * What the receiver's host has, its budget and what Ferry's containers commit there
   * (`GET /v1/capacity`, docs/protocol.md §11.6); undefined from a receiver older than the route (404).
   */
  async capacity(): Promise<CapacityReport | undefined> {
    let body: unknown;
    try {
      body = await this.#request('GET', PATHS.capacity);
    } catch (err) {
      if (err instanceof FerryError && err.status === 404) return undefined;
      throw err;
    }
    const parsed = CapacitySchema.safeParse(body);
    if (!parsed.success) throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `${this.url} answered GET ${PATHS.capacity} with something else than a capacity report` });
    return parsed.data;
  }

  /**
   * Swaps the service's kept previous container back in, or with `toRelease` runs a release this
   * receiver retains of it again (docs/protocol.md §11.3). The deployment id makes the request
   * idempotent on the receiver: asking again under it answers the stored outcome instead of
   * rolling forward; it must not be reused for another `toRelease`.
   *
   * @throws FerryError FERRY_ERR_NOTHING_TO_ROLL_BACK, FERRY_ERR_RELEASE_NOT_RETAINED,
   *   FERRY_ERR_DEPLOYMENT_IN_PROGRESS, FERRY_ERR_ROLLBACK_FAILED, and a release's failed check.
   */
  async rollback(service: string, options: { deploymentId?: string; toRelease?: string } = {}): Promise<DeploymentResult> {
    const query = new URLSearchParams({ deploymentId: options.deploymentId ?? randomUUID() });
    if (options.toRelease !== undefined) query.set('toRelease', options.toRelease);
    return await this.#request('POST', `${PATHS.services}/${encodeURIComponent(service)}/rollback?${query.toString()}`) as DeploymentResult;
  }

  /**
   * Takes the service off the receiver: its running container stops, it and every container kept
   * of it are removed (docs/protocol.md §11.3). With `release`, only if what runs is that release's.
   * The deployment id makes the request idempotent, as a rollback's does; a service already gone
   * answers `ROLLED_BACK` too.
   *
   * @throws FerryError FERRY_ERR_RELEASE_MISMATCH (nothing removed), FERRY_ERR_DEPLOYMENT_IN_PROGRESS.
   */
  async remove(service: string, options: { deploymentId?: string; release?: string } = {}): Promise<DeploymentResult> {
    const query = new URLSearchParams({ deploymentId: options.deploymentId ?? randomUUID() });
    if (options.release !== undefined) query.set('release', options.release);
    return await this.#request('DELETE', `${PATHS.services}/${encodeURIComponent(service)}?${query.toString()}`) as DeploymentResult;
  }

  /**
   * Ends the canary of the service in progress on the receiver by hand: `promote` moves all its
   * traffic to the new container, `abort` back to the one before (docs/protocol.md, "Canaries").
   *
   * @throws FerryError FERRY_ERR_NO_CANARY when none of the service runs there.
   */
  async canary(service: string, command: 'promote' | 'abort'): Promise<void> {
    await this.#request('POST', `${PATHS.services}/${encodeURIComponent(service)}/canary/${command}`);
  }

  async #request(method: 'GET' | 'POST' | 'DELETE', path: string): Promise<unknown> {
    await this.identify();
    return this.#signed.request(method, path);
  }
}

export interface OneShotOptions {
  manifestJson: string;
  packagePath: string;
  packageSize: number;
  /** Package bytes handed to the socket so far. */
  onProgress?: (sent: number) => void;
  /** The last package byte has been handed to the socket. */
  onSent?: () => void;
}

export interface UploadOptions extends OneShotOptions {
  url: string;
  credentials: Credentials;
  /** The receiver's host id from its signed identity; the signature is valid on that host only. */
  audience: string;
}

/** A one-shot upload to a receiver whose host id is known (see {@link ReceiverClient.sendPackage}). */
export function uploadOneShot(options: UploadOptions): Promise<UploadOutcome> {
  return new ReceiverClient(options).sendPackage(options);
}

/** The layer question to a receiver whose host id is known (see {@link ReceiverClient.layers}). */
export function askLayers(target: ResumableTarget, diffIds: readonly string[]): Promise<TargetLayers> {
  return clientFor(target).layers(diffIds);
}

/**
 * The resumable upload protocol (docs/protocol.md §10), one call per request, over one receiver's
 * client: every request is signed for its host id, and a PATCH also signs its `Upload-Offset`.
 */
export class ResumableClient {
  readonly #client: ReceiverClient;

  constructor(target: ResumableTarget | ReceiverClient) {
    this.#client = target instanceof ReceiverClient ? target : clientFor(target);
  }

  /** `POST /v1/uploads`: opens a session, or finds the live one for this manifest's deployment id. */
  async create(manifestJson: string): Promise<UploadPosition & { created: boolean }> {
    const body = Buffer.from(manifestJson, 'utf8');
    const answer = await this.#client.send('POST', PATHS.uploads, { digest: digestOf(body), headers: { 'content-type': 'application/json' }, body: () => Readable.from([body]), bodyBytes: body.length });
    if (answer.status !== 201 && answer.status !== 200) throw errorFromBody(answer.status, answer.body);
    const json = answer.body as Partial<UploadPosition> | null;
    if (typeof json?.uploadId !== 'string' || typeof json.offset !== 'number' || typeof json.length !== 'number') {
      throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The receiver did not describe the upload it created' });
    }
    return { uploadId: json.uploadId, offset: json.offset, length: json.length, expiresAt: json.expiresAt, created: answer.status === 201 };
  }

  /** `HEAD /v1/uploads/<id>`: the durable offset. */
  async head(uploadId: string): Promise<UploadPosition> {
    const answer = await this.#client.send('HEAD', `${PATHS.uploads}/${uploadId}`);
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
    const answer = await this.#client.send('PATCH', `${PATHS.uploads}/${uploadId}`, { ...part, offset, headers: { 'content-type': UPLOAD_PART_MEDIA_TYPE } });
    if (answer.status !== 204) throw errorFromBody(answer.status, answer.body).withDetails(offsetDetails(answer.headers));
    return { uploadId, ...offsets(answer.headers) };
  }

  /** `POST /v1/uploads/<id>/deploy`: the deployment's outcome, like a one-shot upload's answer. */
  async deploy(uploadId: string): Promise<DeploymentResult> {
    const answer = await this.#client.send('POST', `${PATHS.uploads}/${uploadId}/deploy`);
    if (answer.status !== 200) throw errorFromBody(answer.status, answer.body);
    return answer.body as DeploymentResult;
  }
}

/**
 * One signed request to a receiver whose host id is known (the streamed upload's requests): through
 * the push's own client for it when the target carries one.
 */
export function sendSigned(target: ResumableTarget, method: string, path: string, options: SignedRequestOptions): Promise<SignedAnswer> {
  return clientFor(target).send(method, path, options);
}

function clientFor(target: ResumableTarget): ReceiverClient {
  return target.client ?? new ReceiverClient({ url: target.url, credentials: target.credentials, audience: target.audience });
}

export function parseTarget(url: string): { protocol: string; hostname: string; port: number; basePath: string } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `--to ${url}: not a receiver URL (expected http://HOST:PORT)`, cause: err });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new FerryError('FERRY_ERR_USAGE', { message: `--to ${url}: only http:// and https:// receivers exist` });
  return {
    protocol: parsed.protocol,
    hostname: parsed.hostname.replace(/^\[|\]$/g, ''),
    port: parsed.port ? Number(parsed.port) : parsed.protocol === 'https:' ? 443 : 80,
    basePath: parsed.pathname.replace(/\/+$/, ''),
  };
}

/**
 * A refusal whose body was cut short (the connection reset after the status line) still says
 * what happened by its status; 413 is the one a one-shot upload meets mid-body.
 */
function answerError(status: number, payload: unknown): FerryError {
  const error = errorFromBody(status, payload);
  if (error.code !== 'FERRY_ERR_BAD_RESPONSE') return error;
  if (status === 413) return new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: 'The receiver refused the package as too large (HTTP 413; its answer was cut short)', status });
  return error;
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
