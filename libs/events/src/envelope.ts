import { randomUUID } from 'node:crypto';
import {
  EVENT_TYPES, eventSubject,
  type Compression, type DeploymentState, type ErrorCode, type EventType, type ProbeResult, type ReleaseOutcome, type ReleaseService,
  type StageTimings,
} from '@ferry/protocol';

/** What every payload carries, so a consumer can correlate any single event without its neighbours. */
export interface EventBase {
  deploymentId: string;
  host: string;
  service: string;
  /** The image reference as pushed (`name[:tag]`). */
  image?: string;
  /** The image id (`sha256:<hex>`) once it is known. */
  imageId?: string;
  /**
   * The release the deployment belongs to, as its signed manifest names it (docs/protocol.md §4,
   * `release`); absent for a deployment outside a release. Release events themselves carry
   * `releaseId` instead.
   */
  release?: EventReleaseRef;
}

/** Where a deployment stands in its release: the release id, its phase (from 0), its wave (from 0). */
export interface EventReleaseRef {
  id: string;
  phase: number;
  wave?: number;
}

/** Outcomes by host, then by service. */
export type ReleaseOutcomes = Record<string, Record<string, ReleaseOutcome>>;

/**
 * What every release event carries besides the correlation fields. A release event's `host` is
 * `_release` (RELEASE_HOST), its `service` the project's subject token, its `deploymentId` empty.
 */
export interface ReleaseEventFields {
  /** `rel-YYYYMMDDTHHMMSSZ-<8 hex>` (RELEASE_ID_PATTERN). */
  releaseId: string;
  /** The project as its deployment file names it. */
  project: string;
}

/** The plan: services with their image ids and specs' hashes, phases, hosts by wave. */
export interface ReleaseStartedFields extends ReleaseEventFields {
  /** Phase names in order (`phase-1`… when the file names none). */
  phases: string[];
  services: ReleaseService[];
  /** Host ids by wave, in the order the waves go. */
  waves: string[][];
  /** The release this one replaces on its hosts, where the sender knows it. */
  previousId?: string;
}

/** A phase is healthy on every host it touched (in one wave, when the release has several). */
export interface ReleasePhaseCompletedFields extends ReleaseEventFields {
  /** Counted from 0. */
  phase: number;
  /** The phase's name. */
  name: string;
  wave?: number;
  /** The outcome of each service of the phase on each host of the wave. */
  outcomes: ReleaseOutcomes;
  durationMs?: number;
}

/** Every phase is through on every host of a wave. */
export interface ReleaseWaveCompletedFields extends ReleaseEventFields {
  /** Counted from 0. */
  wave: number;
  /** The wave's name, e.g. `canary` (`wave-1`… when the file names none). */
  name: string;
  hosts: string[];
  outcomes: ReleaseOutcomes;
  durationMs?: number;
}

/** The release waits before `wave`: for a time (`until`) or for `ferry release continue`. */
export interface ReleasePausedFields extends ReleaseEventFields {
  /** The wave that waits, counted from 0. */
  wave: number;
  reason: 'pause' | 'continue';
  /** When a timed pause ends. */
  until?: string;
}

export interface ReleaseCompletedFields extends ReleaseEventFields {
  outcomes: ReleaseOutcomes;
  durationMs: number;
}

/** The release halted: what stopped it and where; `rollback` says whether a whole-release rollback follows. */
export interface ReleaseFailedFields extends ReleaseEventFields {
  error: { code: ErrorCode; message: string };
  phase?: number;
  wave?: number;
  /**
   * The service and host whose failure halted it, when one did. Not `service`/`host`: those are
   * the envelope's own (`_release` and the project's token), which createEvent keeps over the data's.
   */
  failedService?: string;
  failedHost?: string;
  outcomes: ReleaseOutcomes;
  rollback: boolean;
}

/** A whole-release rollback begins: every host already touched, in reverse phase order. */
export interface ReleaseRollbackStartedFields extends ReleaseEventFields {
  reason: string;
  hosts: string[];
  /** The release it returns to; absent when each service goes back to its previous good deployment. */
  to?: string;
}

/** A whole-release rollback ended; `outcomes` are `rolled-back` or `rollback-failed` per host per service. */
export interface ReleaseRolledBackFields extends ReleaseEventFields {
  /** The release the hosts were returned to, when there was one. */
  rolledBackTo?: string;
  outcomes: ReleaseOutcomes;
  /** Set when some service could not be returned. */
  error?: { code: ErrorCode; message: string };
  durationMs: number;
}

// Type-specific fields, one interface per event type; EventData adds EventBase to each.

export interface TransferStartedFields {
  /** The receiver's address as the sender dialled it. */
  target: string;
  /** Package size on the wire, i.e. after compression. */
  bytes: number;
  compression: Compression;
  durationMs?: number;
}

export interface TransferCompletedFields {
  target: string;
  bytes: number;
  compression: Compression;
  durationMs: number;
}

export interface PackageVerifiedFields {
  digest: string;
  bytes: number;
  durationMs: number;
}

export interface ImageLoadedFields {
  imageId: string;
  durationMs: number;
}

export interface ContainerStartedFields {
  containerId: string;
  durationMs: number;
}

export interface HealthcheckPassedFields {
  attempts: number;
  durationMs: number;
}

export interface HealthcheckFailedFields {
  reason: string;
  probes: ProbeResult[];
  /** The tail of the failed container's log, which is usually where the reason is. */
  logs: string[];
}

export interface DeploymentCompletedFields {
  timings: StageTimings;
}

export interface DeploymentFailedFields {
  code: ErrorCode;
  reason: string;
  /** The state the deployment ended in (FAILED, ROLLED_BACK…). */
  state: DeploymentState;
  logs?: string[];
  probes?: ProbeResult[];
}

/**
 * A routed service's traffic moved to another container through the host's proxy (a start-first
 * switch, or the upstream swap of a stop-first deployment or rollback).
 */
export interface DeploymentSwitchedFields {
  /** The proxy's upstream (container id's first 12 hex digits) that served before; absent on a first deployment. */
  from?: string;
  /** The upstream serving now. */
  to: string;
  /** Its address, `127.0.0.1:<published port>`. */
  address: string;
  strategy: 'start-first' | 'stop-first';
  /** Requests still in flight on `from` when the drain ended (0 = every one finished). */
  openSessions: number;
  drainMs: number;
}

export interface RollbackStartedFields {
  reason: string;
}

export interface RollbackCompletedFields {
  /** Absent when there was no previous container to bring back. */
  restoredContainerId?: string;
  durationMs: number;
}

/** A service was taken off its host (`DELETE /v1/services/:name`): its containers are gone. */
export interface DeploymentRemovedFields {
  /** Every container removed, the one that ran first. */
  removedContainerIds: string[];
  /** The deployment whose container ran before the removal, when one ran. */
  removedDeploymentId?: string;
  durationMs: number;
}

/** What the host's proxy counted for one upstream (a container) of a route. */
export interface ProxyCountersFields {
  name: string;
  responses: { '1xx': number; '2xx': number; '3xx': number; '4xx': number; '5xx': number; other: number };
  /** Connection and response errors towards the upstream. */
  errors: number;
  current: number;
  total: number;
}

/** A canary step of a start-first deployment (docs/protocol.md §11.7). */
export interface CanaryFields {
  /** The new container's share of the route's requests, in percent. */
  weight: number;
  forMs: number;
  maxErrorRate: number;
  /** The new container's counters as the proxy counted them; absent on `canary.started`. */
  counters?: ProxyCountersFields | undefined;
  /** 5xx and connection errors over the requests it saw, in percent. */
  errorRate?: number | undefined;
  /** Why it was rolled back. */
  reason?: string | undefined;
  /** Whether the counters decided or a `promote`/`abort` by hand. */
  by?: 'counters' | 'hand' | undefined;
}

// The producers of the following are still taking shape: the known fields are typed, anything
// else is allowed so that adding a field does not first need a change of this contract.
export interface BuildStartedFields {
  [field: string]: unknown;
}

export interface BuildCompletedFields {
  durationMs?: number;
  bytes?: number;
  [field: string]: unknown;
}

export interface HostRegisteredFields {
  address?: string;
  version?: string;
  [field: string]: unknown;
}

export interface HostLostFields {
  reason?: string;
  [field: string]: unknown;
}

export interface DriftDetectedFields {
  reason?: string;
  expected?: unknown;
  actual?: unknown;
  [field: string]: unknown;
}

/** The audit record of a deployment the receiver's policy refused before anything ran. */
export interface PolicyDeniedFields {
  /** The first rule broken, e.g. `privileged`, `cap_add:SYS_ADMIN`, `bind-source:/`. */
  rule: string;
  /** Where in the manifest, e.g. `service.capAdd`. */
  field: string;
  /** The value asked for, as written in the manifest (never an env value). */
  value: string;
  /** Every rule broken, the first included. */
  violations: { rule: string; field: string; value: string }[];
}

/** A deployment let in only because its key's grant is inside its grace period: renew the grant. */
export interface GrantGraceFields {
  keyId: string;
  /** The grant's id; null for a key written in the trust file itself. */
  grant: string | null;
  notAfter: string | null;
  graceSeconds: number;
}

/** The type-specific fields of each event type. */
export interface EventFields {
  'build.started': BuildStartedFields;
  'build.completed': BuildCompletedFields;
  'transfer.started': TransferStartedFields;
  'transfer.completed': TransferCompletedFields;
  'package.verified': PackageVerifiedFields;
  'image.loaded': ImageLoadedFields;
  'container.started': ContainerStartedFields;
  'healthcheck.passed': HealthcheckPassedFields;
  'healthcheck.failed': HealthcheckFailedFields;
  'deployment.completed': DeploymentCompletedFields;
  'deployment.failed': DeploymentFailedFields;
  'deployment.switched': DeploymentSwitchedFields;
  'rollback.started': RollbackStartedFields;
  'rollback.completed': RollbackCompletedFields;
  'deployment.removed': DeploymentRemovedFields;
  'canary.started': CanaryFields;
  'canary.promoted': CanaryFields;
  'canary.rolled_back': CanaryFields;
  'host.registered': HostRegisteredFields;
  'host.lost': HostLostFields;
  'drift.detected': DriftDetectedFields;
  'policy.denied': PolicyDeniedFields;
  'grant.grace': GrantGraceFields;
  'release.started': ReleaseStartedFields;
  'release.phase.completed': ReleasePhaseCompletedFields;
  'release.wave.completed': ReleaseWaveCompletedFields;
  'release.paused': ReleasePausedFields;
  'release.completed': ReleaseCompletedFields;
  'release.failed': ReleaseFailedFields;
  'release.rollback.started': ReleaseRollbackStartedFields;
  'release.rolled_back': ReleaseRolledBackFields;
}

/** The payload (`data`) of each event type. Mapped over EventType, so a new type without fields fails to compile. */
export type EventData = { [T in EventType]: EventBase & EventFields[T] };

/** The CloudEvents `type` attribute of an event type. */
export type CloudEventType<T extends EventType = EventType> = `ferry.${T}`;

/**
 * A CloudEvents 1.0 envelope in structured JSON mode. For a union `T` this distributes, so
 * narrowing on `type` narrows `data` too.
 */
export type FerryEvent<T extends EventType = EventType> = T extends EventType ? FerryEventOf<T> : never;

interface FerryEventOf<T extends EventType> {
  specversion: '1.0';
  /** A UUID v4; also the JetStream message id, so a retried publish is stored once. */
  id: string;
  /** Who emitted it: `ferry://receiver/<host>`, `ferry://sender/<hostname>`… */
  source: string;
  type: CloudEventType<T>;
  /** The service name. */
  subject: string;
  time: string;
  datacontenttype: 'application/json';
  /** CloudEvents extension attribute: the correlation id shared by all events of one deployment. */
  deploymentid: string;
  /**
   * CloudEvents extension attribute of a signed release event whose key's rights come from a grant
   * (base64url of the signed grant document, as `X-Ferry-Grant` carries it): the registry checks
   * the signature against the grant's key.
   */
  ferrygrant?: string;
  data: EventData[T];
}

const CLOUD_PREFIX = 'ferry.';

export function cloudEventType<T extends EventType>(type: T): CloudEventType<T> {
  return `${CLOUD_PREFIX}${type}`;
}

/** The Ferry event type of a CloudEvents `type`, or undefined for anything that is not one. */
export function eventTypeOf(cloudType: string): EventType | undefined {
  if (!cloudType.startsWith(CLOUD_PREFIX)) return undefined;
  const type = cloudType.slice(CLOUD_PREFIX.length);
  return (EVENT_TYPES as readonly string[]).includes(type) ? (type as EventType) : undefined;
}

/** What createEvent takes as `data`: the correlation fields come from its own arguments. */
export type EventPayload<T extends EventType> = EventFields[T] & Pick<EventBase, 'image' | 'imageId' | 'release'>;

export interface CreateEventInput<T extends EventType> {
  source: string;
  host: string;
  service: string;
  deploymentId: string;
  data: EventPayload<T>;
}

/** Builds an event; id, time and the fixed CloudEvents attributes are filled in here. */
export function createEvent<T extends EventType>(type: T, input: CreateEventInput<T>): FerryEvent<T> {
  const { source, host, service, deploymentId } = input;
  // Correlation fields lead for whoever reads the JSON, and the arguments win over same-named
  // payload fields so that envelope, subject and payload cannot disagree.
  const correlation = { deploymentId, host, service };
  const data = Object.assign({ ...correlation }, input.data, correlation) as unknown as EventData[T];
  const event: FerryEventOf<T> = {
    specversion: '1.0',
    id: randomUUID(),
    source,
    type: cloudEventType(type),
    subject: service,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    deploymentid: deploymentId,
    data,
  };
  return event as FerryEvent<T>;
}

/** The NATS subject an event is published on: `ferry.events.<host>.<service>.<type>`. */
export function subjectOf(event: FerryEvent): string {
  const type = eventTypeOf(event.type);
  if (type === undefined) throw new TypeError(`Not a Ferry event type: ${event.type}`);
  return eventSubject(event.data.host, event.data.service, type);
}

/** A structural check of a decoded message; events from an unknown newer type are rejected. */
export function isFerryEvent(value: unknown): value is FerryEvent {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  const data = v.data as Record<string, unknown> | null | undefined;
  return v.specversion === '1.0'
    && typeof v.id === 'string'
    && typeof v.type === 'string' && eventTypeOf(v.type) !== undefined
    && typeof v.deploymentid === 'string'
    && typeof data === 'object' && data !== null
    && typeof data.host === 'string' && typeof data.service === 'string';
}
