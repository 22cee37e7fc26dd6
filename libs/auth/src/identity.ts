import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { FerryError } from '@ferry/protocol';
import { fingerprint, parsePublicKey, publicKeyText, type SigningKey } from './keys.ts';
import { openDocument, parseDocument, signDocument, type SignedDocument } from './signed.ts';

export const IDENTITY_TYPE = 'ferry.identity/v1';
const CHALLENGE = /^[A-Za-z0-9_-]{22,128}$/;

const IdentityPayloadSchema = z.strictObject({
  host: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/),
  publicKey: z.string().max(4096),
  fingerprint: z.string().max(128),
  version: z.string().max(64),
  challenge: z.string().regex(CHALLENGE),
  time: z.string().max(64),
});

/** What a service says about itself, signed with its own key over the caller's challenge. */
export type Identity = z.output<typeof IdentityPayloadSchema>;

/** The host key id a receiver signs with: `host.<host id>`. */
export function hostKeyId(hostId: string): string {
  return `host.${hostId}`;
}

export function newChallenge(): string {
  return randomBytes(16).toString('base64url');
}

export function isChallenge(value: unknown): value is string {
  return typeof value === 'string' && CHALLENGE.test(value);
}

/** `GET /v1/identity?challenge=…`'s answer. */
export function signIdentity(key: SigningKey, facts: { host: string; version: string }, challenge: string, now = new Date()): SignedDocument {
  const publicKey = publicKeyText(key.privateKey);
  return signDocument(IDENTITY_TYPE, { ...facts, publicKey, fingerprint: fingerprint(publicKey), challenge, time: now.toISOString() }, key);
}

/**
 * Checks a service's identity: signed by the key it names, over our challenge, and — when the
 * caller knows the key to expect (pinned, or from the registry's enrollment) — by that key.
 *
 * @throws FerryError FERRY_ERR_BAD_RESPONSE for an answer that is not a valid identity,
 *   FERRY_ERR_HOST_KEY_MISMATCH when the key is not the one expected.
 */
export function checkIdentity(value: unknown, challenge: string, expectedFingerprint?: string): Identity {
  let identity: Identity;
  try {
    const doc = parseDocument(value, IDENTITY_TYPE);
    const claimed = IdentityPayloadSchema.parse(JSON.parse(Buffer.from(doc.payload, 'base64').toString('utf8')));
    identity = IdentityPayloadSchema.parse(openDocument(doc, parsePublicKey(claimed.publicKey, 'identity')));
  } catch (err) {
    throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The service did not prove its identity (no valid signed identity)', cause: err });
  }
  if (identity.challenge !== challenge) throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The identity answers another challenge (a replayed answer)' });
  if (identity.fingerprint !== fingerprint(identity.publicKey)) throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: 'The identity names a fingerprint that is not its key\'s' });
  if (expectedFingerprint !== undefined && identity.fingerprint !== expectedFingerprint) {
    throw new FerryError('FERRY_ERR_HOST_KEY_MISMATCH', { details: { expected: expectedFingerprint, presented: identity.fingerprint, host: identity.host } });
  }
  return identity;
}
