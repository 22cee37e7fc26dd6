/**
 * The registry's data model and its read model for the dashboard. Every type here is part of the
 * HTTP contract of docs/registry.md: what the API answers is exactly these shapes as JSON.
 */

import type { ActualReport, DriftCorrection, HostRecord } from '@ferry/auth';
import type { ServiceQuality } from './quality.ts';
import type { ProjectedRelease, ReleaseSummary } from './releases.ts';

export type { ProjectedRelease, ReleaseSummary, ServiceQuality };

// A registered host (times ISO 8601), a heartbeat's report for one service and a drift
// correction's record: the wire contract the clients in @ferry/auth speak, defined there once.
export type { ActualReport, DriftCorrection, HostRecord };

/** What a receiver's engine is, as it registered it. */
export type EngineInfo = HostRecord['engine'];

export type HostStatus = HostRecord['status'];

/** What the sender recorded after a successful deployment (`PUT /v1/desired/:host/:service`). */
export interface Desired {
  deploymentId: string;
  image: string;
  imageId: string;
  configHash: string;
  /**
   * The manifest's `service` object (libs/protocol ServiceSpec) as the sender sent it, with each
   * `env` value replaced by a keyed digest (`hmac-sha256:…`): the registry never holds a value.
   * For display only: nothing the registry does is made from it.
   */
  service: Record<string, unknown>;
  /** The receiver URL the deployment went to, as the sender says; never dialled by the registry. */
  targetUrl: string;
  /** The key that recorded it. */
  recordedBy?: string;
  recordedAt: string;
}

/**
 * What runs on the host. A heartbeat report replaces it (source `heartbeat`); between heartbeats a
 * completed deployment or rollback seen on the event stream updates it (source `events`).
 */
export interface Actual extends ActualReport {
  source: 'heartbeat' | 'events';
  reportedAt: string;
}

export type DriftField = 'imageId' | 'configHash' | 'state' | 'restarts' | 'missing';

export interface DriftReason {
  field: DriftField;
  desired: unknown;
  actual: unknown;
}

export type DriftMode = 'warn' | 'correct';

/** A difference between desired and actual state; one episode lasts until the two agree again. */
export interface Drift {
  reasons: DriftReason[];
  /** When this episode began. */
  since: string;
  mode: DriftMode;
  correction?: DriftCorrection;
}

/** One deployment as the event projection knows it. */
export interface DeploymentSummary {
  deploymentId: string;
  host: string;
  service: string;
  image?: string;
  imageId?: string;
  /** The container it started, once `container.started` was seen. */
  containerId?: string;
  /** `running` until a terminal event: `succeeded` (deployment.completed), `failed`, `rolled_back`. */
  state: 'running' | 'succeeded' | 'failed' | 'rolled_back';
  /** The last event type seen for it, e.g. `image.loaded`. */
  lastEvent: string;
  startedAt: string;
  updatedAt: string;
  finishedAt?: string;
  error?: { code: string; reason: string };
  /** The receiver's total time of a succeeded deployment (deployment.completed `timings.total`). */
  durationMs?: number;
  /** Set when the receiver rolled back in it: `restored` when rollback.completed named a container it brought back. */
  rollback?: { restored: boolean };
  /** The release it belongs to, as its events carry it (`data.release`). */
  release?: { id: string; phase: number; wave?: number };
}

/** One entry of a service's history: a projected event, newest first in answers. */
export interface HistoryEntry {
  /** The CloudEvent id. */
  id: string;
  type: string;
  time: string;
  host: string;
  service: string;
  deploymentId: string;
  image?: string;
  imageId?: string;
  /** The event's type-specific fields, verbatim. */
  data: Record<string, unknown>;
}

/** Desired, actual and drift of one service on one host. */
export interface ServiceState {
  host: string;
  service: string;
  desired: Desired | null;
  actual: Actual | null;
  drift: Drift | null;
  lastDeployment: DeploymentSummary | null;
}

/** A live change. `event` carries each projected CloudEvent (libs/events FerryEvent) as it arrives. */
export type RegistryChange =
  | { kind: 'host'; data: HostRecord }
  | { kind: 'service'; data: ServiceState }
  | { kind: 'deployment'; data: DeploymentSummary }
  | { kind: 'release'; data: ReleaseSummary }
  | { kind: 'quality'; data: ServiceQuality }
  | { kind: 'event'; data: unknown };

export interface RegistrySnapshot {
  hosts: HostRecord[];
  services: ServiceState[];
  /** Newest first. */
  deployments: DeploymentSummary[];
  /** Newest first; absent from a view that projects no releases. */
  releases?: ReleaseSummary[];
  /** Per service, over its last deployments (quality.ts). */
  quality?: ServiceQuality[];
}

/**
 * The read model the dashboard renders: a snapshot to start from, then live changes. A listener
 * must not throw or block; a slow consumer should queue on its side.
 */
export interface RegistryView {
  snapshot(): Promise<RegistrySnapshot>;
  /** Returns the function that unsubscribes. */
  subscribe(listener: (change: RegistryChange) => void): () => void;
}
