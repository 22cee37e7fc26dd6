import { HOST_SERVICE } from '../projection.ts';
import type {
  Desired, DeploymentSummary, Drift, HostRecord, RegistryChange, RegistrySnapshot, ReleaseSummary, ServiceQuality, ServiceState,
} from '../view.ts';

/**
 * What the dashboard shows of a service: the registry's record minus the desired ServiceSpec (it
 * holds the deployment's environment values, often secrets) and minus the sender's raw answer to
 * a drift correction. Only what a page renders leaves the registry through this unsigned path.
 */
export interface DashboardService extends Omit<ServiceState, 'desired' | 'drift'> {
  desired: Omit<Desired, 'service'> | null;
  drift: Drift | null;
}

/** One line of the live event feed, picked field by field from a projected CloudEvent. */
export interface FeedEntry {
  id: string;
  type: string;
  time: string;
  source: string;
  host?: string;
  service?: string;
  deploymentId?: string;
  /** The release the event is of (a release event, or a deployment of a release). */
  releaseId?: string;
  project?: string;
  image?: string;
  state?: string;
  code?: string;
  reason?: string;
}

export interface DashboardState {
  hosts: HostRecord[];
  services: DashboardService[];
  /** Newest first. */
  deployments: DeploymentSummary[];
  /** The feed's recent entries, newest first. */
  events: FeedEntry[];
  /** Newest first. */
  releases: ReleaseSummary[];
  /** Per service, over its last deployments. */
  quality: ServiceQuality[];
}

export type DashboardChange =
  | { kind: 'host'; data: HostRecord }
  | { kind: 'service'; data: DashboardService }
  | { kind: 'deployment'; data: DeploymentSummary }
  | { kind: 'release'; data: ReleaseSummary }
  | { kind: 'quality'; data: ServiceQuality }
  | { kind: 'event'; data: FeedEntry };

export function dashboardState(snapshot: RegistrySnapshot, events: FeedEntry[]): DashboardState {
  return {
    hosts: snapshot.hosts,
    services: snapshot.services.map(dashboardService),
    deployments: snapshot.deployments,
    events,
    releases: snapshot.releases ?? [],
    quality: snapshot.quality ?? [],
  };
}

/** The change as the page gets it, or null for an event too malformed to show. */
export function dashboardChange(change: RegistryChange): DashboardChange | null {
  switch (change.kind) {
    case 'host': return change;
    case 'deployment': return change;
    case 'release': return change;
    case 'quality': return change;
    case 'service': return { kind: 'service', data: dashboardService(change.data) };
    case 'event': {
      const entry = feedEntry(change.data);
      return entry ? { kind: 'event', data: entry } : null;
    }
  }
}

function dashboardService(state: ServiceState): DashboardService {
  const { desired, drift, ...rest } = state;
  let shownDesired: DashboardService['desired'] = null;
  if (desired) {
    const { service: _spec, ...kept } = desired;
    shownDesired = kept;
  }
  let shownDrift: Drift | null = null;
  if (drift) {
    const { correction, ...kept } = drift;
    if (correction) {
      const { response: _answer, ...shownCorrection } = correction;
      shownDrift = { ...kept, correction: shownCorrection };
    } else {
      shownDrift = kept;
    }
  }
  return { ...rest, desired: shownDesired, drift: shownDrift };
}

/** Reads a CloudEvent (libs/events FerryEvent) defensively: the stream may hold any producer's JSON. */
export function feedEntry(value: unknown): FeedEntry | null {
  if (typeof value !== 'object' || value === null) return null;
  const event = value as Record<string, unknown>;
  const data = typeof event.data === 'object' && event.data !== null ? event.data as Record<string, unknown> : {};
  const id = text(event.id);
  const type = text(event.type);
  if (id === undefined || type === undefined) return null;
  const service = text(data.service) ?? text(event.subject);
  // A release's events name the release, not a host or service (their host is `_release`).
  const releaseId = text(data.releaseId) ?? text((data.release as Record<string, unknown> | undefined)?.id);
  const release = typeof data.releaseId === 'string';
  return {
    id,
    type,
    time: text(event.time) ?? new Date().toISOString(),
    source: text(event.source) ?? '',
    host: release ? undefined : text(data.host),
    // A host's own events (host.registered, host.lost) carry a placeholder, not a service.
    service: service === HOST_SERVICE || release ? undefined : service,
    ...(releaseId === undefined ? {} : { releaseId }),
    ...(release ? { project: text(data.project) } : {}),
    deploymentId: text(data.deploymentId) ?? text(event.deploymentid),
    image: text(data.image),
    state: text(data.state),
    // A release event's `reason` (why it paused, why it rolls back) is no error; its `error` is.
    code: release ? text(errorOf(data)?.code) : text(data.code),
    reason: release ? text(errorOf(data)?.message) : text(data.reason),
  };
}

function errorOf(data: Record<string, unknown>): Record<string, unknown> | undefined {
  return typeof data.error === 'object' && data.error !== null ? data.error as Record<string, unknown> : undefined;
}

function text(value: unknown): string | undefined {
  return typeof value === 'string' && value.length > 0 ? value.slice(0, 500) : undefined;
}
