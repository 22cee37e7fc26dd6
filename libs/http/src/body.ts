import type { IncomingMessage } from 'node:http';
import type { Request, Response } from 'express';
import { digestOf } from '@ferry/integrity';
import { FerryError, HEADERS, prototypeKeyPaths } from '@ferry/protocol';
import type { AuthLocals } from './signature.ts';

export interface SignedJsonOptions {
  /** Refused with 413 past this many bytes; these bodies are small and read whole. */
  maxBytes: number;
  /** An empty body: refused as any other non-JSON (default), read as `{}`, or the only body allowed. */
  empty?: 'refuse' | 'object' | 'only';
}

/**
 * Reads a small JSON body of a signed request whole, and checks that it is the body the signature
 * covers (the signature covers the digest, the digest covers the bytes) before anything parses it.
 * A key `__proto__` anywhere in it is refused (400 FERRY_ERR_BAD_REQUEST).
 */
export async function readSignedJson(req: Request, res: Response, options: SignedJsonOptions): Promise<unknown> {
  const raw = await readBody(req, options.maxBytes, 'The body');
  if (digestOf(raw) !== (res.locals as AuthLocals).auth.contentDigest) {
    throw new FerryError('FERRY_ERR_BODY_DIGEST_MISMATCH', { message: `${HEADERS.contentDigest} is not the BLAKE3 of the body` });
  }
  const empty = options.empty ?? 'refuse';
  if (raw.length === 0 && empty !== 'refuse') return {};
  if (empty === 'only') throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'This request takes no body' });
  return parseJson(req, raw);
}

/**
 * A small body read whole, as JSON: Content-Type application/json (else 415), valid JSON (else
 * 400), and no key `__proto__` anywhere in it (400 FERRY_ERR_BAD_REQUEST).
 */
export function parseJson(req: IncomingMessage, raw: Buffer): unknown {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') throw new FerryError('FERRY_ERR_UNSUPPORTED_MEDIA_TYPE', { message: 'Send the body as Content-Type: application/json' });
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `The body is not JSON: ${(err as Error).message}`, cause: err });
  }
  // Schemas drop such a key in silence (a label sent would not be stored): refused instead.
  const refused = prototypeKeyPaths(body).map((path) => path.join('.').slice(0, 200));
  if (refused.length > 0) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `"__proto__" is not allowed as a name (${refused.join(', ')})`, details: { paths: refused } });
  }
  return body;
}

/**
 * Reads a small body whole; past `maxBytes` it is refused with 413 (`what` names it in the
 * message). The request is not destroyed then: a destroyed request closes its connection under
 * the 413, and the reset can take the answer from the client before it reads it. Its rest is
 * dropped while the answer goes out, for as long as closeAfterAnswer allows.
 */
export async function readBody(req: IncomingMessage, maxBytes: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > maxBytes) throw new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: `${what} exceeds ${maxBytes} bytes` });
      chunks.push(chunk);
    }
  } catch (err) {
    if (!req.destroyed) req.resume();
    throw err;
  }
  return Buffer.concat(chunks);
}
