export { createApp, MAX_DOCUMENT_BYTES, type SenderServiceDeps } from './app.ts';
export { loadSenderServiceConfig, DEFAULT_LISTEN, type SenderServiceConfig } from './config.ts';
export { DeploymentJobs, jobView, type JobView, type JobsOptions, type Runner } from './jobs.ts';
export { startSenderService, runSenderService, SENDER_SERVICE_HELP, SENDER_SERVICE_VERSION, type RunningSenderService } from './main.ts';
export { JobStore, type JobRecord, type JobState } from './store.ts';
