/**
 * HTTP/1.1 spoken by hand over a real socket, for tests that must send what well-behaved clients
 * never send (duplicate headers, bad lengths, a body one byte at a time) and observe exactly what
 * the server did: its status, whether it asked for the body, whether it closed the connection.
 */
import { connect, type Socket } from 'node:net';
import { signRequest, type SigningKey } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';

export interface RawAnswer {
  status: number;
  /** Lower-cased header names. */
  headers: Record<string, string>;
  body: string;
  /** The `error.code` of a Ferry error body, if the body is one. */
  code: string | undefined;
  /** Body bytes written before the server's final answer arrived. */
  bodyBytesSent: number;
}

export interface RawRequest {
  /** Request line and header lines, without CRLFs or the blank line. */
  head: string[];
  body?: Buffer;
  /** Send the body only after `100 Continue` (the head should carry `Expect: 100-continue`). */
  waitForContinue?: boolean;
}

/**
 * Sends the request and resolves once the server has closed the connection: a test that needs
 * the connection closed gets that proof from the promise resolving (a server that keeps it open
 * makes the test hang until the runner's timeout fails it). Add `Connection: close` to the head
 * when the closing itself is not what is tested.
 */
export function rawRequest(url: string, request: RawRequest): Promise<RawAnswer> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(Number(port), hostname.replace(/^\[|\]$/g, ''));
    let received = Buffer.alloc(0);
    let bodyBytesSent = 0;
    let answered = false;
    const sendBody = (): void => {
      if (!request.body || answered) return;
      socket.write(request.body);
      bodyBytesSent += request.body.length;
    };
    socket.on('connect', () => {
      socket.write(`${request.head.join('\r\n')}\r\n\r\n`);
      if (!request.waitForContinue) sendBody();
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const text = received.toString('latin1');
      if (text.startsWith('HTTP/1.1 100')) {
        const end = text.indexOf('\r\n\r\n');
        if (end < 0) return;
        received = received.subarray(end + 4);
        sendBody();
      } else if (text.includes('\r\n\r\n')) {
        answered = true;
      }
    });
    // The server closing first is what tests observe; a write racing that close is not a failure.
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err);
    });
    socket.on('close', () => resolve(parseAnswer(received.toString('utf8'), bodyBytesSent)));
  });
}

export function parseAnswer(text: string, bodyBytesSent = 0): RawAnswer {
  const end = text.indexOf('\r\n\r\n');
  const [statusLine = '', ...lines] = (end < 0 ? text : text.slice(0, end)).split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const body = end < 0 ? '' : text.slice(end + 4);
  let code: string | undefined;
  try {
    code = (JSON.parse(body) as { error?: { code?: string } }).error?.code;
  } catch {
    code = undefined;
  }
  return { status: Number(statusLine.split(' ')[1] ?? 0), headers, body, code, bodyBytesSent };
}

export interface SignedOptions {
  method?: string;
  path?: string;
  digest?: string;
  offset?: number | string;
  now?: number;
  nonce?: string;
  /** A grant to present in `X-Ferry-Grant` (base64url of the signed document). */
  grant?: string;
}

/** The six X-Ferry-* headers (seven with a grant) for a request to the receiver `audience`. */
export function signed(key: SigningKey, audience: string, options: SignedOptions = {}): Record<string, string> {
  return signRequest({
    method: options.method ?? 'GET', path: options.path ?? '/v1/auth-probe', contentDigest: options.digest ?? digestOf(''),
    audience, keyId: key.keyId, privateKey: key.privateKey,
    ...(options.grant === undefined ? {} : { grant: options.grant }),
    ...(options.offset === undefined ? {} : { offset: options.offset }),
    ...(options.now === undefined ? {} : { now: options.now }),
    ...(options.nonce === undefined ? {} : { nonce: options.nonce }),
  });
}

/** Header lines for `head`, from a header map. */
export function lines(headers: Record<string, string>): string[] {
  return Object.entries(headers).map(([name, value]) => `${name}: ${value}`);
}

export interface ProbeAnswer {
  status: number;
  code: string | undefined;
  details: Record<string, unknown> | undefined;
}

/**
 * A signed `GET /v1/auth-probe`: a path no route has, so an answer of 404 means the request
 * passed every check in front of the routes, and a 401/403 names the check that refused it.
 */
export async function probe(url: string, headers: Record<string, string>, extra: Record<string, string> = {}): Promise<ProbeAnswer> {
  const res = await fetch(`${url}/v1/auth-probe`, { headers: { ...headers, ...extra } });
  const body = (await res.json().catch(() => null)) as { error?: { code?: string; details?: Record<string, unknown> } } | null;
  return { status: res.status, code: body?.error?.code, details: body?.error?.details };
}

/**
 * Writes the whole request before reading a byte of the answer, as a simple client does. An
 * answer sent early (a refusal mid-body) reaches such a client only if the server reads the rest
 * of the body and closes gracefully: a reset drops what waits unread in the client's socket.
 * Resolves once the answer is whole (by its Content-Length) or the connection closed; `written`
 * is the error that ended writing the body, if any.
 */
export async function rawRequestWriteFirst(url: string, request: Omit<RawRequest, 'waitForContinue'>): Promise<RawAnswer & { written: Error | undefined }> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname.replace(/^\[|\]$/g, '')).pause();
  const written = await new Promise<Error | undefined>((resolve) => {
    socket.once('error', resolve);
    socket.write(`${request.head.join('\r\n')}\r\n\r\n`);
    socket.write(request.body ?? Buffer.alloc(0), (err) => resolve(err ?? undefined));
  });
  let received = '';
  const whole = (): boolean => {
    const end = received.indexOf('\r\n\r\n');
    const length = /\r\ncontent-length: *(\d+)/i.exec(received)?.[1];
    return end >= 0 && length !== undefined && received.length >= end + 4 + Number(length);
  };
  // Half-closing instead would have Node's server drop the request, as HTTP/1.1 servers may.
  await new Promise<void>((resolve) => {
    socket.setEncoding('latin1').on('data', (chunk: string) => {
      received += chunk;
      if (whole()) resolve();
    }).on('error', () => undefined).once('close', () => resolve()).resume();
  });
  socket.destroy();
  return { ...parseAnswer(received, request.body?.length ?? 0), written };
}
