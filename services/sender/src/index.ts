export { push, type PushRequest, type PushResult, type PushDeps } from './push.ts';
export { buildPackage, producePackage, inspectImage, type BuiltPackage, type ExportedBy, type ImageSource, type ProducedPackage } from './package.ts';
export { planStoreArchive, storeArchiveChunks, streamStoreArchive, type StoreArchivePlan } from './store-archive.ts';
export {
  ReceiverClient, ResumableClient, askLayers, uploadOneShot,
  type Credentials, type DeploymentRecord, type ReceiverTarget, type RetainedRelease, type RetainedService, type ResumableTarget, type TargetLayers, type UploadOptions, type UploadPosition,
} from './receiver-client.ts';
export { uploadResumable, DEFAULT_PART_BYTES, type ResumableOptions } from './resumable.ts';
export { StreamClient, StreamUpload, StreamUnavailable, PartCutter, type StreamOptions, type StreamOutcome, type StreamTarget } from './stream.ts';
export { loadSenderConfig } from './config.ts';
export { resolveTargets, isSelector, type ResolvedTarget, type ResolveOptions } from './targets.ts';
export { desiredRecorder, type Deployed, type DesiredRecorder } from './desired.ts';
export { pushMany, DEFAULT_PARALLEL, type FanoutDeps, type FanoutRequest, type FanoutResult, type TargetResult } from './fanout.ts';
export { retry, pause, backoffDelay, isCallCut, isRetryable, systemClock, DEFAULT_BACKOFF, type Clock, type BackoffPolicy, type RetryOptions } from './retry.ts';
export { runDeployment, continueDeployment, pendingOutcomes, type DeployDeps, type DeployOptions, type DeploymentOutcome, type ReleaseStep, type ServiceOutcome, type TargetOutcome } from './deploy.ts';
export { planRelease, type PlannedService, type ReleasePlan } from './release/plan.ts';
export { PausedReleases, REFUSED_TO_GO_ON, planDigest, type PausedRelease } from './release/paused.ts';
export { planWaves, type Wave } from './release/waves.ts';
export { backToRelease, type BackToReleaseRequest, type BackToReleaseResult, type HostProblem, type ReturnPlan, type ServiceReturn } from './release/back-to.ts';
export {
  loadDeploymentFile, parseDeploymentJson, parseDeploymentText, validateDeployment, formatProblem, phasesOf, serviceSpecOf,
  type DependencyCondition, type DeploymentDocument, type Phase, type Problem, type ServiceEntry, type Rollout, type WaveSpec,
} from './deployfile/index.ts';
export { LayerFilter, identifyLayer, omittableLayers } from './layer-filter.ts';
export { layersToOmit, type CompressionChoice } from './negotiate.ts';
export {
  chooseCompression, decideFromMeasure, isLoopbackAddress, isPrivateAddress, linkClass, sampleZstd, ZSTD_LEVELS,
  type CompressionDecision, type LinkClass, type LinkMeasure, type MeasuredDecision,
} from './compression.ts';
export { deliver, DEFAULT_SLOW_AFTER_MS, RESUMABLE_THRESHOLD_BYTES, type DeliveryDeps, type DeliveryRequest, type DeliveryResult, type PackageTotal, type TargetState } from './deliver.ts';
export { Broadcast, Branch, SlowBranch } from './broadcast.ts';
export { buildImage, buildBeforePush, type BuildRequest } from './build.ts';
export { closest } from './deployfile/problems.ts';
