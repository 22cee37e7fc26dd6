export { DEFAULT_POLICY, ENGINE_SOCKETS, bindSourceRule, evaluate, globMatch, repositoryOf, within, type Policy, type Violation } from './policy.ts';
export { PolicyFileSchema, loadPolicy, type PolicyFile, type PolicySources } from './load.ts';
export { PolicyGate, policyDenied, type PolicyGateDeps } from './gate.ts';
export { containerSpecFor } from './spec.ts';
export { checkBindSources, resolveBindSource, type HostBindSource } from './binds.ts';
