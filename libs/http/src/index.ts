export { createBaseApp, finishApp, errorHandler, toFerryError, context, type RequestContext } from './app.ts';
export { minimumBodyRate, strictHeaders, type BodyRateOptions } from './guards.ts';
export { listen, continueIfExpected, type ListenOptions, type ListeningServer } from './server.ts';
export {
  requireSignature, requireAllowedSource, SIGNED_HEADERS,
  type AuthLocals, type SourceLocals, type AuthHooks, type SourceOptions, type SecurityOptions,
} from './signature.ts';
