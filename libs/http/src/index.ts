export { createBaseApp, finishApp, errorHandler, toFerryError, context, type RequestContext } from './app.ts';
export { healthRouter, type CheckResult, type CheckStatus, type ProbeDeps, type Readiness } from './health.ts';
export { identityRouter, type IdentityDeps } from './identity.ts';
export { minimumBodyRate, strictHeaders, type BodyRateOptions } from './guards.ts';
export { listen, continueIfExpected, runUntilSignal, type ListenOptions, type ListeningServer } from './server.ts';
export {
  requireSignature, requireAllowedSource, SIGNED_HEADERS,
  type AuthLocals, type SourceLocals, type AuthHooks, type SourceOptions, type SecurityOptions,
} from './signature.ts';
export { parseJson, readBody, readSignedJson, type SignedJsonOptions } from './body.ts';
