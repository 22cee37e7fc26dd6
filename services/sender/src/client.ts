import { randomUUID } from 'node:crypto';
import { signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { FerryError, PATHS, errorFromBody, type DeploymentResult, type DeploymentState, type StageTimings } from '@ferry/protocol';
import type { Credentials } from './upload.ts';
import { parseTarget } from './upload.ts';

const EMPTY_DIGEST = digestOf('');
const TIMEOUT_MS = 30_000;

/** A journal record as `GET /v1/deployments…` returns it (docs/protocol.md §11.2). */
export interface DeploymentRecord {
  deploymentId: string;
  host: string;
  service: string;
  image: string;
  imageId: string;
  kind: 'deploy' | 'rollback';
  state: DeploymentState;
  states: { state: DeploymentState; at: string }[];
  events?: { type: string; at: string }[];
  containerId?: string;
  previousContainerId?: string;
  timings?: StageTimings;
  error?: { code: string; message: string };
  createdAt: string;
  updatedAt?: string;
  finishedAt?: string;
}

/**
 * The receiver's read and rollback API, signed like every `/v1/` request: no body, so the content
 * digest is that of the empty body, and the audience is the host id the receiver names in
 * `GET /healthz` (asked once, on the first call).
 */
export class ReceiverClient {
  readonly #url: string;
  readonly #credentials: Credentials;
  readonly #base: string;
  readonly #basePath: string;
  #audience: string | undefined;

  constructor(url: string, credentials: Credentials) {
    const target = parseTarget(url);
    this.#url = url;
    this.#credentials = credentials;
    // parseTarget validates; the origin keeps IPv6 brackets and the port as fetch needs them.
    this.#base = `${new URL(url).origin}${target.basePath}`;
    this.#basePath = target.basePath;
  }

  /** @throws FerryError FERRY_ERR_NOT_FOUND when the receiver's journal has no such deployment. */
  async deployment(id: string): Promise<DeploymentRecord> {
    return await this.#call('GET', `${PATHS.deployments}/${encodeURIComponent(id)}`) as DeploymentRecord;
  }

  /** The newest deployments (and rollbacks) first, of one service or of all. */
  async deployments(options: { service?: string; limit?: number } = {}): Promise<DeploymentRecord[]> {
    const query = new URLSearchParams();
    if (options.service !== undefined) query.set('service', options.service);
    if (options.limit !== undefined) query.set('limit', String(options.limit));
    const search = query.size > 0 ? `?${query.toString()}` : '';
    return (await this.#call('GET', `${PATHS.deployments}${search}`) as { deployments: DeploymentRecord[] }).deployments;
  }

  /**
   * Swaps the service's kept previous container back in. The id makes the request idempotent on
   * the receiver: asking again under it answers the stored outcome instead of rolling forward.
   *
   * @throws FerryError FERRY_ERR_NOTHING_TO_ROLL_BACK, FERRY_ERR_DEPLOYMENT_IN_PROGRESS, FERRY_ERR_ROLLBACK_FAILED
   */
  async rollback(service: string, deploymentId: string = randomUUID()): Promise<DeploymentResult> {
    return await this.#call('POST', `${PATHS.services}/${encodeURIComponent(service)}/rollback?deploymentId=${deploymentId}`) as DeploymentResult;
  }

  async #call(method: 'GET' | 'POST', path: string): Promise<unknown> {
    const audience = this.#audience ?? (this.#audience = await this.#hostId());
    const signedPath = `${this.#basePath}${path}`;
    const headers = signRequest({ method, path: signedPath, contentDigest: EMPTY_DIGEST, audience, ...this.#credentials });
    const response = await this.#fetch(`${this.#base}${path}`, { method, headers, ...(method === 'POST' ? { body: '' } : {}) });
    const body: unknown = await response.json().catch(() => null);
    if (!response.ok) throw errorFromBody(response.status, body);
    return body;
  }

  async #hostId(): Promise<string> {
    const response = await this.#fetch(`${this.#base}${PATHS.healthz}`, {});
    const body = await response.json().catch(() => null) as { host?: unknown } | null;
    if (!response.ok) throw errorFromBody(response.status, body);
    if (typeof body?.host !== 'string') throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `${this.#url} does not answer like a Ferry receiver` });
    return body.host;
  }

  async #fetch(url: string, init: RequestInit): Promise<Response> {
    try {
      return await fetch(url, { ...init, signal: AbortSignal.timeout(TIMEOUT_MS) });
    } catch (err) {
      // undici wraps the socket error, and an AggregateError when every address of the host failed.
      const cause = (err as { cause?: { code?: string; message?: string; errors?: { code?: string }[] } }).cause;
      const reason = cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message ?? (err as Error).message;
      throw new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE', { message: `Cannot reach the receiver at ${this.#url}: ${reason}`, cause: err });
    }
  }
}
