export { createApp, type ReceiverDeps } from './app.ts';
export { loadReceiverConfig, type ReceiverConfig } from './config.ts';
export { Deployer, configHash, type DeployerDeps } from './deploy/engine.ts';
export { startReceiver, runReceiver, VERSION, type RunningReceiver } from './main.ts';
export {
  DEFAULT_POLICY, PolicyGate, containerSpecFor, evaluate, globMatch, loadPolicy, repositoryOf, within,
  type Policy, type PolicySources, type Violation,
} from './policy/index.ts';
export { probeHttp, probeTcp, waitHealthy, type HealthOutcome } from './deploy/health.ts';
export { ArchiveInspector, UNPACK_FLOOR, UNPACK_MAX, UNPACK_RATIO, unpackLimit, type ArchiveExpectation, type ArchiveStats } from './load/archive.ts';
export { loadVerified, sanitizeEngineMessage, type LoadDeps, type LoadOutcome, type LoadablePackage } from './load/load.ts';
export { PackageStore, type StoredPackage } from './store/packages.ts';
