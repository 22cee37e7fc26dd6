import { randomUUID, type KeyObject } from 'node:crypto';
import type { HostFacts, Scope } from '@ferry/auth';
import { createEvent, type EventSink, type FerryEvent } from '@ferry/events';
import type { Logger } from '@ferry/log';
import { FerryError, matchesSelector, type Selector } from '@ferry/protocol';
import { driftReasons, sameReasons, type DriftIgnoreRule } from './drift.ts';
import { Enrollments, type Enrollment, type IssuedToken, type TokenRequest } from './enrollment.ts';
import { applyEvent, emptyProjection, HOST_SERVICE, record, serviceKey, type ProjectionData } from './projection.ts';
import { DEFAULT_QUALITY_WINDOW, serviceQuality, type ServiceQuality } from './quality.ts';
import { listReleases, releaseSummary, type ProjectedRelease, type ReleaseSummary } from './releases.ts';
import { DURABLE_KINDS, PROJECTION_KINDS, type RegistryStore, type StoreData } from './store.ts';
import type {
  Actual, ActualReport, DeploymentSummary, Desired, Drift, DriftCorrection, DriftMode, HistoryEntry, HostRecord, HostStatus,
  RegistryChange, RegistrySnapshot, RegistryView, ServiceState,
} from './view.ts';

/** What `POST /v1/hosts` carries (validated by the route). */
export type HostRegistration = Pick<HostRecord, 'id' | 'url' | 'labels' | 'capabilities' | 'version' | 'engine'>;

/** What `PUT /v1/desired/:host/:service` carries (validated by the route). */
export type DesiredInput = Omit<Desired, 'recordedAt' | 'recordedBy'>;

/** Where a drift correction goes: the drifted host as its own enrolled record names it. */
export interface CorrectionTarget {
  host: string;
  /** The URL the host registered, signed with its own key: never one from a desired record. */
  url: string;
  /** The fingerprint of its enrolled key, which the host must prove before it is asked anything. */
  hostKey: string;
}

/**
 * Asks the drifted host to start again what it was last deployed with (`POST
 * /v1/services/:service/reconcile`); resolves with its answer.
 */
export type Corrector = (target: CorrectionTarget, service: string, requestId: string) => Promise<unknown>;

/** Hosts the registry takes when FERRY_MAX_HOSTS does not say. */
export const DEFAULT_MAX_HOSTS = 10_000;
/** Desired records per host, on average, the registry takes at most (times FERRY_MAX_HOSTS). */
const DESIRED_PER_HOST = 64;
/** What a desired record's env holds for each variable: a keyed digest of the value, never the value. */
export const ENV_DIGEST_PATTERN = /^hmac-sha256:[0-9a-f]{64}$/;

export interface RegistryOptions {
  store: RegistryStore;
  events: EventSink;
  logger: Logger;
  /** The registry's id: the `source` of its events. */
  registryId: string;
  ttlSeconds: number;
  driftMode: DriftMode;
  driftIgnore: readonly DriftIgnoreRule[];
  /** Required in `correct` mode. */
  corrector?: Corrector;
  /** Registered (and enrolled) hosts it takes at most; default {@link DEFAULT_MAX_HOSTS}. */
  maxHosts?: number;
  /**
   * Whether the trust file revokes an enrolled host key (TrustStore.isRevoked): such a key signs
   * no event the registry believes, and its host is asked nothing.
   */
  isRevoked?: (scope: Scope) => boolean;
  now?: () => number;
}

/**
 * The registry's state and rules, in memory, written through to the store. HTTP routes, the TTL
 * timer, heartbeats and the event projection all act through here; the dashboard reads it as a
 * {@link RegistryView}.
 */
export class Registry implements RegistryView {
  readonly ttlSeconds: number;
  /** What a receiver is told: three heartbeats fit in one TTL, so one lost packet is not a lost host. */
  readonly heartbeatSeconds: number;
  readonly #store: RegistryStore;
  readonly #events: EventSink;
  readonly #log: Logger;
  readonly #source: string;
  readonly #driftMode: DriftMode;
  readonly #ignore: readonly DriftIgnoreRule[];
  readonly #corrector: Corrector | undefined;
  readonly #now: () => number;
  readonly #maxHosts: number;
  readonly #isRevoked: (scope: Scope) => boolean;
  readonly #listeners = new Set<(change: RegistryChange) => void>();
  readonly #enrollments: Enrollments;

  readonly #hosts = new Map<string, HostRecord>();
  readonly #desired = new Map<string, Desired>();
  /** What heartbeats reported, by `host/service`. */
  readonly #actual = new Map<string, Actual>();
  readonly #drift = new Map<string, Drift>();
  #projection: ProjectionData = emptyProjection();
  /** The stream sequence of the last event applied: the consumer starts after it. */
  #checkpoint = 0;
  #sweeper: NodeJS.Timeout | undefined;

  constructor(options: RegistryOptions) {
    this.ttlSeconds = options.ttlSeconds;
    this.heartbeatSeconds = Math.max(1, Math.floor(options.ttlSeconds / 3));
    this.#store = options.store;
    this.#events = options.events;
    this.#log = options.logger;
    this.#source = `ferry://registry/${options.registryId}`;
    this.#driftMode = options.driftMode;
    this.#ignore = options.driftIgnore;
    this.#corrector = options.corrector;
    this.#now = options.now ?? Date.now;
    this.#maxHosts = options.maxHosts ?? DEFAULT_MAX_HOSTS;
    this.#isRevoked = options.isRevoked ?? (() => false);
    this.#enrollments = new Enrollments({ store: options.store, log: options.logger, now: () => this.#now(), maxHosts: this.#maxHosts });
    options.store.onRecovered(() => void this.resync());
  }

  get checkpoint(): number {
    return this.#checkpoint;
  }

  /**
   * Loads what the store holds (nothing, when it cannot answer now) and the key file's copy of the
   * enrollments, and starts the TTL timer.
   */
  async start(): Promise<void> {
    const data = await this.#store.load();
    if (data) this.#adopt(data, true);
    // Redis down, or restarted empty: the local copy still knows every enrolled host key.
    if (this.#enrollments.adopt(this.#store.durable())) await this.#store.replace(DURABLE_KINDS, this.#enrollments.dump());
    // A quarter of the TTL (at most a second) bounds how late past its TTL a host is marked lost.
    const every = Math.min(1000, Math.max(100, (this.ttlSeconds * 1000) / 4));
    this.#sweeper = setInterval(() => this.sweep(), every);
    this.#sweeper.unref();
  }

  stop(): void {
    clearInterval(this.#sweeper);
  }

  /**
   * Called when the store answers again after missed writes: what it holds fills what memory lacks
   * (a registry started while Redis was down knows nothing yet), then memory is written back whole.
   */
  async resync(): Promise<void> {
    const stored = await this.#store.load();
    if (!stored) return;
    this.#adopt(stored, false);
    await this.#store.replace(Object.keys(stored) as (keyof StoreData)[], this.#dump());
    this.#log.info({ hosts: this.#hosts.size, desired: this.#desired.size }, 'registry state written back to the store');
  }

  // ---- enrollment ----

  /** `POST /v1/join-tokens`: a one-time token for `host` (see Enrollments.issue). */
  issueJoinToken(request: TokenRequest, issuedBy: string): IssuedToken {
    return this.#enrollments.issue(request, issuedBy);
  }

  /** @throws FerryError FERRY_ERR_JOIN_TOKEN_INVALID (see Enrollments.check). */
  checkJoinToken(token: string, host: string): void {
    this.#enrollments.check(token, host);
  }

  /**
   * `POST /v1/enroll`, once the request proved it holds `publicKey`: spends the token, records the
   * key as the host's and registers the host with it.
   */
  enroll(token: string, publicKey: string, registration: HostRegistration): { host: HostRecord; enrollment: Enrollment } {
    // Checked before the token is spent: a refused registration must leave it usable.
    const issued = this.#enrollments.check(token, registration.id);
    const pinned = issued.labels ?? this.#enrollments.get(registration.id)?.labels;
    if (pinned) assertLabels(pinned, registration.labels);
    if (!this.#hosts.has(registration.id)) this.#assertRoom();
    const enrollment = this.#enrollments.enroll(token, registration.id, publicKey);
    return { host: this.register(registration), enrollment };
  }

  /** The TrustStore's `extraKeys`: each enrolled host's key, as a `host` key of that host only. */
  hostScope(keyId: string): Scope | undefined {
    return this.#enrollments.scopeFor(keyId);
  }

  /** The keys a signed event about `host` that reached the stream at `arrivalMs` may be signed with. */
  hostKeysAt(host: string, arrivalMs: number): KeyObject[] {
    return this.#enrollments.keysAt(host, arrivalMs, this.#isRevoked);
  }

  /** A host's id and labels as the registry knows them (none for a host it does not know), for grants' host selectors. */
  hostFacts(id: string): HostFacts {
    return { id, labels: this.#hosts.get(id)?.labels ?? {} };
  }

  // ---- hosts ----

  /**
   * Registers or re-registers a host (idempotent by id); a lost host comes back online. The route
   * has checked that the request was signed by this host's own enrolled key.
   *
   * @throws FerryError FERRY_ERR_LABELS_PINNED, FERRY_ERR_REGISTRY_LIMIT.
   */
  register(input: HostRegistration): HostRecord {
    const enrollment = this.#enrollments.get(input.id);
    if (enrollment?.labels) assertLabels(enrollment.labels, input.labels);
    const previous = this.#hosts.get(input.id);
    if (!previous) this.#assertRoom();
    const now = new Date(this.#now()).toISOString();
    const host: HostRecord = {
      id: input.id, url: input.url, labels: input.labels, capabilities: input.capabilities, version: input.version, engine: input.engine,
      ...(enrollment ? { hostKey: enrollment.fingerprint } : {}),
      status: 'online', registeredAt: previous?.status === 'online' ? previous.registeredAt : now, lastSeenAt: now,
    };
    this.#hosts.set(host.id, host);
    this.#store.set('hosts', host.id, host);
    this.#publish(createEvent('host.registered', {
      source: this.#source, host: host.id, service: HOST_SERVICE, deploymentId: '',
      data: { address: host.url, version: host.version, labels: host.labels, capabilities: host.capabilities, engine: host.engine, reregistered: previous !== undefined },
    }));
    this.#emit({ kind: 'host', data: host });
    return host;
  }

  /**
   * Records a heartbeat and, when it carries reports, what runs on the host; drift is evaluated
   * for every service with a desired state there.
   *
   * @throws FerryError FERRY_ERR_HOST_UNKNOWN for a host never registered or marked lost.
   */
  heartbeat(id: string, reports: ActualReport[] | undefined): void {
    const host = this.#hosts.get(id);
    if (!host || host.status !== 'online') {
      throw new FerryError('FERRY_ERR_HOST_UNKNOWN', { message: host ? `Host ${id} was marked lost; register again` : `Unknown host ${id}; register first`, details: { host: id } });
    }
    const nowMs = this.#now();
    const now = new Date(nowMs).toISOString();
    host.lastSeenAt = now;
    this.#store.set('hosts', id, host);
    if (reports === undefined) return;
    const reported = new Set<string>();
    for (const report of reports) {
      const key = serviceKey(id, report.service);
      reported.add(key);
      this.#setActual(key, { ...report, source: 'heartbeat', reportedAt: now });
    }
    // A report lists every Ferry container of the host: what it no longer lists has no container.
    const known = new Set([...this.#actual.keys(), ...this.#desired.keys()].filter((k) => k.startsWith(`${id}/`)));
    for (const key of known) {
      if (reported.has(key)) continue;
      const service = key.slice(id.length + 1);
      if (!this.#desired.has(key)) {
        // Nothing to compare it with: forgotten, so that a host naming ever new services cannot grow the registry.
        this.#actual.delete(key);
        this.#store.delete('actual', key);
        continue;
      }
      this.#setActual(key, { service, state: 'missing', source: 'heartbeat', reportedAt: now });
    }
    for (const key of new Set([...known, ...reported])) this.#evaluate(key, nowMs);
  }

  /** Marks every online host whose last heartbeat is older than its TTL as lost, once. */
  sweep(): void {
    const now = this.#now();
    for (const host of this.#hosts.values()) {
      if (host.status !== 'online' || now - Date.parse(host.lastSeenAt) <= this.ttlSeconds * 1000) continue;
      host.status = 'lost';
      this.#store.set('hosts', host.id, host);
      this.#log.warn({ host: host.id, lastSeenAt: host.lastSeenAt }, 'host lost: no heartbeat within its TTL');
      this.#publish(createEvent('host.lost', {
        source: this.#source, host: host.id, service: HOST_SERVICE, deploymentId: '',
        data: { reason: `no heartbeat for more than ${this.ttlSeconds} s`, lastSeenAt: host.lastSeenAt, ttlSeconds: this.ttlSeconds },
      }));
      this.#emit({ kind: 'host', data: host });
    }
  }

  hosts(filter: { selector?: Selector; status?: HostStatus } = {}): HostRecord[] {
    return [...this.#hosts.values()]
      .filter((h) => filter.status === undefined || h.status === filter.status)
      .filter((h) => !filter.selector || matchesSelector(filter.selector, h.labels))
      .sort((a, b) => a.id.localeCompare(b.id));
  }

  // ---- desired, actual, drift ----

  /**
   * Records what a deploy key says it deployed. The route has checked the key's grant for this
   * service on this host, and that `service.env` holds digests only.
   *
   * @throws FerryError FERRY_ERR_REGISTRY_LIMIT for a new record past FERRY_MAX_HOSTS × 64.
   */
  putDesired(host: string, service: string, input: DesiredInput, recordedBy: string): ServiceState {
    const key = serviceKey(host, service);
    const limit = this.#maxHosts * DESIRED_PER_HOST;
    if (!this.#desired.has(key) && this.#desired.size >= limit) {
      throw new FerryError('FERRY_ERR_REGISTRY_LIMIT', { message: `The registry holds ${limit} desired records`, details: { kind: 'desired', limit } });
    }
    const desired: Desired = { ...input, recordedBy, recordedAt: new Date(this.#now()).toISOString() };
    this.#desired.set(key, desired);
    this.#store.set('desired', key, desired);
    this.#evaluate(key, this.#now());
    const state = this.#state(key);
    this.#emit({ kind: 'service', data: state });
    return state;
  }

  services(filter: { host?: string; service?: string } = {}): ServiceState[] {
    const keys = new Set([...this.#desired.keys(), ...this.#actual.keys(), ...Object.keys(this.#projection.actual), ...Object.keys(this.#projection.lastDeployment)]);
    return [...keys].sort()
      .map((key) => this.#state(key))
      .filter((s) => s.service !== HOST_SERVICE)
      .filter((s) => (filter.host === undefined || s.host === filter.host) && (filter.service === undefined || s.service === filter.service));
  }

  drifted(): ServiceState[] {
    return this.services().filter((s) => s.drift !== null);
  }

  // ---- projection ----

  /** Newest first. */
  history(service: string): HistoryEntry[] {
    return Object.hasOwn(this.#projection.history, service) ? [...(this.#projection.history[service] ?? [])].reverse() : [];
  }

  /** Newest first. */
  deployments(limit = 50): DeploymentSummary[] {
    return Object.values(this.#projection.deployments)
      .sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : a.deploymentId.localeCompare(b.deploymentId)))
      .slice(0, limit);
  }

  /** The projection as data, for tests and the rebuild check. */
  projectionData(): ProjectionData {
    return structuredClone(this.#projection);
  }

  /** Releases newest first, `limit` from just below the id `before`; `next` is the following page's cursor. */
  releases(options: { limit: number; before?: string; project?: string }): { releases: ReleaseSummary[]; next?: string } {
    return listReleases(this.#projection.releases, options);
  }

  /** One release's record, or undefined. */
  release(id: string): ProjectedRelease | undefined {
    return Object.hasOwn(this.#projection.releases, id) ? structuredClone(this.#projection.releases[id]) : undefined;
  }

  /** Success rate, p50/p95 duration and rollback effectiveness per service over its last `window` deployments. */
  quality(options: { window: number; service?: string }): ServiceQuality[] {
    return serviceQuality(Object.values(this.#projection.deployments), options);
  }

  /**
   * Folds one stored event into the projection; a second copy of an event changes nothing.
   * `signer`: the key id a release event was admitted with.
   */
  project(event: FerryEvent, seq: number, signer?: string): boolean {
    const applied = applyEvent(this.#projection, event, signer);
    this.advance(seq);
    if (!applied) return false;
    this.#store.set('p:seen', event.id, true);
    if (applied.history) this.#store.set('p:history', applied.history.service, applied.history.entries);
    if (applied.release) {
      this.#store.set('p:releases', applied.release.key, applied.release.value);
      if (applied.release.removed !== undefined) this.#store.delete('p:releases', applied.release.removed);
    }
    if (applied.deployment) this.#store.set('p:deployments', applied.deployment.key, applied.deployment.value);
    if (applied.lastDeployment) this.#store.set('p:lastDeployment', applied.lastDeployment.key, applied.lastDeployment.value);
    if (applied.actual) this.#store.set('p:actual', applied.actual.key, applied.actual.value);
    this.#emit({ kind: 'event', data: event });
    if (applied.deployment) this.#emit({ kind: 'deployment', data: applied.deployment.value });
    if (applied.release) this.#emit({ kind: 'release', data: releaseSummary(applied.release.value) });
    // A deployment that ended, or rolled back, moves its service's figures.
    const ended = applied.deployment?.value;
    if (ended && (ended.state !== 'running' || event.type === 'ferry.rollback.completed') && this.#listeners.size > 0) {
      const [quality] = this.quality({ window: DEFAULT_QUALITY_WINDOW, service: ended.service });
      if (quality) this.#emit({ kind: 'quality', data: quality });
    }
    if (applied.actual || applied.lastDeployment) {
      const key = applied.actual?.key ?? applied.lastDeployment?.key ?? '';
      this.#emit({ kind: 'service', data: this.#state(key) });
    }
    return true;
  }

  /** Moves the checkpoint past a stream message, also one that is not a Ferry event (it is skipped). */
  advance(seq: number): void {
    if (seq <= this.#checkpoint) return;
    this.#checkpoint = seq;
    this.#store.set('p:meta', 'checkpoint', seq);
  }

  /** Forgets the projection (memory and store) so that a replay from the stream's start rebuilds it. */
  async resetProjection(): Promise<void> {
    this.#projection = emptyProjection();
    this.#checkpoint = 0;
    await this.#store.replace(PROJECTION_KINDS, {});
  }

  // ---- RegistryView ----

  snapshot(): Promise<RegistrySnapshot> {
    return Promise.resolve(structuredClone({
      hosts: this.hosts(), services: this.services(), deployments: this.deployments(100),
      releases: this.releases({ limit: 20 }).releases, quality: this.quality({ window: DEFAULT_QUALITY_WINDOW }),
    }));
  }

  subscribe(listener: (change: RegistryChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  // ---- internals ----

  #state(key: string): ServiceState {
    const slash = key.indexOf('/');
    const host = key.slice(0, slash);
    const service = key.slice(slash + 1);
    const lastKey = this.#projection.lastDeployment[key];
    return {
      host, service,
      desired: this.#desired.get(key) ?? null,
      actual: this.#currentActual(key),
      drift: this.#drift.get(key) ?? null,
      lastDeployment: (lastKey === undefined ? undefined : this.#projection.deployments[lastKey]) ?? null,
    };
  }

  /** The newer of what the host reported and what the last completed deployment left. */
  #currentActual(key: string): Actual | null {
    const reported = this.#actual.get(key);
    const projected = this.#projection.actual[key];
    if (!reported) return projected ?? null;
    if (!projected) return reported;
    return projected.reportedAt > reported.reportedAt ? projected : reported;
  }

  #setActual(key: string, actual: Actual): void {
    this.#actual.set(key, actual);
    this.#store.set('actual', key, actual);
  }

  /**
   * One drift episode per difference: it begins with one `drift.detected`, lasts while the
   * difference does (reasons may change, no new event) and ends when desired and actual agree.
   */
  #evaluate(key: string, nowMs: number): void {
    const before = JSON.stringify(this.#state(key));
    const state = this.#state(key);
    const reasons = driftReasons(state.service, state.desired, state.actual, this.#ignore);
    const current = this.#drift.get(key);
    if (reasons.length === 0) {
      if (current) {
        this.#drift.delete(key);
        this.#store.delete('drift', key);
        this.#log.info({ host: state.host, service: state.service }, 'drift resolved');
      }
    } else if (!current) {
      const drift: Drift = { reasons, since: new Date(nowMs).toISOString(), mode: this.#driftMode };
      this.#drift.set(key, drift);
      this.#store.set('drift', key, drift);
      this.#log.warn({ host: state.host, service: state.service, reasons }, 'drift detected');
      const desired = state.desired;
      this.#publish(createEvent('drift.detected', {
        source: this.#source, host: state.host, service: state.service, deploymentId: desired?.deploymentId ?? '',
        data: {
          reason: reasons.map((r) => r.field).join(','), reasons, mode: this.#driftMode,
          expected: { imageId: desired?.imageId, configHash: desired?.configHash, image: desired?.image, state: 'running' },
          actual: state.actual,
          ...(desired ? { image: desired.image, imageId: desired.imageId } : {}),
        },
      }));
    } else if (!sameReasons(current.reasons, reasons)) {
      current.reasons = reasons;
      this.#store.set('drift', key, current);
    }
    this.#maybeCorrect(key, nowMs);
    const after = this.#state(key);
    if (JSON.stringify(after) !== before) this.#emit({ kind: 'service', data: after });
  }

  /**
   * In correct mode, asks the drifted host once per episode, and only when the drift outlived one
   * heartbeat interval (a deployment under way reports nothing; the one after it settles the
   * drift by itself), to start again what it last deployed. The host is reached at the URL of its
   * own record and must prove its enrolled key; nothing of the desired record is sent or used:
   * the host can only restart what an operator signed for it.
   */
  #maybeCorrect(key: string, nowMs: number): void {
    const drift = this.#drift.get(key);
    const desired = this.#desired.get(key);
    if (this.#driftMode !== 'correct' || !drift || !desired || drift.correction || !this.#corrector) return;
    if (nowMs - Date.parse(drift.since) < this.heartbeatSeconds * 1000) return;
    const slash = key.indexOf('/');
    const host = key.slice(0, slash);
    const service = key.slice(slash + 1);
    const correction: DriftCorrection = { requestId: randomUUID(), requestedAt: new Date(nowMs).toISOString(), outcome: 'pending' };
    drift.correction = correction;
    this.#store.set('drift', key, drift);
    const record = this.#hosts.get(host);
    const enrollment = this.#enrollments.get(host);
    const scope = this.#enrollments.scopeFor(`host.${host}`);
    const asked = record && record.status === 'online' && enrollment && scope && !this.#isRevoked(scope)
      ? this.#corrector({ host, url: record.url, hostKey: enrollment.fingerprint }, service, correction.requestId)
      : Promise.reject(new FerryError('FERRY_ERR_HOST_UNKNOWN', { message: `Host ${host} is not an online host with an enrolled, unrevoked key: there is nobody to ask`, details: { host } }));
    this.#log.info({ host, service, requestId: correction.requestId }, 'asking the host to reconcile a drifted service');
    void asked.then(
      (response) => {
        correction.outcome = 'accepted';
        correction.response = response;
      },
      (err: unknown) => {
        const e = err instanceof FerryError ? err : new FerryError('FERRY_ERR_INTERNAL', { cause: err });
        correction.outcome = 'failed';
        correction.error = { code: e.code, message: e.message };
        this.#log.warn({ err, host, service }, 'the host did not reconcile the drifted service; the drift stays');
      },
    ).finally(() => {
      // The episode may have ended meanwhile; the answer is recorded only where it still lives.
      if (this.#drift.get(key) !== drift) return;
      this.#store.set('drift', key, drift);
      this.#emit({ kind: 'service', data: this.#state(key) });
    });
  }

  #publish(event: FerryEvent): void {
    this.#events.publish(event);
  }

  #emit(live: RegistryChange): void {
    if (this.#listeners.size === 0) return;
    // A copy: the records are mutated in place later, and a listener may keep what it was given.
    const change = structuredClone(live);
    for (const listener of this.#listeners) {
      try {
        listener(change);
      } catch (err) {
        this.#log.warn({ err }, 'a registry view listener threw');
      }
    }
  }

  /** Takes stored state; with `replace` (at start) it is all there is, otherwise only what memory lacks. */
  #adopt(data: StoreData, replace: boolean): void {
    const fill = <T>(map: Map<string, T>, stored: Record<string, unknown>): void => {
      for (const [key, value] of Object.entries(stored)) if (replace || !map.has(key)) map.set(key, value as T);
    };
    fill(this.#hosts, data.hosts);
    fill(this.#desired, data.desired);
    this.#enrollments.adopt(data);
    this.#withoutEnvValues();
    fill(this.#actual, data.actual);
    fill(this.#drift, data.drift);
    // The projection in memory is complete for its checkpoint; a stored one is taken only at start.
    if (replace) {
      this.#projection = {
        seen: data['p:seen'] as ProjectionData['seen'],
        deployments: data['p:deployments'] as ProjectionData['deployments'],
        history: data['p:history'] as ProjectionData['history'],
        actual: data['p:actual'] as ProjectionData['actual'],
        lastDeployment: data['p:lastDeployment'] as ProjectionData['lastDeployment'],
        // A store written before releases were projected has none.
        releases: Object.assign(record<ProjectedRelease>(), data['p:releases'] as ProjectionData['releases'] | undefined),
      };
      const checkpoint = data['p:meta'].checkpoint;
      this.#checkpoint = typeof checkpoint === 'number' ? checkpoint : 0;
    }
  }

  /**
   * A desired record stored before env values were refused may still hold some: they are dropped
   * from memory and the store, so that they never leave the registry again.
   */
  #withoutEnvValues(): void {
    for (const [key, desired] of this.#desired) {
      const env = desired.service.env;
      if (env === undefined || (isRecord(env) && Object.values(env).every((v) => typeof v === 'string' && ENV_DIGEST_PATTERN.test(v)))) continue;
      const { env: _values, ...service } = desired.service;
      const cleaned: Desired = { ...desired, service };
      this.#desired.set(key, cleaned);
      this.#store.set('desired', key, cleaned);
      this.#log.warn({ key }, 'a stored desired record held environment values; they were removed');
    }
  }

  #assertRoom(): void {
    if (this.#hosts.size >= this.#maxHosts) {
      throw new FerryError('FERRY_ERR_REGISTRY_LIMIT', { message: `The registry has ${this.#maxHosts} hosts (FERRY_MAX_HOSTS)`, details: { kind: 'hosts', limit: this.#maxHosts } });
    }
  }

  #dump(): StoreData {
    return {
      ...this.#enrollments.dump(),
      hosts: Object.fromEntries(this.#hosts), desired: Object.fromEntries(this.#desired),
      actual: Object.fromEntries(this.#actual), drift: Object.fromEntries(this.#drift),
      'p:seen': this.#projection.seen, 'p:deployments': this.#projection.deployments, 'p:history': this.#projection.history,
      'p:actual': this.#projection.actual, 'p:lastDeployment': this.#projection.lastDeployment, 'p:releases': this.#projection.releases,
      'p:meta': { checkpoint: this.#checkpoint },
    };
  }
}

/** @throws FerryError FERRY_ERR_LABELS_PINNED when `labels` are not exactly the pinned ones. */
function assertLabels(pinned: Readonly<Record<string, string>>, labels: Readonly<Record<string, string>>): void {
  const same = Object.keys(pinned).length === Object.keys(labels).length && Object.entries(pinned).every(([k, v]) => Object.hasOwn(labels, k) && labels[k] === v);
  if (!same) throw new FerryError('FERRY_ERR_LABELS_PINNED', { details: { labels: pinned } });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
