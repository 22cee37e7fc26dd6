import type { IncomingMessage } from 'node:http';
import type { RequestHandler } from 'express';
import { FerryError } from '@ferry/protocol';
import { context } from './app.ts';

/** Headers that may appear at most once on any request, whatever the route. */
const ALWAYS_UNIQUE = ['host', 'content-length', 'transfer-encoding', 'content-type', 'expect'] as const;

/**
 * Refuses, with 400 and a closed connection, what Node's parser lets through but a Ferry request
 * must not have: a repeated header from `unique` (Node would join them into one value, which two
 * layers could read differently), a Transfer-Encoding other than `chunked`, or one on HTTP/1.0.
 * (Duplicate or malformed Content-Length and Content-Length with Transfer-Encoding never get here:
 * Node's parser refuses them, and `listen` answers that refusal.)
 */
export function strictHeaders(unique: readonly string[]): RequestHandler {
  const names = new Set([...ALWAYS_UNIQUE, ...unique].map((n) => n.toLowerCase()));
  return (req, res, next) => {
    const problem = headerProblem(req, names);
    if (problem === undefined) return next();
    // Whatever body follows is not worth reading, and the connection's framing is in doubt.
    res.setHeader('Connection', 'close');
    next(new FerryError('FERRY_ERR_BAD_REQUEST', { message: `Malformed request: ${problem.message}`, details: { header: problem.header } }));
  };
}

function headerProblem(req: IncomingMessage, unique: ReadonlySet<string>): { header: string; message: string } | undefined {
  const seen = new Set<string>();
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = (req.rawHeaders[i] ?? '').toLowerCase();
    if (!unique.has(name)) continue;
    if (seen.has(name)) return { header: name, message: `${name} appears more than once` };
    seen.add(name);
  }
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) {
    if (te.trim().toLowerCase() !== 'chunked') return { header: 'transfer-encoding', message: 'the only transfer coding accepted is "chunked"' };
    if (req.httpVersion === '1.0') return { header: 'transfer-encoding', message: 'Transfer-Encoding is not allowed on HTTP/1.0' };
  }
  return undefined;
}

export interface BodyRateOptions {
  /** Bytes per second the body must average over each window; 0 turns the check off. */
  minBytesPerSecond: number;
  windowMs: number;
}

/**
 * Cuts off a client that sends its body too slowly (a byte every few seconds holds a connection,
 * a spool file and a deployment slot for ever): every `windowMs`, fewer than
 * `minBytesPerSecond × windowMs / 1000` new bytes destroy the connection. A window in which the
 * server itself held unread bytes does not count, since then the slow side is the server.
 * Put it after authentication: the clock starts when the client is asked for the body.
 */
export function minimumBodyRate(options: BodyRateOptions): RequestHandler {
  const minBytes = (options.minBytesPerSecond * options.windowMs) / 1000;
  return (req, res, next) => {
    if (options.minBytesPerSecond <= 0 || !hasBody(req) || req.complete) return next();
    const socket = req.socket;
    let last = socket.bytesRead;
    const timer = setInterval(() => {
      const read = socket.bytesRead;
      const arrived = read - last;
      last = read;
      if (req.complete || socket.destroyed) return stop();
      // Unread bytes in our buffers mean the reader is the slow side (a paused pipe, a pending
      // fsync); a slow client leaves them empty, since Node reads the socket until they fill.
      const serverHolds = req.readableLength > 0 || socket.readableLength > 0;
      if (arrived >= minBytes || serverHolds) return;
      context(res).log.info({ arrivedBytes: arrived, windowMs: options.windowMs, minBytesPerSecond: options.minBytesPerSecond }, 'request body too slow: connection closed');
      stop();
      socket.destroy();
    }, options.windowMs);
    timer.unref();
    const stop = (): void => clearInterval(timer);
    req.once('end', stop);
    res.once('close', stop);
    next();
  };
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}
