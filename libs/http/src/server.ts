import { STATUS_CODES, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { FerryError, type ErrorCode } from '@ferry/protocol';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface ListeningServer {
  server: Server;
  url: string;
  /**
   * Stops accepting, lets requests in flight finish for `graceMs` (default 10 s), then cuts what
   * is left: a stuck client must not keep a stopping service alive.
   */
  close(graceMs?: number): Promise<void>;
}

/** Limits on what a client may make the server wait for or hold; every field has a safe default. */
export interface ListenOptions {
  /** PEM certificate chain and key: with them the server speaks HTTPS only. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Largest request head, in bytes (431 beyond). Default 16 KiB. */
  maxHeaderBytes?: number;
  /** The whole request head must arrive within this (408 otherwise). Default 30 s. */
  headersTimeoutMs?: number;
  /** The whole request, body included, must arrive within this; 0 = no limit (the default, as uploads may be large: a minimum rate guards the body instead). */
  requestTimeoutMs?: number;
  /** An idle kept-alive connection is closed after this. Default 5 s. */
  keepAliveTimeoutMs?: number;
}

const DEFAULTS = { maxHeaderBytes: 16 * 1024, headersTimeoutMs: 30_000, requestTimeoutMs: 0, keepAliveTimeoutMs: 5_000 } as const;

/**
 * Listens with `Expect: 100-continue` handed to the app instead of answered by Node: the app
 * authenticates from the headers and only then asks for the body, so a refused upload is never sent.
 * Requests Node's own parser refuses (duplicate or malformed Content-Length, Content-Length with
 * Transfer-Encoding, oversized or late heads) get a Ferry error body and a closed connection.
 */
export async function listen(handler: Handler, host: string, port: number, options: ListenOptions = {}): Promise<ListeningServer> {
  const limits = { ...DEFAULTS, ...options };
  const timeouts = [limits.headersTimeoutMs, limits.requestTimeoutMs].filter((ms) => ms > 0);
  const settings = {
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // Node checks the two timeouts above only this often (30 s by default); short limits need a finer check.
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, ...timeouts.map((ms) => Math.floor(ms / 2)))),
  };
  const server: Server = options.tls
    ? createTlsServer({ ...settings, cert: options.tls.cert, key: options.tls.key }, handler)
    : createServer(settings, handler);
  server.on('checkContinue', handler);
  server.on('clientError', answerClientError);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  let closing: Promise<void> | undefined;
  return {
    server,
    url: `${options.tls ? 'https' : 'http'}://${shownHost}:${address.port}`,
    close: (graceMs = 10_000) => {
      closing ??= new Promise<void>((resolve) => {
        const cut = setTimeout(() => server.closeAllConnections(), graceMs).unref();
        server.close(() => {
          clearTimeout(cut);
          resolve();
        });
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}

/**
 * How long, and for how many bytes, the connection of a request refused before its body was read
 * is still read after the answer: enough for the answer to reach the client, bounded so a client
 * that keeps sending cannot hold the connection.
 */
const LINGER = { ms: 5_000, bytes: 64 * 1024 ** 2, pollMs: 50 } as const;

/**
 * Answers with `Connection: close` and closes the connection the way RFC 9112 §9.6 asks, for a
 * request whose body is still on the wire (a refusal decided from its headers). Closing a socket
 * that holds unread bytes makes the kernel send a reset, which can discard the answer before the
 * client reads it: a client still writing its body then sees only EPIPE and waits on. So once the
 * answer is flushed only the sending side is closed, and what the client still sends is read and
 * dropped until it closes its side, for at most {@link LINGER}; then the connection is cut.
 * Call before the answer is sent.
 */
export function closeAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader('Connection', 'close');
  const socket = res.socket;
  // A body destroyed half-read (a failed pipeline) stops the parser at its next chunk, so there
  // is nothing to drop the rest with: that connection closes as Node closes it.
  if (socket === null || req.destroyed) return;
  // Node's server calls destroySoon() on the socket of a `Connection: close` answer once that
  // answer is flushed; the request's unread body is resumed (dropped) by then.
  socket.destroySoon = () => linger(socket);
}

function linger(socket: Socket): void {
  if (socket.destroyed) return;
  const until = socket.bytesRead + LINGER.bytes;
  const started = performance.now();
  // Polled, not a 'data' listener: one would take the socket away from the HTTP parser, which
  // reads (and drops) the body natively.
  const timer = setInterval(() => {
    if (socket.bytesRead > until || performance.now() - started >= LINGER.ms) cut();
  }, LINGER.pollMs).unref();
  const cut = (): void => {
    clearInterval(timer);
    socket.destroy();
  };
  socket.once('end', cut);
  socket.once('close', () => clearInterval(timer));
  socket.end();
}

/** Sends `100 Continue` when the client waits for it; a no-op otherwise. Call once auth passed. */
export function continueIfExpected(req: IncomingMessage, res: ServerResponse): void {
  if (req.headers.expect?.toLowerCase() === '100-continue' && !res.headersSent) res.writeContinue();
}

function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  // An answer already under way cannot be replaced by another one; a reset peer reads nothing.
  const inProgress = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (err.code === 'ECONNRESET' || !socket.writable || inProgress?.headersSent) {
    socket.destroy();
    return;
  }
  const code: ErrorCode = err.code === 'HPE_HEADER_OVERFLOW' ? 'FERRY_ERR_HEADERS_TOO_LARGE'
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'FERRY_ERR_REQUEST_TIMEOUT'
      : 'FERRY_ERR_BAD_REQUEST';
  const error = code === 'FERRY_ERR_BAD_REQUEST'
    ? new FerryError(code, { message: `Malformed request: ${parserReason(err)}` })
    : new FerryError(code);
  const body = JSON.stringify(error.toJSON());
  socket.end(
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\n`
    + `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

// llhttp's reasons name the rule broken ("Duplicate Content-Length"); they never echo the bytes.
function parserReason(err: NodeJS.ErrnoException): string {
  const reason = (err as { reason?: unknown }).reason;
  return typeof reason === 'string' && reason.length > 0 ? reason : (err.code ?? 'unparseable request');
}

/**
 * Runs a started service in the foreground: resolves once SIGINT or SIGTERM arrived and `service`
 * closed. The handlers go away at the first signal, so a second one kills the process as usual.
 */
export async function runUntilSignal(service: { close(): Promise<void> }): Promise<void> {
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void service.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}
