export { createApp, type ReceiverDeps } from './app.ts';
export { loadReceiverConfig, type ReceiverConfig } from './config.ts';
export { Deployer, type DeployerDeps } from './deploy/engine.ts';
// Kept here for the receiver's callers; the function lives in @ferry/protocol, which the sender shares.
export { configHash } from '@ferry/protocol';
export { startReceiver, runReceiver, VERSION, type RunningReceiver } from './main.ts';
export {
  DEFAULT_POLICY, PolicyGate, containerSpecFor, evaluate, globMatch, loadPolicy, repositoryOf, within,
  type Policy, type PolicySources, type Violation,
} from './policy/index.ts';
export { probeHttp, probeTcp, waitHealthy, type HealthOutcome } from './deploy/health.ts';
export { ArchiveInspector, UNPACK_FLOOR, UNPACK_MAX, UNPACK_RATIO, unpackLimit, type ArchiveExpectation, type ArchiveStats } from './load/archive.ts';
export { PARTIAL_LABEL, loadLayered, removePartialImages, type LayeredExpectation } from './load/layered.ts';
export { loadArchive, loadVerified, sanitizeEngineMessage, type LoadDeps, type LoadOutcome, type LoadablePackage } from './load/load.ts';
export { SpentPackage, SpooledPackage, StreamedPackage, VerifiedPackage, type PackageFacts } from './load/package.ts';
export { Admission, type AdmissionDeps, type Admitted, type SignedRequest, type UploadKind } from './upload/admission.ts';
export { PackageStore, type StoredPackage } from './store/packages.ts';
export { Registration, actualServices, advertisedUrl, backoffMs, engineFacts, receiverRegistration, settledServices, type RegistrationDeps } from './registration/index.ts';
export { LayerInventory, isContainerdStore, layersRouter, type ImageStoreKind, type LayerAnswer, type LayerEngine } from './layers/index.ts';
export { applyBundle, type ApplyOptions, type ApplyResult, type ApplyStep, type AppliedService } from './bundle/apply.ts';
export { authorizeBundle, trustedSigner, type BundleAuthority } from './bundle/authorize.ts';
