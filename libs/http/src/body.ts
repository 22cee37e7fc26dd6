import type { Request, Response } from 'express';
import { digestOf } from '@ferry/integrity';
import { FerryError, HEADERS } from '@ferry/protocol';
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
 */
export async function readSignedJson(req: Request, res: Response, options: SignedJsonOptions): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > options.maxBytes) throw new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: `The body exceeds ${options.maxBytes} bytes` });
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks);
  if (digestOf(raw) !== (res.locals as AuthLocals).auth.contentDigest) {
    throw new FerryError('FERRY_ERR_BODY_DIGEST_MISMATCH', { message: `${HEADERS.contentDigest} is not the BLAKE3 of the body` });
  }
  const empty = options.empty ?? 'refuse';
  if (raw.length === 0 && empty !== 'refuse') return {};
  if (empty === 'only') throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'This request takes no body' });
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') throw new FerryError('FERRY_ERR_UNSUPPORTED_MEDIA_TYPE', { message: 'Send the body as Content-Type: application/json' });
  try {
    return JSON.parse(raw.toString('utf8')) as unknown;
  } catch (err) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `The body is not JSON: ${(err as Error).message}`, cause: err });
  }
}
