import { randomUUID } from 'node:crypto';
import {
  EVENT_TYPES, eventSubject,
  type Compression, type DeploymentState, type ErrorCode, type EventType, type ProbeResult, type StageTimings,
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

export interface RollbackStartedFields {
  reason: string;
}

export interface RollbackCompletedFields {
  /** Absent when there was no previous container to bring back. */
  restoredContainerId?: string;
  durationMs: number;
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
  'rollback.started': RollbackStartedFields;
  'rollback.completed': RollbackCompletedFields;
  'host.registered': HostRegisteredFields;
  'host.lost': HostLostFields;
  'drift.detected': DriftDetectedFields;
  'policy.denied': PolicyDeniedFields;
  'grant.grace': GrantGraceFields;
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
export type EventPayload<T extends EventType> = EventFields[T] & Pick<EventBase, 'image' | 'imageId'>;

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
