export { createBaseApp, finishApp, errorHandler, toFerryError, context, type RequestContext } from './app.ts';
export { minimumBodyRate, strictHeaders, type BodyRateOptions } from './guards.ts';
export { listen, continueIfExpected, type ListenOptions, type ListeningServer } from './server.ts';
