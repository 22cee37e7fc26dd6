export { runCli, report, HELP } from './cli/index.ts';
export { processIo, type Io } from './cli/io.ts';
export { push, type PushRequest, type PushResult, type PushDeps } from './push.ts';
export { buildPackage, inspectImage, type BuiltPackage } from './package.ts';
export { uploadOneShot, type Credentials, type UploadOptions } from './upload.ts';
export { ResumableClient, uploadResumable, DEFAULT_PART_BYTES, type ResumableOptions, type ResumableTarget, type UploadPosition } from './resumable.ts';
export { loadSenderConfig } from './config.ts';
export { pushMany, DEFAULT_PARALLEL, type FanoutRequest, type FanoutResult, type TargetResult } from './fanout.ts';
export { retry, backoffDelay, isRetryable, systemClock, DEFAULT_BACKOFF, type Clock, type BackoffPolicy } from './retry.ts';
