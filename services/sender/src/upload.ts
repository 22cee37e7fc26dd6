import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { pipeline } from 'node:stream/promises';
import { signRequest, type ClientCredentials } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { FerryError, PATHS, errorFromBody, type DeploymentResult } from '@ferry/protocol';

const CONTINUE_WAIT_MS = 1000;

/** The key the sender signs with, and its grant. */
export type Credentials = ClientCredentials;

export interface UploadOptions {
  /** The receiver's base URL, e.g. http://10.0.0.5:7701. */
  url: string;
  credentials: Credentials;
  /** The receiver's host id from its signed identity; the signature is valid on that host only. */
  audience: string;
  manifestJson: string;
  packagePath: string;
  packageSize: number;
  /** Package bytes handed to the socket so far. */
  onProgress?: (sent: number) => void;
  /** The last package byte has been handed to the socket. */
  onSent?: () => void;
}

export interface UploadOutcome {
  result: DeploymentResult;
  bodyBytes: number;
}

/**
 * The one-shot upload: a signed multipart request whose content digest is the manifest's, which in
 * turn carries the package's. It asks with `Expect: 100-continue`, so a refused request (bad key,
 * stale clock, replay) costs one round trip and no package bytes.
 */
export async function uploadOneShot(options: UploadOptions): Promise<UploadOutcome> {
  const target = parseTarget(options.url);
  const manifest = Buffer.from(options.manifestJson, 'utf8');
  const boundary = `ferry-${randomBytes(12).toString('hex')}`;
  const head = Buffer.from(
    `--${boundary}\r\nContent-Disposition: form-data; name="manifest"\r\nContent-Type: application/json\r\n\r\n`
    + `${options.manifestJson}\r\n`
    + `--${boundary}\r\nContent-Disposition: form-data; name="package"; filename="package"\r\nContent-Type: application/octet-stream\r\n\r\n`,
    'utf8',
  );
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'utf8');
  const bodyBytes = head.length + options.packageSize + tail.length;
  const path = `${target.basePath}${PATHS.packages}`;
  const headers = {
    ...signRequest({ method: 'POST', path, contentDigest: digestOf(manifest), audience: options.audience, ...options.credentials }),
    'content-type': `multipart/form-data; boundary=${boundary}`,
    'content-length': String(bodyBytes),
    expect: '100-continue',
  };

  const send = target.protocol === 'https:' ? httpsRequest : httpRequest;
  const req = send({ host: target.hostname, port: target.port, path, method: 'POST', headers });
  const response = waitResponse(req);
  const proceed = await Promise.race([
    once(req, 'continue').then(() => 'continue' as const),
    response.then(() => 'answered' as const, () => 'answered' as const),
    // A server or proxy that ignores Expect never says 100; like curl, send anyway after a pause.
    delay(CONTINUE_WAIT_MS).then(() => 'continue' as const),
  ]);
  if (proceed === 'continue') {
    // An answer before the whole body (413, 409…) is a refusal: sending on only provokes the
    // reset that would cut that answer short.
    let answered = false;
    response.then(() => { answered = true; }, () => undefined);
    const body = async function* body(): AsyncGenerator<Buffer> {
      yield head;
      let sent = 0;
      for await (const chunk of createReadStream(options.packagePath) as AsyncIterable<Buffer>) {
        if (answered) return;
        sent += chunk.length;
        options.onProgress?.(sent);
        yield chunk;
      }
      yield tail;
    };
    // If the receiver answers early (e.g. 413) it closes the socket; its answer is what matters.
    await pipeline(body, req).then(() => options.onSent?.(), () => undefined);
  } else {
    req.destroy();
  }
  const res = await response;
  const payload = await readJson(res).catch(() => undefined);
  if (res.statusCode !== 200) throw answerError(res.statusCode ?? 0, payload);
  if (payload === undefined) throw new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE', { message: 'The receiver connection failed mid-answer' });
  return { result: payload as DeploymentResult, bodyBytes };
}

export function parseTarget(url: string): { protocol: string; hostname: string; port: number; basePath: string } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `--to ${url}: not a URL (expected http://HOST:PORT)`, cause: err });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new FerryError('FERRY_ERR_USAGE', { message: `--to ${url}: only http:// and https:// receivers exist` });
  return {
    protocol: parsed.protocol,
    hostname: parsed.hostname.replace(/^\[|\]$/g, ''),
    port: parsed.port ? Number(parsed.port) : parsed.protocol === 'https:' ? 443 : 80,
    basePath: parsed.pathname.replace(/\/+$/, ''),
  };
}

function waitResponse(req: ClientRequest): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    req.once('response', resolve);
    req.once('error', (err: NodeJS.ErrnoException) => {
      reject(new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE', { message: `Cannot reach the receiver: ${err.code ?? err.message}`, cause: err }));
    });
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function once(req: ClientRequest, event: string): Promise<void> {
  return new Promise((resolve) => req.once(event, () => resolve()));
}

/**
 * A refusal whose body was cut short (the connection reset after the status line) still says
 * what happened by its status; 413 is the one a one-shot upload meets mid-body.
 */
function answerError(status: number, payload: unknown): FerryError {
  const error = errorFromBody(status, payload);
  if (error.code !== 'FERRY_ERR_BAD_RESPONSE') return error;
  if (status === 413) return new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: 'The receiver refused the package as too large (HTTP 413; its answer was cut short)', status });
  return error;
}

/**
 * The answer's body as JSON (or `{ text }`). A connection that fails mid-answer rejects, unless
 * a whole JSON document had already arrived.
 */
export async function readJson(res: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of res) chunks.push(chunk as Buffer);
  } catch (err) {
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    } catch {
      throw err;
    }
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return { text };
  }
}
