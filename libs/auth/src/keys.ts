import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { FerryError } from '@ferry/protocol';

/**
 * The DER prefix of an Ed25519 SubjectPublicKeyInfo: the raw 32-byte key follows it. Shell tools
 * build a public key file from the raw key with it (docs/protocol.md §3.4).
 */
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');
const RAW_KEY = /^[A-Za-z0-9+/]{43}=?$/;
const SIGNATURE_HEX = /^[0-9a-f]{128}$/;

export const KEY_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function isValidKeyId(keyId: string): boolean {
  return KEY_ID_PATTERN.test(keyId);
}

/** A private key with the id its grants and trust entries name it by. */
export interface SigningKey {
  keyId: string;
  privateKey: KeyObject;
}

/** A new Ed25519 key pair. */
export function generateKeyPair(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ed25519');
}

/**
 * Reads a private key: PKCS#8 PEM as `openssl genpkey -algorithm ed25519` and `ferry key new`
 * write it. Problems never quote the key's text.
 */
export function parsePrivateKey(text: string, where: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: text, format: 'pem' });
  } catch (err) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${where}: not a PEM private key (make one with "ferry key new" or "openssl genpkey -algorithm ed25519")`, cause: err });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new FerryError('FERRY_ERR_CONFIG', { message: `${where}: an Ed25519 key is required, not ${key.asymmetricKeyType ?? 'this kind'}` });
  return key;
}

/** A public key from its text: base64 of the raw 32 bytes (as Ferry prints it) or an SPKI PEM. */
export function parsePublicKey(text: string, where: string): KeyObject {
  const trimmed = text.trim();
  let key: KeyObject;
  try {
    // Node derives a public key from a private PEM too: accepting one would let a private key sit
    // in a trust file (which holds public keys only, and is copied around) unnoticed.
    if (trimmed.startsWith('-----BEGIN') && !trimmed.startsWith('-----BEGIN PUBLIC KEY-----')) throw new Error('a PEM that is not a public key');
    if (trimmed.startsWith('-----BEGIN')) key = createPublicKey({ key: trimmed, format: 'pem' });
    else if (RAW_KEY.test(trimmed)) key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, Buffer.from(trimmed, 'base64')]), format: 'der', type: 'spki' });
    else throw new Error('neither base64 of 32 bytes nor PEM');
  } catch (err) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${where}: not an Ed25519 public key (base64 of its 32 bytes, or a PEM)`, cause: err });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new FerryError('FERRY_ERR_CONFIG', { message: `${where}: an Ed25519 key is required` });
  return key;
}

/** The raw 32 bytes of a public key, base64: how trust files, grants and identities carry it. */
export function publicKeyText(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return publicKey.export({ format: 'der', type: 'spki' }).subarray(SPKI_PREFIX.length).toString('base64');
}

/** `SHA256:` and the unpadded base64 of the raw public key's SHA-256, as ssh prints fingerprints. */
export function fingerprint(key: KeyObject | string): string {
  const raw = Buffer.from(typeof key === 'string' ? key : publicKeyText(key), 'base64');
  return `SHA256:${createHash('sha256').update(raw).digest('base64').replace(/=+$/, '')}`;
}

export function privateKeyPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

/** An Ed25519 signature of `message`, as 128 lowercase hex characters. */
export function signBytes(key: KeyObject, message: string | Buffer): string {
  return sign(null, typeof message === 'string' ? Buffer.from(message, 'utf8') : message, key).toString('hex');
}

/** True when `signature` (128 lowercase hex) is `key`'s signature of `message`. */
export function verifyBytes(key: KeyObject, message: string | Buffer, signature: string): boolean {
  if (!SIGNATURE_HEX.test(signature)) return false;
  return verify(null, typeof message === 'string' ? Buffer.from(message, 'utf8') : message, key, Buffer.from(signature, 'hex'));
}
