import type { KeyObject } from 'node:crypto';
import { z } from 'zod';
import { DOCUMENT_SCHEME, documentMessage, publicKeyText, signBytes, verifyBytes, type SigningKey } from '@ferry/auth';
import { parseEntry } from './layout.ts';
import { BUNDLE_SCHEMA } from './release.ts';

/**
 * `ferry/signature`: who signed release.json and the signature, beside it rather than inside it,
 * so the signature is checked over release.json's exact bytes before a byte of it is parsed.
 */
export const SignatureSchema = z.strictObject({
  scheme: z.literal(DOCUMENT_SCHEME),
  type: z.literal(BUNDLE_SCHEMA),
  keyId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/),
  /** Base64 of the raw 32-byte Ed25519 public key. */
  publicKey: z.string().regex(/^[A-Za-z0-9+/]{43}=$/),
  /** Base64 of the raw 64-byte Ed25519 signature. */
  signature: z.string().regex(/^[A-Za-z0-9+/]{86}==$/),
});
export type BundleSignature = z.infer<typeof SignatureSchema>;
export const SIGNATURE_MAX_BYTES = 4096;

/**
 * What the signature signs: the signed-document message of protocol.md §3.6 over release.json's
 * exact bytes — `FERRY-SIGNED-V1\nferry.bundle/v1\n` then the file — so a bundle's signature can
 * never stand for a grant, a request or another document signed by the same key, and openssl
 * checks it with those two lines put in front of the file (docs/bundles.md).
 */
export function releaseMessage(releaseBytes: Buffer): Buffer {
  return documentMessage(BUNDLE_SCHEMA, releaseBytes);
}

export function signRelease(key: SigningKey, releaseBytes: Buffer): Buffer {
  const signature: BundleSignature = {
    scheme: DOCUMENT_SCHEME, type: BUNDLE_SCHEMA, keyId: key.keyId, publicKey: publicKeyText(key.privateKey),
    signature: Buffer.from(signBytes(key.privateKey, releaseMessage(releaseBytes)), 'hex').toString('base64'),
  };
  return Buffer.from(`${JSON.stringify(signature)}\n`);
}

export function parseSignature(bytes: Buffer): BundleSignature {
  return parseEntry(SignatureSchema, bytes, 'ferry/signature');
}

export function releaseSignedBy(key: KeyObject, releaseBytes: Buffer, signature: BundleSignature): boolean {
  return verifyBytes(key, releaseMessage(releaseBytes), Buffer.from(signature.signature, 'base64').toString('hex'));
}
