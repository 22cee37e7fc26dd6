import type { FerryEvent } from '@ferry/events';
import { isReleaseEventType, RELEASE_ID_PATTERN } from '@ferry/protocol';
import { applyReleaseEvent, type ProjectedRelease } from './releases.ts';
import type { Actual, DeploymentSummary, HistoryEntry } from './view.ts';

/** The subject token registry events about a host use in place of a service name (no service can be named so). */
export const HOST_SERVICE = '_host';

/** Newest entries kept per service; older ones fall off, the same way in a replay. */
export const HISTORY_LIMIT = 500;

/**
 * Everything the event stream tells, as plain JSON-able data: a replay from the stream's start
 * into an empty one gives the same value, field for field.
 */
export interface ProjectionData {
  /** Ids of the events applied: a second copy of one (a resend, a redelivery) changes nothing. */
  seen: Record<string, true>;
  /** By `deploymentId/host`: one deployment may go to many hosts. */
  deployments: Record<string, DeploymentSummary>;
  /** By service, oldest first. */
  history: Record<string, HistoryEntry[]>;
  /** What the last completed deployment left running, by `host/service`. */
  actual: Record<string, Actual>;
  /** The `deployments` key of the newest deployment, by `host/service`. */
  lastDeployment: Record<string, string>;
  /** By release id (releases.ts). */
  releases: Record<string, ProjectedRelease>;
}

export function emptyProjection(): ProjectionData {
  return { seen: record(), deployments: record(), history: record(), actual: record(), lastDeployment: record(), releases: record() };
}

/**
 * A record without a prototype. Its keys come from events (a service may be named `constructor`,
 * an event id may be anything), so a key must only ever find its own entry, never an inherited
 * member such as `Object.prototype.constructor`.
 */
export function record<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

// Reads and writes by key that hold for a record with a prototype too (one rebuilt from a store):
// only own entries count, and `__proto__` is written as an entry, not as the prototype.
function own<T>(entries: Record<string, T>, key: string): T | undefined {
  return Object.hasOwn(entries, key) ? entries[key] : undefined;
}

function put<T>(entries: Record<string, T>, key: string, value: T): T {
  Object.defineProperty(entries, key, { value, writable: true, enumerable: true, configurable: true });
  return value;
}

/** What one applied event changed, for the store and the live view. */
export interface Applied {
  deployment?: { key: string; value: DeploymentSummary };
  /** Absent for a release event: a release is not one service's history. */
  history?: { service: string; entries: HistoryEntry[] };
  /** The release record the event changed, and the oldest one it pushed out, if any. */
  release?: { key: string; value: ProjectedRelease; removed?: string };
  actual?: { key: string; value: Actual };
  lastDeployment?: { key: string; value: string };
}

export function serviceKey(host: string, service: string): string {
  return `${host}/${service}`;
}

// Registry and build events are not steps of a deployment on a host.
const NOT_DEPLOYMENT = new Set(['build.started', 'build.completed', 'host.registered', 'host.lost', 'drift.detected']);

/**
 * Folds one event into `data` (mutating it); undefined when the event was applied before. Pure:
 * the outcome depends on `data` and the event only, never on the clock, so a replay is exact.
 * `signer`: the key id a release event was admitted with (provenance.ts).
 */
export function applyEvent(data: ProjectionData, event: FerryEvent, signer?: string): Applied | undefined {
  if (own(data.seen, event.id)) return undefined;
  put(data.seen, event.id, true);
  data.releases ??= record();
  const type = event.type.slice('ferry.'.length);
  if (isReleaseEventType(type)) {
    const changed = applyReleaseEvent(data.releases, type, event.time, event.data as unknown as Record<string, unknown>, signer);
    return changed ? { release: { key: changed.id, value: changed.value, ...(changed.removed === undefined ? {} : { removed: changed.removed }) } } : {};
  }
  const { host, service, deploymentId, image, imageId, ...rest } = event.data as unknown as Record<string, unknown> & {
    host: string; service: string; deploymentId: string; image?: string; imageId?: string;
  };
  const entry: HistoryEntry = {
    id: event.id, type, time: event.time, host, service, deploymentId,
    ...(image === undefined ? {} : { image }), ...(imageId === undefined ? {} : { imageId }), data: rest,
  };
  const list = own(data.history, service) ?? put(data.history, service, []);
  list.push(entry);
  // Events of one service arrive in stream order, nearly always in time order too; sorting keeps
  // "newest first" true for a late publisher (a receiver's outbox after an outage) as well.
  list.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
  if (list.length > HISTORY_LIMIT) list.splice(0, list.length - HISTORY_LIMIT);
  const applied: Applied = { history: { service, entries: list } };
  if (NOT_DEPLOYMENT.has(type) || deploymentId === '') return applied;

  const key = `${deploymentId}/${host}`;
  const summary: DeploymentSummary = own(data.deployments, key) ?? {
    deploymentId, host, service, state: 'running', lastEvent: type, startedAt: event.time, updatedAt: event.time,
  };
  if (image !== undefined) summary.image = image;
  if (imageId !== undefined) summary.imageId = imageId;
  if (type === 'container.started' && typeof rest.containerId === 'string') summary.containerId = rest.containerId;
  const release = releaseRef(rest.release);
  if (release) summary.release = release;
  if (type === 'rollback.completed') summary.rollback = { restored: typeof rest.restoredContainerId === 'string' && rest.restoredContainerId !== '' };
  if (type === 'deployment.completed' && summary.state === 'running') {
    const total = (rest.timings as { total?: unknown } | undefined)?.total;
    if (typeof total === 'number' && Number.isFinite(total) && total >= 0) summary.durationMs = total;
  }
  if (event.time < summary.startedAt) summary.startedAt = event.time;
  // A terminal state stays: a sender event stored after the receiver's last one does not reopen it.
  if (summary.state === 'running') {
    summary.lastEvent = type;
    if (event.time > summary.updatedAt) summary.updatedAt = event.time;
    if (type === 'deployment.completed') {
      summary.state = 'succeeded';
      summary.finishedAt = event.time;
    } else if (type === 'deployment.removed') {
      // The receiver took the service off the host (a release rolled back what it brought there).
      summary.state = 'rolled_back';
      summary.finishedAt = event.time;
    } else if (type === 'deployment.failed') {
      summary.state = rest.state === 'ROLLED_BACK' ? 'rolled_back' : 'failed';
      summary.finishedAt = event.time;
      summary.error = { code: typeof rest.code === 'string' ? rest.code : 'FERRY_ERR_INTERNAL', reason: typeof rest.reason === 'string' ? rest.reason : '' };
    }
  }
  put(data.deployments, key, summary);
  applied.deployment = { key, value: summary };
  if (release) {
    const changed = applyReleaseEvent(data.releases, type, event.time, { host, service, release });
    if (changed) applied.release = { key: changed.id, value: changed.value, ...(changed.removed === undefined ? {} : { removed: changed.removed }) };
  }

  const sKey = serviceKey(host, service);
  const newest = own(data.lastDeployment, sKey);
  if (newest === undefined || (own(data.deployments, newest)?.startedAt ?? '') <= summary.startedAt) {
    put(data.lastDeployment, sKey, key);
    applied.lastDeployment = { key: sKey, value: key };
  }
  if (type === 'deployment.completed' && summary.state === 'succeeded') {
    const previous = own(data.actual, sKey);
    if (previous === undefined || previous.reportedAt <= event.time) {
      const actual: Actual = {
        service, state: 'running', deploymentId, source: 'events', reportedAt: event.time,
        ...(summary.image === undefined ? {} : { image: summary.image }),
        ...(summary.imageId === undefined ? {} : { imageId: summary.imageId }),
        ...(summary.containerId === undefined ? {} : { containerId: summary.containerId }),
      };
      put(data.actual, sKey, actual);
      applied.actual = { key: sKey, value: actual };
    }
  }
  return applied;
}

/** A deployment event's `data.release`, when it is one. */
function releaseRef(value: unknown): DeploymentSummary['release'] {
  if (typeof value !== 'object' || value === null) return undefined;
  const { id, phase, wave } = value as Record<string, unknown>;
  if (typeof id !== 'string' || !RELEASE_ID_PATTERN.test(id) || !isIndex(phase)) return undefined;
  return { id, phase, ...(isIndex(wave) ? { wave } : {}) };
}

function isIndex(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 64;
}
