export type {
  ActualReport, Actual, Desired, DeploymentSummary, Drift, DriftCorrection, DriftField, DriftMode, DriftReason, EngineInfo,
  HistoryEntry, HostRecord, HostStatus, RegistryChange, RegistrySnapshot, RegistryView, ServiceState,
} from './view.ts';
export { createApp, type RegistryDeps, type Readiness, type CheckResult } from './app.ts';
export { loadRegistryConfig, type RegistryConfig } from './config.ts';
export { EventProjector, type ProjectorStatus } from './consumer.ts';
export { correctionDocument, senderCorrector } from './correct.ts';
export { driftReasons, parseDriftIgnore, type DriftIgnoreRule } from './drift.ts';
export { REGISTRY_HELP, runRegistry, startRegistry, VERSION, type RunningRegistry, type StartRegistryOptions } from './main.ts';
export { applyEvent, emptyProjection, HISTORY_LIMIT, HOST_SERVICE, type ProjectionData } from './projection.ts';
export { Registry, type Corrector, type DesiredInput, type HostRegistration, type RegistryOptions } from './registry.ts';
export { matchesSelector as matches, parseSelector, type Selector } from '@ferry/protocol';
export { MemoryStore, RedisStore, STORE_KINDS, type RegistryStore, type StoreKind, type StoreStatus } from './store.ts';
