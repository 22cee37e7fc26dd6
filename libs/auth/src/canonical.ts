import { randomBytes, type KeyObject } from 'node:crypto';
import { HEADERS, SIGNATURE_SCHEME } from '@ferry/protocol';
import { signBytes } from './keys.ts';

/** The signed facts of one request. */
export interface SignedFields {
  method: string;
  /** Path with query string exactly as sent on the request line. */
  path: string;
  timestamp: string;
  nonce: string;
  contentDigest: string;
  keyId: string;
  /** The host id of the receiver the request is meant for (`X-Ferry-Audience`). */
  audience: string;
  /** The `Upload-Offset` header value as sent; empty when the request has none. */
  offset: string;
}

/**
 * The string the Ed25519 signature covers: one field per line, no trailing newline (so a request without an
 * offset ends with the LF that starts the empty offset line). Its exact form is in
 * docs/protocol.md; the worked example there is a unit test vector.
 */
export function canonicalString(fields: SignedFields): string {
  return [
    SIGNATURE_SCHEME,
    fields.method.toUpperCase(),
    fields.path,
    fields.timestamp,
    fields.nonce,
    fields.contentDigest,
    fields.keyId,
    fields.audience,
    fields.offset,
  ].join('\n');
}

export function computeSignature(privateKey: KeyObject, fields: SignedFields): string {
  return signBytes(privateKey, canonicalString(fields));
}

export interface SignOptions {
  method: string;
  path: string;
  contentDigest: string;
  keyId: string;
  privateKey: KeyObject;
  /**
   * The key's grant (a signed document, base64url of its JSON), sent as `X-Ferry-Grant` so that
   * a receiver that trusts its issuer needs no copy of it.
   */
  grant?: string | undefined;
  /** The receiver's host id, as its signed identity (`GET /v1/identity`) names it: the request is refused anywhere else. */
  audience: string;
  /**
   * The `Upload-Offset` the request carries, if any. It is signed but not returned as a header:
   * the caller sends `Upload-Offset` itself, with exactly `String(offset)`.
   */
  offset?: number | string;
  /** Unix seconds; injected by tests, the clock otherwise. */
  now?: number;
  nonce?: string;
}

/** Headers a client adds to a request so that a Ferry service accepts it. */
export function signRequest(options: SignOptions): Record<string, string> {
  const fields: SignedFields = {
    method: options.method,
    path: options.path,
    timestamp: String(options.now ?? Math.floor(Date.now() / 1000)),
    nonce: options.nonce ?? randomBytes(16).toString('hex'),
    contentDigest: options.contentDigest,
    keyId: options.keyId,
    audience: options.audience,
    offset: options.offset === undefined ? '' : String(options.offset),
  };
  return {
    [HEADERS.keyId]: fields.keyId,
    [HEADERS.timestamp]: fields.timestamp,
    [HEADERS.nonce]: fields.nonce,
    [HEADERS.contentDigest]: fields.contentDigest,
    [HEADERS.audience]: fields.audience,
    [HEADERS.signature]: computeSignature(options.privateKey, fields),
    ...(options.grant === undefined ? {} : { [HEADERS.grant]: options.grant }),
  };
}
