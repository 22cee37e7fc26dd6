export { loadDeploymentFile, parseDeploymentJson, parseDeploymentText, MAX_FILE_BYTES, type ParseOptions, type ParseResult } from './parse.ts';
export { formatPath, formatProblem, invalidDocument, type Problem } from './problems.ts';
export { serviceSpecOf, validateDeployment, type BuildSpec, type DeploymentDocument, type ServiceEntry, type ValidateOptions } from './schema.ts';
export { orderPhases, phasesOf, MAX_PHASES, type DependencyCondition, type OrderInput, type Phase } from './phases.ts';
export { parseRollout, allowedUnhealthy, MAX_WAVES, MAX_PAUSE_MS, type MaxUnhealthy, type Rollout, type WaveHosts, type WavePause, type WaveSpec } from './rollout.ts';
