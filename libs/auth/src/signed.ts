import type { KeyObject } from 'node:crypto';
import { FerryError } from '@ferry/protocol';
import { KEY_ID_PATTERN, signBytes, verifyBytes, type SigningKey } from './keys.ts';

/** The first line of every signed document's message: a change of these rules gets a new label. */
export const DOCUMENT_SCHEME = 'FERRY-SIGNED-V1';
/** Grants, revocation lists and identities are small; a larger document is refused unread. */
export const MAX_DOCUMENT_BYTES = 64 * 1024;

/**
 * A signed document as it travels in files, headers and the registry: the payload is carried as
 * the base64 of its exact bytes, so no JSON canonicalisation is needed to check it, and a shell
 * can check it with `openssl pkeyutl -verify -rawin` (docs/protocol.md §3.6).
 */
export interface SignedDocument {
  type: string;
  payload: string;
  keyId: string;
  signature: string;
}

/** The message an Ed25519 signature of a document covers: scheme, type, then the payload's bytes. */
export function documentMessage(type: string, payload: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${DOCUMENT_SCHEME}\n${type}\n`, 'utf8'), payload]);
}

export function signDocument(type: string, payload: unknown, key: SigningKey): SignedDocument {
  const bytes = Buffer.from(JSON.stringify(payload), 'utf8');
  return { type, payload: bytes.toString('base64'), keyId: key.keyId, signature: signBytes(key.privateKey, documentMessage(type, bytes)) };
}

/**
 * Reads a document's envelope from JSON text or an already parsed value, or from the base64url
 * of that JSON (how it travels in a header). Checks the shape only, not the signature.
 */
export function parseDocument(input: unknown, expectedType: string): SignedDocument {
  let value = input;
  if (typeof value === 'string') {
    const text = value.trim();
    if (text.length > MAX_DOCUMENT_BYTES * 2) throw bad(`larger than ${MAX_DOCUMENT_BYTES} bytes`);
    try {
      value = JSON.parse(text.startsWith('{') ? text : Buffer.from(text, 'base64url').toString('utf8'));
    } catch {
      throw bad('not JSON, nor the base64url of JSON');
    }
  }
  const doc = value as Partial<SignedDocument> | null;
  if (typeof doc !== 'object' || doc === null) throw bad('not an object');
  if (doc.type !== expectedType) throw bad(`type must be ${expectedType}`);
  if (typeof doc.keyId !== 'string' || !KEY_ID_PATTERN.test(doc.keyId)) throw bad('keyId is missing or malformed');
  if (typeof doc.signature !== 'string' || !/^[0-9a-f]{128}$/.test(doc.signature)) throw bad('signature must be 128 lowercase hex characters');
  if (typeof doc.payload !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(doc.payload)) throw bad('payload must be base64');
  return { type: doc.type, payload: doc.payload, keyId: doc.keyId, signature: doc.signature };
}

/** The payload's bytes once `key`'s signature of them is checked; the JSON value parsed from them. */
export function openDocument(doc: SignedDocument, key: KeyObject): unknown {
  const bytes = Buffer.from(doc.payload, 'base64');
  if (!verifyBytes(key, documentMessage(doc.type, bytes), doc.signature)) {
    throw new FerryError('FERRY_ERR_BAD_GRANT', { message: `The ${doc.type} document's signature does not verify with key ${doc.keyId}` });
  }
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new FerryError('FERRY_ERR_BAD_GRANT', { message: `The ${doc.type} document's payload is not JSON`, cause: err });
  }
}

/** A document as one header value: base64url of its JSON. */
export function documentHeader(doc: SignedDocument): string {
  return Buffer.from(JSON.stringify(doc), 'utf8').toString('base64url');
}

function bad(reason: string): FerryError {
  return new FerryError('FERRY_ERR_BAD_GRANT', { message: `Signed document: ${reason}` });
}
