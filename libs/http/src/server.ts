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
  /**
   * Most connections held open at once. Default 1024. At the limit a new connection takes the
   * place of the one idle for longest (no request in progress: its head is not complete yet, or it
   * waits between requests); when every connection is in a request, the new one is closed.
   */
  maxConnections?: number;
}

const DEFAULTS = { maxHeaderBytes: 16 * 1024, headersTimeoutMs: 30_000, requestTimeoutMs: 0, keepAliveTimeoutMs: 5_000, maxConnections: 1024 } as const;

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
    // headersTimeout starts once the TLS handshake is done; until then the handshake's own timeout is the bound.
    ? createTlsServer({ ...settings, handshakeTimeout: limits.headersTimeoutMs, cert: options.tls.cert, key: options.tls.key }, handler)
    : createServer(settings, handler);
  server.on('checkContinue', handler);
  server.on('clientError', answerClientError);
  const connections = new ConnectionLimit(limits.maxConnections);
  server.on('connection', (socket: Socket) => connections.admit(socket));
  server.on('request', (req: IncomingMessage, res: ServerResponse) => connections.track(req, res));
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => connections.track(req, res));
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
 * Keeps a server's open connections at or under `max`, so that sockets opened and left idle (or
 * fed a byte at a time) cannot take every file descriptor the process has, and with them its way
 * to the Docker engine, Redis or NATS. Node's own `server.maxConnections` refuses newcomers once
 * full, which would let such sockets lock honest clients out until they time out; here a newcomer
 * instead replaces the connection that has been idle for longest. A connection in a request is
 * never replaced: it passed the head, and a signed route decides quickly what to do with it.
 *
 * Connections are known by their peer's address and port: the one identity a TLS server's raw
 * socket ('connection') and the TLS socket its requests arrive on ('request') share.
 */
class ConnectionLimit {
  readonly #max: number;
  /** Connections without a request in progress, the longest idle first (a Map keeps insertion order). */
  readonly #idle = new Map<string, Socket>();
  /** Connections in a request, with how many of their requests are in progress (pipelining). */
  readonly #busy = new Map<string, { socket: Socket; requests: number }>();

  constructor(max: number) {
    this.#max = max;
  }

  admit(socket: Socket): void {
    const key = peerOf(socket);
    // A peer gone before it was accepted has no address left, and nothing worth keeping.
    if (key === undefined) {
      socket.destroy();
      return;
    }
    if (this.#idle.size + this.#busy.size >= this.#max) {
      const oldest = this.#idle.entries().next();
      if (oldest.done === true) {
        socket.destroy();
        return;
      }
      this.#idle.delete(oldest.value[0]);
      oldest.value[1].destroy();
    }
    this.#idle.set(key, socket);
    socket.once('close', () => {
      if (this.#idle.get(key) === socket) this.#idle.delete(key);
      if (this.#busy.get(key)?.socket === socket) this.#busy.delete(key);
    });
  }

  /** A request head arrived: its connection is busy until the answer is done. */
  track(req: IncomingMessage, res: ServerResponse): void {
    const key = peerOf(req.socket);
    if (key === undefined) return;
    const socket = this.#idle.get(key);
    const busy = this.#busy.get(key);
    if (socket !== undefined) {
      this.#idle.delete(key);
      this.#busy.set(key, { socket, requests: 1 });
    } else if (busy !== undefined) {
      busy.requests += 1;
    } else {
      return;
    }
    res.once('close', () => {
      const entry = this.#busy.get(key);
      if (entry === undefined) return;
      entry.requests -= 1;
      if (entry.requests > 0) return;
      this.#busy.delete(key);
      // Back at the end of the idle order: now it is the connection idle for the shortest time.
      if (!entry.socket.destroyed) this.#idle.set(key, entry.socket);
    });
  }
}

function peerOf(socket: Socket): string | undefined {
  const { remoteAddress, remotePort } = socket;
  return remoteAddress === undefined || remotePort === undefined ? undefined : `${remoteAddress}|${remotePort}`;
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

/**
 * Connections whose refusal is decided. The parser, once failed, fails again on every chunk that
 * still arrives and on the client's FIN; those change nothing.
 */
const refused = new WeakSet<Socket>();

/**
 * Answers what Node's parser refused. When the request before the refused bytes is complete (a
 * body longer than its `Content-Length`: the rest is read as the next request), that request is
 * still answered first, whole, as RFC 9112 §9.3 keeps answers in request order; the 400 follows
 * it and the connection closes. Closing at once would take that answer and, with the connection,
 * the request itself (a resumable part its client sent whole and right).
 */
function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (refused.has(socket)) return;
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  refused.add(socket);
  const inProgress = answerOf(socket);
  if (inProgress?.req.complete === true) {
    afterAnswers(socket, () => refuse(err, socket));
    return;
  }
  // An answer already under way cannot be replaced by another one.
  if (inProgress?.headersSent === true) {
    socket.destroy();
    return;
  }
  refuse(err, socket);
}

function answerOf(socket: Socket): ServerResponse | undefined {
  return (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage ?? undefined;
}

/** Runs `then` once every answer the connection owes has gone out, if the connection is still open for writing. */
function afterAnswers(socket: Socket, then: () => void): void {
  const res = answerOf(socket);
  if (res === undefined) {
    // The last answer may have closed the connection itself (Connection: close); then it stays closed.
    if (socket.writable) then();
    return;
  }
  res.once('finish', () => afterAnswers(socket, then));
}

function refuse(err: NodeJS.ErrnoException, socket: Socket): void {
  const code: ErrorCode = err.code === 'HPE_HEADER_OVERFLOW' ? 'FERRY_ERR_HEADERS_TOO_LARGE'
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'FERRY_ERR_REQUEST_TIMEOUT'
      : 'FERRY_ERR_BAD_REQUEST';
  const error = code === 'FERRY_ERR_BAD_REQUEST'
    ? new FerryError(code, { message: err.code === 'HPE_INVALID_EOF_STATE' ? BODY_ENDED_EARLY : `Malformed request: ${parserReason(err)}` })
    : new FerryError(code);
  const body = JSON.stringify(error.toJSON());
  socket.end(
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\n`
    + `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
  // end() closes only our side: the server allows half-open connections, so a peer that never
  // closes its own (a socket opened and left idle until the headers timeout) would keep this
  // one, and its descriptor, for ever. It gets as long as a lingering refusal to read the answer.
  const cut = setTimeout(() => socket.destroy(), LINGER.ms).unref();
  socket.once('close', () => clearTimeout(cut));
}

/** The client closed its side while a request's body was still due (Content-Length or chunked). */
const BODY_ENDED_EARLY = 'The body ended early: the client closed its side before the end of the body it declared';

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
