export type {
  ActualReport, Actual, Desired, DeploymentSummary, Drift, DriftCorrection, DriftField, DriftMode, DriftReason, EngineInfo,
  HistoryEntry, HostRecord, HostStatus, ProjectedRelease, RegistryChange, RegistrySnapshot, RegistryView, ReleaseSummary, ServiceQuality, ServiceState,
} from './view.ts';
export { createApp, type RegistryDeps, type Readiness, type CheckResult } from './app.ts';
export { loadRegistryConfig, type RegistryConfig } from './config.ts';
export { EventProjector, type ProjectorStatus } from './consumer.ts';
export { receiverCorrector } from './correct.ts';
export { driftReasons, parseDriftIgnore, type DriftIgnoreRule } from './drift.ts';
export {
  EnrollmentProof, Enrollments, DEFAULT_TOKEN_TTL_SECONDS, MAX_OPEN_TOKENS, MAX_TOKEN_TTL_SECONDS,
  type Enrollment, type IssuedToken, type JoinTokenRecord, type PreviousHostKey, type TokenRequest,
} from './enrollment.ts';
export {
  admitEvent, DROP_REASONS, releaseClaims, releaseSignerKeys, type Admission, type DropReason, type ProvenanceKeys, type ReleaseClaims,
} from './provenance.ts';
export { DEFAULT_QUALITY_WINDOW, MAX_QUALITY_WINDOW, serviceQuality } from './quality.ts';
export {
  applyReleaseEvent, listReleases, MAX_RELEASE_HOSTS, MAX_RELEASE_OUTCOMES, MAX_RELEASE_SERVICES, RELEASES_LIMIT, releaseSummary,
} from './releases.ts';
export { REGISTRY_HELP, runRegistry, startRegistry, VERSION, type RunningRegistry, type StartRegistryOptions } from './main.ts';
export { applyEvent, emptyProjection, HISTORY_LIMIT, HOST_SERVICE, type ProjectionData } from './projection.ts';
export {
  DEFAULT_MAX_HOSTS, ENV_DIGEST_PATTERN, Registry, type CorrectionTarget, type Corrector, type DesiredInput, type HostRegistration, type RegistryOptions,
} from './registry.ts';
export { registryAction } from './routes.ts';
export { matchesSelector as matches, parseSelector, type Selector } from '@ferry/protocol';
export { DURABLE_KINDS, MemoryStore, RedisStore, STORE_KINDS, type RegistryStore, type StoreKind, type StoreStatus } from './store.ts';
