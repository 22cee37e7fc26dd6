import { createHmac, hkdfSync, type KeyObject } from 'node:crypto';
import type { ReleaseOutcome, ReleaseRecord, ReleaseState, ServiceSpec } from '@ferry/protocol';
import { SignedClient, type ClientCredentials } from './client.ts';
import { publicKeyText } from './keys.ts';

/** What a receiver tells the registry about itself (`POST /v1/hosts`). */
export interface HostRegistration {
  id: string;
  /** The receiver's URL, as the sender dials it. */
  url: string;
  labels: Record<string, string>;
  capabilities: string[];
  /** The receiver's version. */
  version: string;
  engine: { version: string; storageDriver: string; imageStore: 'legacy' | 'containerd' };
}

/** A registered host, as the registry answers it. Times are ISO 8601. */
export interface HostRecord extends HostRegistration {
  /** The fingerprint (`SHA256:…`) of the host key it enrolled: what a sender pins when it dials `url`. */
  hostKey?: string;
  status: 'online' | 'lost';
  registeredAt: string;
  lastSeenAt: string;
}

export interface Registered {
  host: HostRecord;
  heartbeatSeconds: number;
  ttlSeconds: number;
}

/** What runs for one service on a host, read from its container and the container's `ferry.*` labels. */
export interface ActualReport {
  service: string;
  containerId?: string;
  imageId?: string;
  image?: string;
  configHash?: string;
  deploymentId?: string;
  /** `running`, `exited`, `missing` (no container), or any other Docker state. */
  state: string;
  /**
   * How often the container's restart policy restarted it since it was started (Docker's
   * RestartCount); absent when not known. A crash loop shows here, not in `state`.
   */
  restarts?: number;
}

/**
 * What the sender deployed (`PUT /v1/desired/:host/:service`). `service.env` is given with its
 * values; {@link RegistryClient.putDesired} sends a keyed digest of each instead (see
 * {@link envDigests}): the registry never holds a value.
 */
export interface DesiredRecord {
  deploymentId: string;
  image: string;
  imageId: string;
  configHash: string;
  service: ServiceSpec;
  targetUrl: string;
}

/** What `POST /v1/join-tokens` answers: the token is shown this once; the registry keeps its hash. */
export interface JoinToken {
  token: string;
  host: string;
  expiresAt: string;
}

export interface DriftReason {
  /** `imageId`, `configHash`, `state`, `restarts` or `missing`. */
  field: string;
  desired: unknown;
  actual: unknown;
}

/** The registry's reconcile request to the drifted host for one drift episode (correct mode only). */
export interface DriftCorrection {
  /** Names this request in the registry's log. */
  requestId: string;
  requestedAt: string;
  /** `accepted` when the host answered 200 (its service runs), `failed` otherwise. */
  outcome: 'pending' | 'accepted' | 'failed';
  /** The host's answer on success: `{ service, action: "started" | "none", containerId, deploymentId }`. */
  response?: unknown;
  /** Why not, e.g. FERRY_ERR_NOT_RECONCILABLE: the drift then stays until someone deploys. */
  error?: { code: string; message: string };
}

export interface ServiceState {
  host: string;
  service: string;
  desired: (Partial<DesiredRecord> & Record<string, unknown>) | null;
  actual: (Partial<ActualReport> & Record<string, unknown>) | null;
  drift: { reasons: DriftReason[]; since: string; mode: string; correction?: DriftCorrection } | null;
  lastDeployment: Record<string, unknown> | null;
}

/** A release as the registry projects it (`GET /v1/releases/:id`): the record plus where it stands now. */
export interface ProjectedRelease extends ReleaseRecord {
  /** The time of the newest event applied to it. */
  updatedAt: string;
  /** Set while the release waits before a wave (release.paused), cleared when it goes on. */
  paused?: { wave: number; reason: string; until?: string; since: string };
  /** Phases (of a wave) and waves completed, in the order they completed. */
  completed: { phases: Array<{ phase: number; name: string; wave?: number }>; waves: Array<{ wave: number; name: string }> };
  /** The key whose signed release.started made the plan (absent until one came). */
  startedBy?: string;
}

/** What `GET /v1/releases` lists of each release: small, whatever the release's size. */
export interface ReleaseSummary {
  id: string;
  project: string;
  state: ReleaseState;
  createdAt: string;
  updatedAt: string;
  finishedAt?: string;
  services: string[];
  hosts: string[];
  /** Outcome cells (host × service) by outcome. */
  outcomes: Partial<Record<ReleaseOutcome, number>>;
  error?: { code: string; message: string };
  rolledBackTo?: string;
}

/** A page of `GET /v1/releases`; `next` is the `before` of the following page, absent on the last. */
export interface ReleasePage {
  releases: ReleaseSummary[];
  next?: string;
}

/**
 * The registry's signed API (docs/registry.md), for the receiver (register, heartbeat) and the
 * sender and CLI (hosts, desired state, drift). Errors are the registry's FerryErrors; an
 * unreachable registry is FERRY_ERR_REGISTRY_UNREACHABLE.
 */
export class RegistryClient {
  readonly #client: SignedClient;
  readonly #credentials: ClientCredentials;

  constructor(url: string, credentials: ClientCredentials, options: { fetch?: typeof fetch; timeoutMs?: number } = {}) {
    this.#credentials = credentials;
    this.#client = new SignedClient({ url, credentials, peer: 'registry', unreachable: 'FERRY_ERR_REGISTRY_UNREACHABLE', learn: 'healthz', ...options });
  }

  get url(): string {
    return this.#client.url;
  }

  /** Signed by the host's own enrolled key (`host.<id>`). */
  async register(host: HostRegistration): Promise<Registered> {
    return await this.#client.request('POST', '/v1/hosts', host) as Registered;
  }

  /**
   * A receiver's first registration: presents its host key (this client's key, whose id must be
   * `host.<id>`) with a join token, and proves it holds the key by signing the request with it.
   *
   * @throws FerryError FERRY_ERR_JOIN_TOKEN_INVALID, FERRY_ERR_HOST_ENROLLED, FERRY_ERR_LABELS_PINNED.
   */
  async enroll(token: string, host: HostRegistration): Promise<Registered> {
    return await this.#client.request('POST', '/v1/enroll', { token, publicKey: publicKeyText(this.#credentials.privateKey), registration: host }) as Registered;
  }

  /**
   * A one-time join token for `host` (an admin key): `labels` fixes the labels the host must
   * register with, `replace` lets it enroll another key in place of the one it has.
   */
  async joinToken(request: { host: string; labels?: Record<string, string>; ttlSeconds?: number; replace?: boolean }): Promise<JoinToken> {
    return await this.#client.request('POST', '/v1/join-tokens', request) as JoinToken;
  }

  /** @throws FerryError FERRY_ERR_HOST_UNKNOWN when the registry does not know the host (or marked it lost): register again. */
  async heartbeat(hostId: string, services?: ActualReport[]): Promise<void> {
    await this.#client.request('POST', `/v1/hosts/${encodeURIComponent(hostId)}/heartbeat`, services ? { services } : {});
  }

  async hosts(query: { selector?: string; status?: 'online' | 'lost' } = {}): Promise<HostRecord[]> {
    return (await this.#client.request('GET', `/v1/hosts${search(query)}`) as { hosts: HostRecord[] }).hosts;
  }

  /** Records a deployment; the env values stay here, the registry gets their digests (see {@link envDigests}). */
  async putDesired(host: string, service: string, desired: DesiredRecord): Promise<void> {
    const recorded = { ...desired, service: { ...desired.service, env: envDigests(desired.service.env, this.#credentials.privateKey) } };
    await this.#client.request('PUT', `/v1/desired/${encodeURIComponent(host)}/${encodeURIComponent(service)}`, recorded);
  }

  async services(query: { host?: string; service?: string } = {}): Promise<ServiceState[]> {
    return (await this.#client.request('GET', `/v1/services${search(query)}`) as { services: ServiceState[] }).services;
  }

  /** `GET /v1/releases`: newest first, `limit` of them below the release id `before`. */
  async releases(query: { limit?: number; before?: string; project?: string } = {}): Promise<ReleasePage> {
    const { limit, ...rest } = query;
    return await this.#client.request('GET', `/v1/releases${search({ ...rest, limit: limit === undefined ? undefined : String(limit) })}`) as ReleasePage;
  }

  /** `GET /v1/releases/:id`; FERRY_ERR_NOT_FOUND for a release the registry does not know. */
  async release(id: string): Promise<ProjectedRelease> {
    return (await this.#client.request('GET', `/v1/releases/${encodeURIComponent(id)}`) as { release: ProjectedRelease }).release;
  }

  async drift(): Promise<ServiceState[]> {
    return (await this.#client.request('GET', '/v1/drift') as { drift: ServiceState[] }).drift;
  }
}

/**
 * Each env value as `hmac-sha256:<hex>`, keyed by a key derived (HKDF-SHA256) from the signing
 * key's private bytes: two records made with the same key show whether a value changed, and no
 * one without that key can test a guess against a digest (the registry and its store hold none).
 */
export function envDigests(env: Readonly<Record<string, string>>, privateKey: KeyObject): Record<string, string> {
  const secret = privateKey.export({ format: 'der', type: 'pkcs8' });
  const key = Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'ferry env digest v1', 32));
  const digests: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    digests[name] = `hmac-sha256:${createHmac('sha256', key).update(name).update('\0').update(value).digest('hex')}`;
  }
  return digests;
}

function search(query: Record<string, string | undefined>): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) if (value !== undefined) params.set(key, value);
  return params.size > 0 ? `?${params.toString()}` : '';
}
