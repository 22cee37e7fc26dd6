import type { KeyObject } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { digestOf } from '@ferry/integrity';
import { FerryError, PATHS, errorFromBody, type ErrorCode } from '@ferry/protocol';
import { signRequest } from './canonical.ts';
import { checkIdentity, newChallenge, type Identity } from './identity.ts';

const DEFAULT_TIMEOUT_MS = 30_000;
/** A server or proxy that ignores `Expect: 100-continue` never says 100; like curl, send anyway after this. */
const CONTINUE_WAIT_MS = 1000;

/** The key a client signs its requests with (FERRY_KEY_ID, FERRY_KEY_FILE, FERRY_GRANT_FILE). */
export interface ClientCredentials {
  keyId: string;
  privateKey: KeyObject;
  /** The key's grant, sent with every request as `X-Ferry-Grant` (base64url of the signed document). */
  grant?: string | undefined;
}

export interface SignedClientOptions {
  /** The service's base URL; a path prefix (behind a proxy) is kept and signed. */
  url: string;
  /** Without one, the client can only ask who the service is ({@link SignedClient.identity}). */
  credentials?: ClientCredentials | undefined;
  /** Names the peer in messages: "receiver", "registry", … */
  peer: string;
  /** The code thrown when the peer cannot be reached at all (its exit code is 3 in the CLI). */
  unreachable: ErrorCode;
  /** The audience, when the caller already knows it; otherwise the service is asked once. */
  audience?: string;
  /**
   * How the audience is learnt: `identity` (a receiver) asks `GET /v1/identity` with a fresh
   * challenge and checks the host key's signature (and `hostKey`, when given); `healthz` (the
   * registry, the sender service) reads the id `GET /healthz` names.
   */
  learn?: 'identity' | 'healthz';
  /** The host key fingerprint (`SHA256:…`) the service must prove, when known. */
  hostKey?: string;
  timeoutMs?: number;
  /**
   * Ends every request of this client once it aborts (an interrupted push): a request in flight is
   * cut off, a later one fails at once, and either rejects with the signal's reason, which no
   * retry takes for a lost connection.
   */
  signal?: AbortSignal | undefined;
  /** Injected by unit tests; the global fetch otherwise. */
  fetch?: typeof fetch;
}

/** A request {@link SignedClient.send} streams: its body is produced per call, never held whole. */
export interface SignedSendOptions {
  /** The signed content digest; default the BLAKE3 of an empty body. */
  digest?: string;
  /** Sent as `Upload-Offset` and signed (line 9 of the canonical string). */
  offset?: number;
  headers?: Record<string, string>;
  /** Called once per request, so a repeated request sends a fresh stream of the same bytes. */
  body?: () => Readable;
  bodyBytes?: number;
  /**
   * Ask with `Expect: 100-continue`: a refused request (bad key, stale clock, replay) costs one
   * round trip and no body bytes.
   */
  expectContinue?: boolean;
  /** The whole body was handed to the socket (not called when the peer answered first). */
  onSent?: () => void;
  /** This request's own signal instead of the client's: a clean-up that must still go out once the client's aborted. */
  signal?: AbortSignal;
}

/** Any HTTP answer to {@link SignedClient.send}, whatever its status; `body` is its JSON (or `{ text }`). */
export interface SignedAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: unknown;
}

/**
 * A signed client for any Ferry service (receiver, registry, sender service), and the one place a
 * request to one is signed. Every `/v1/` request carries the Ed25519 headers of
 * docs/protocol.md, with the BLAKE3 of the exact body bytes as content digest and, as audience,
 * the id the service proves (a receiver's signed identity, checked against `hostKey` when one is
 * expected) or names (`GET /healthz`), asked on the first call and kept. {@link request} sends
 * small JSON bodies; {@link send} streams a body of any size with backpressure.
 */
export class SignedClient {
  readonly url: string;
  readonly #options: SignedClientOptions;
  readonly #base: string;
  readonly #basePath: string;
  readonly #fetch: typeof fetch;
  #audience: string | undefined;

  constructor(options: SignedClientOptions) {
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch (err) {
      throw new FerryError('FERRY_ERR_CONFIG', { message: `${options.url}: not a URL for the ${options.peer} (expected http://HOST:PORT)`, cause: err });
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new FerryError('FERRY_ERR_CONFIG', { message: `${options.url}: the ${options.peer} URL must be http:// or https://` });
    }
    this.url = options.url;
    this.#options = options;
    this.#basePath = parsed.pathname.replace(/\/+$/, '');
    // The origin keeps IPv6 brackets and the port as fetch needs them.
    this.#base = `${parsed.origin}${this.#basePath}`;
    this.#fetch = options.fetch ?? fetch;
    this.#audience = options.audience;
  }

  /**
   * Sends one signed request; `body` (if any) is sent as JSON. Resolves with the parsed answer.
   *
   * @throws FerryError the peer's own error (by its code), `unreachable` when no answer came,
   *   FERRY_ERR_BAD_RESPONSE when the answer is not Ferry's.
   */
  async request(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<unknown> {
    const text = body === undefined ? '' : JSON.stringify(body);
    const headers = await this.#sign(method, path, digestOf(text));
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await this.#send(`${this.#base}${path}`, { method, headers, ...(method === 'GET' ? {} : { body: text }) });
    const answer: unknown = await response.json().catch(() => null);
    this.#options.signal?.throwIfAborted();
    if (!response.ok) throw errorFromBody(response.status, answer);
    return answer;
  }

  /** The service's id, learnt once (see {@link audience}) and kept for every later request. */
  async identify(): Promise<string> {
    this.#audience ??= await this.audience();
    return this.#audience;
  }

  /**
   * Sends one signed request over node:http, its body streamed with backpressure. A failed
   * connection or an answer cut short rejects with the `unreachable` code; any HTTP answer
   * resolves, whatever its status. An answer that arrives before the whole body (a refusal) ends
   * the sending at once, so the peer's answer is read rather than a reset provoked.
   */
  async send(method: string, path: string, options: SignedSendOptions = {}): Promise<SignedAnswer> {
    const signal = options.signal ?? this.#options.signal;
    try {
      return await this.#stream(method, path, options, signal);
    } catch (err) {
      throw signal?.aborted ? signal.reason : err;
    }
  }

  async #stream(method: string, path: string, options: SignedSendOptions, signal: AbortSignal | undefined): Promise<SignedAnswer> {
    signal?.throwIfAborted();
    const headers: Record<string, string> = {
      ...await this.#sign(method, path, options.digest ?? digestOf(''), options.offset),
      ...options.headers,
      'content-length': String(options.bodyBytes ?? 0),
    };
    if (options.offset !== undefined) headers['upload-offset'] = String(options.offset);
    if (options.expectContinue) headers.expect = '100-continue';
    const base = new URL(this.#base);
    const send = base.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send({
      host: base.hostname.replace(/^\[|\]$/g, ''), port: base.port || (base.protocol === 'https:' ? 443 : 80), path: `${this.#basePath}${path}`, method, headers,
      ...(signal ? { signal } : {}),
    });
    let answered = false;
    let bodySent = !options.body;
    const response = new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', (res) => { answered = true; resolve(res); });
      req.once('error', (err: NodeJS.ErrnoException) => {
        reject(new FerryError(this.#options.unreachable, { message: `The ${this.#options.peer} connection failed: ${err.code ?? err.message}`, cause: err }));
      });
    });
    // Handled here and awaited below: a connection refused before the body is not unhandled meanwhile.
    response.catch(() => undefined);
    const proceed = !options.expectContinue || await Promise.race([
      new Promise<boolean>((resolve) => req.once('continue', () => resolve(true))),
      response.then(() => false, () => false),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(true), CONTINUE_WAIT_MS).unref()),
    ]);
    let sending: Promise<void> = Promise.resolve();
    if (!proceed) req.destroy();
    else if (!options.body) req.end();
    else {
      const source = options.body();
      const body = async function* body(): AsyncGenerator<Buffer> {
        for await (const chunk of source as AsyncIterable<Buffer>) {
          if (answered) break;
          yield chunk;
        }
      };
      sending = pipeline(body, req).then(() => {
        if (answered) return;
        bodySent = true;
        options.onSent?.();
      }, () => undefined).finally(() => source.destroy());
    }
    const res = await response;
    await sending;
    const status = res.statusCode ?? 0;
    if (method === 'HEAD') {
      res.resume();
      return { status, headers: res.headers, body: null };
    }
    const body = await readJson(res).catch((err: unknown) => {
      // A refusal that came before the whole body, then a reset that cut its answer short, still
      // says what happened by its status (413 mid-body is the usual one).
      if (!bodySent && status >= 400) return undefined;
      throw new FerryError(this.#options.unreachable, { message: `The ${this.#options.peer} connection failed mid-answer`, cause: err });
    });
    return { status, headers: res.headers, body };
  }

  /** The service's id: the audience its signed requests must name. */
  async audience(): Promise<string> {
    if ((this.#options.learn ?? 'identity') === 'identity') return (await this.identity()).host;
    const response = await this.#send(`${this.#base}${PATHS.healthz}`, {});
    const answer = await response.json().catch(() => null) as { host?: unknown } | null;
    if (!response.ok) throw errorFromBody(response.status, answer);
    if (typeof answer?.host !== 'string') {
      throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `${this.url} does not answer like a Ferry ${this.#options.peer}` });
    }
    return answer.host;
  }

  /**
   * What the service proves about itself (`GET /v1/identity`, unsigned): its id, host key and
   * Ferry version, signed by that key over a fresh challenge and checked here (and against
   * `hostKey`, when one is expected). Its id becomes the audience if none was known.
   *
   * @throws FerryError FERRY_ERR_BAD_RESPONSE (no valid signed identity), FERRY_ERR_HOST_KEY_MISMATCH,
   *   the `unreachable` code, or the service's own error.
   */
  async identity(): Promise<Identity> {
    const challenge = newChallenge();
    const response = await this.#send(`${this.#base}${PATHS.identity}?challenge=${challenge}`, {});
    const answer = await response.json().catch(() => null) as { identity?: unknown } | null;
    if (!response.ok) throw errorFromBody(response.status, answer);
    const identity = checkIdentity(answer?.identity, challenge, this.#options.hostKey);
    this.#audience ??= identity.host;
    return identity;
  }

  /** The signed headers of one request: the only place Ferry signs a request to a service. */
  async #sign(method: string, path: string, contentDigest: string, offset?: number): Promise<Record<string, string>> {
    const { credentials } = this.#options;
    if (!credentials) throw new FerryError('FERRY_ERR_CONFIG', { message: `No key to sign requests to the ${this.#options.peer} with (FERRY_KEY_ID and FERRY_KEY_FILE)` });
    const audience = await this.identify();
    return signRequest({
      method, path: `${this.#basePath}${path}`, contentDigest, audience, ...credentials, ...(offset === undefined ? {} : { offset }),
    });
  }

  async #send(url: string, init: RequestInit): Promise<Response> {
    try {
      const timeout = AbortSignal.timeout(this.#options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      const stop = this.#options.signal;
      return await this.#fetch(url, { ...init, signal: stop ? AbortSignal.any([timeout, stop]) : timeout });
    } catch (err) {
      if (this.#options.signal?.aborted) throw this.#options.signal.reason;
      // undici wraps the socket error, and an AggregateError when every address of the host failed.
      const cause = (err as { cause?: { code?: string; message?: string; errors?: { code?: string }[] } }).cause;
      const reason = cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message ?? (err as Error).message;
      throw new FerryError(this.#options.unreachable, { message: `Cannot reach the ${this.#options.peer} at ${this.url}: ${reason}`, cause: err });
    }
  }
}

/**
 * The answer's body as JSON (or `{ text }`). A connection that fails mid-answer rejects, unless
 * a whole JSON document had already arrived.
 */
export async function readJson(res: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of res) chunks.push(chunk as Buffer);
  } catch (err) {
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    } catch {
      throw err;
    }
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return { text };
  }
}
