import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import express, { type ErrorRequestHandler, type Express, type RequestHandler, type Response } from 'express';
import helmet from 'helmet';
import { FerryError, HEADERS } from '@ferry/protocol';
import type { Logger } from '@ferry/log';
import { closeAfterAnswer } from './server.ts';

const REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** Per-request context kept in `res.locals`, typed in one place. */
export interface RequestContext {
  requestId: string;
  log: Logger;
}

export function context(res: Response): RequestContext {
  return res.locals as RequestContext;
}

/**
 * The part every Ferry service shares: security headers, a request id on every answer and log
 * line, and no framework banner. Routes are added by the service; `finishApp` adds the error tail.
 */
export function createBaseApp(logger: Logger): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple');
  app.use(helmet());
  app.use(((req, res, next) => {
    const given = req.headers[HEADERS.requestId];
    const requestId = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    res.setHeader(HEADERS.requestId, requestId);
    const ctx: RequestContext = { requestId, log: logger.child({ reqId: requestId }) };
    Object.assign(res.locals, ctx);
    next();
  }) satisfies RequestHandler);
  return app;
}

/** Adds the 404 and error handlers; call after the routes. */
export function finishApp(app: Express): Express {
  app.use(((_req, _res, next) => next(new FerryError('FERRY_ERR_NOT_FOUND'))) satisfies RequestHandler);
  app.use(errorHandler);
  return app;
}

/**
 * Maps every thrown error to the protocol's error body. An unknown error is a 500 with a generic
 * message: its text may hold paths or secrets, so it goes to the log, not the client.
 */
export const errorHandler: ErrorRequestHandler = (err: unknown, req, res, _next) => {
  const { log } = context(res);
  const ferryError = cutShort(req, err) ?? toFerryError(err);
  if (ferryError.status >= 500) log.error({ err, code: ferryError.code }, 'request failed');
  else log.info({ code: ferryError.code, method: req.method, path: req.path }, ferryError.message);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  // A refused request may still have a body on the wire; closing is cheaper than reading it all.
  if (!req.readableEnded) closeAfterAnswer(req, res);
  res.status(ferryError.status).json(ferryError.toJSON());
};

/**
 * A body reader fails with Node's own error ("aborted") when the request's connection closed
 * before its body ended: the client's doing, answered as a body that ended early, not a 500.
 */
function cutShort(req: IncomingMessage, err: unknown): FerryError | undefined {
  if (err instanceof FerryError || req.complete || !req.destroyed) return undefined;
  return new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'The body ended early: the connection closed before the end of the body it declared', cause: err });
}

export function toFerryError(err: unknown): FerryError {
  if (err instanceof FerryError) return err;
  // body-parser and friends mark client mistakes with a 4xx status of their own.
  const status = (err as { status?: unknown } | null)?.status;
  if (typeof status === 'number' && status === 413) return new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { cause: err });
  if (typeof status === 'number' && status >= 400 && status < 500) return new FerryError('FERRY_ERR_BAD_REQUEST', { cause: err });
  return new FerryError('FERRY_ERR_INTERNAL', { cause: err });
}
