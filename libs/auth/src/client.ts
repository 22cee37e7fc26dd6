import { digestOf } from '@ferry/integrity';
import { FerryError, PATHS, errorFromBody, type ErrorCode } from '@ferry/protocol';
import type { KeyObject } from 'node:crypto';
import { signRequest } from './canonical.ts';
import { checkIdentity, newChallenge } from './identity.ts';

const DEFAULT_TIMEOUT_MS = 30_000;

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
  credentials: ClientCredentials;
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
  /** Injected by unit tests; the global fetch otherwise. */
  fetch?: typeof fetch;
}

/**
 * A signed JSON client for any Ferry service (receiver, registry, sender service). Every `/v1/`
 * request carries the Ed25519 headers of docs/protocol.md, with the BLAKE3 of the exact body
 * bytes as content digest and, as audience, the id the service proves (a receiver's signed
 * identity) or names (`GET /healthz`), asked on the first call and kept.
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
    const audience = this.#audience ?? (this.#audience = await this.audience());
    const text = body === undefined ? '' : JSON.stringify(body);
    const headers: Record<string, string> = signRequest({
      method, path: `${this.#basePath}${path}`, contentDigest: digestOf(text), audience, ...this.#options.credentials,
    });
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await this.#send(`${this.#base}${path}`, { method, headers, ...(method === 'GET' ? {} : { body: text }) });
    const answer: unknown = await response.json().catch(() => null);
    if (!response.ok) throw errorFromBody(response.status, answer);
    return answer;
  }

  /** The service's id: the audience its signed requests must name. */
  async audience(): Promise<string> {
    if ((this.#options.learn ?? 'identity') === 'identity') {
      const challenge = newChallenge();
      const response = await this.#send(`${this.#base}${PATHS.identity}?challenge=${challenge}`, {});
      const answer = await response.json().catch(() => null) as { identity?: unknown } | null;
      if (!response.ok) throw errorFromBody(response.status, answer);
      return checkIdentity(answer?.identity, challenge, this.#options.hostKey).host;
    }
    const response = await this.#send(`${this.#base}${PATHS.healthz}`, {});
    const answer = await response.json().catch(() => null) as { host?: unknown } | null;
    if (!response.ok) throw errorFromBody(response.status, answer);
    if (typeof answer?.host !== 'string') {
      throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `${this.url} does not answer like a Ferry ${this.#options.peer}` });
    }
    return answer.host;
  }

  async #send(url: string, init: RequestInit): Promise<Response> {
    try {
      return await this.#fetch(url, { ...init, signal: AbortSignal.timeout(this.#options.timeoutMs ?? DEFAULT_TIMEOUT_MS) });
    } catch (err) {
      // undici wraps the socket error, and an AggregateError when every address of the host failed.
      const cause = (err as { cause?: { code?: string; message?: string; errors?: { code?: string }[] } }).cause;
      const reason = cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message ?? (err as Error).message;
      throw new FerryError(this.#options.unreachable, { message: `Cannot reach the ${this.#options.peer} at ${this.url}: ${reason}`, cause: err });
    }
  }
}
