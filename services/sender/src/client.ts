import { randomUUID } from 'node:crypto';
import { SignedClient } from '@ferry/auth';
import { PATHS, type DeploymentResult, type DeploymentState, type StageTimings } from '@ferry/protocol';
import type { Credentials } from './upload.ts';
import { parseTarget } from './upload.ts';

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
 * `GET /healthz` (asked once, on the first call) — the shared SignedClient of @ferry/auth.
 */
export class ReceiverClient {
  readonly #client: SignedClient;

  constructor(url: string, credentials: Credentials) {
    // parseTarget validates with the CLI's wording (--to URL) before the client parses it again.
    parseTarget(url);
    this.#client = new SignedClient({ url, credentials, peer: 'receiver', unreachable: 'FERRY_ERR_RECEIVER_UNREACHABLE' });
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
    return this.#client.request(method, path);
  }
}
