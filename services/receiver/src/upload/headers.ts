import type { IncomingMessage } from 'node:http';
import { FerryError, HEADERS, UPLOAD_PART_MEDIA_TYPE } from '@ferry/protocol';

const OFFSET = /^(?:0|[1-9][0-9]{0,15})$/;

/**
 * `Upload-Offset` as a byte offset: one header, decimal digits only, no sign, no leading zero,
 * at most 2^53 − 1. Node joins a repeated header with ", ", which fails the pattern too.
 */
export function parseUploadOffset(req: IncomingMessage): number {
  const raw = req.headers[HEADERS.uploadOffset];
  const value = Array.isArray(raw) ? undefined : raw;
  if (value === undefined || !OFFSET.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new FerryError('FERRY_ERR_BAD_OFFSET', { details: { given: Array.isArray(raw) ? raw.join(', ') : (raw ?? null) } });
  }
  return Number(value);
}

/** A part is sent with a known length, so that its fate (413, 409) is decided from the headers. */
export function parsePartHeaders(req: IncomingMessage): { offset: number; contentLength: number } {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== UPLOAD_PART_MEDIA_TYPE) {
    throw new FerryError('FERRY_ERR_UNSUPPORTED_MEDIA_TYPE', { message: `A part is sent as Content-Type: ${UPLOAD_PART_MEDIA_TYPE}` });
  }
  const offset = parseUploadOffset(req);
  if (req.headers['transfer-encoding'] !== undefined) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'A part is sent with Content-Length, not Transfer-Encoding' });
  }
  // Node's parser has already refused a malformed or repeated Content-Length.
  const length = req.headers['content-length'];
  if (length === undefined) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'Content-Length is required' });
  return { offset, contentLength: Number(length) };
}
