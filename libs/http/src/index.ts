export { createBaseApp, finishApp, errorHandler, toFerryError, context, type RequestContext } from './app.ts';
export { listen, continueIfExpected, type ListeningServer } from './server.ts';
