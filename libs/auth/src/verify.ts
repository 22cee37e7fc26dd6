import { timingSafeEqual } from 'node:crypto';
import { DIGEST_PATTERN, FerryError, HEADERS, TIMESTAMP_WINDOW_SECONDS } from '@ferry/protocol';
import { computeSignature, type SignedFields } from './canonical.ts';
import type { KeyRing } from './keyring.ts';
import type { NonceStore } from './nonces.ts';

const NONCE = /^[A-Za-z0-9_-]{22,128}$/;
const TIMESTAMP = /^[0-9]{1,12}$/;
const SIGNATURE = /^[0-9a-f]{64}$/;

export interface RequestFacts {
  method: string;
  path: string;
  /** Node's lower-cased header map; a repeated header arrives as an array or a joined string. */
  headers: Record<string, string | string[] | undefined>;
}

export interface Verified {
  keyId: string;
  contentDigest: string;
  timestamp: number;
}

export interface VerifierOptions {
  keys: KeyRing;
  nonces: NonceStore;
  /** Unix seconds. */
  now?: () => number;
  windowSeconds?: number;
}

/**
 * Checks a request's signature from its headers alone, so that a caller can refuse it before a
 * byte of the body is read. Every failure is a typed 401; nothing about the secret leaks.
 */
export class RequestVerifier {
  readonly #keys: KeyRing;
  readonly #nonces: NonceStore;
  readonly #now: () => number;
  readonly #window: number;

  constructor(options: VerifierOptions) {
    this.#keys = options.keys;
    this.#nonces = options.nonces;
    this.#now = options.now ?? (() => Math.floor(Date.now() / 1000));
    this.#window = options.windowSeconds ?? TIMESTAMP_WINDOW_SECONDS;
  }

  async verify(request: RequestFacts): Promise<Verified> {
    const keyId = single(request, HEADERS.keyId);
    const timestamp = single(request, HEADERS.timestamp);
    const nonce = single(request, HEADERS.nonce);
    const contentDigest = single(request, HEADERS.contentDigest);
    const signature = single(request, HEADERS.signature);
    if (!TIMESTAMP.test(timestamp)) throw missing(`${HEADERS.timestamp} must be unix seconds`);
    if (!NONCE.test(nonce)) throw missing(`${HEADERS.nonce} must be 22–128 characters of [A-Za-z0-9_-] (≥128 random bits)`);
    if (!DIGEST_PATTERN.test(contentDigest)) throw missing(`${HEADERS.contentDigest} must be blake3:<64 lowercase hex>`);

    const secret = this.#keys.secretFor(keyId);
    if (secret === undefined) throw new FerryError('FERRY_ERR_UNKNOWN_KEY', { details: { keyId } });

    const fields: SignedFields = { method: request.method, path: request.path, timestamp, nonce, contentDigest, keyId };
    const expected = Buffer.from(computeSignature(secret, fields), 'hex');
    const given = SIGNATURE.test(signature) ? Buffer.from(signature, 'hex') : Buffer.alloc(expected.length);
    // The comparison runs even for a malformed signature so that timing says nothing about why.
    const equal = timingSafeEqual(expected, given);
    if (!equal || !SIGNATURE.test(signature)) throw new FerryError('FERRY_ERR_BAD_SIGNATURE');

    const seconds = Number(timestamp);
    const skew = seconds - this.#now();
    if (Math.abs(skew) > this.#window) {
      throw new FerryError('FERRY_ERR_STALE_TIMESTAMP', { details: { skewSeconds: skew, windowSeconds: this.#window } });
    }
    // A nonce must outlive the window on both sides of the clock to make a replay impossible.
    if (!(await this.#nonces.remember(`${keyId}:${nonce}`, 2 * this.#window + 1))) {
      throw new FerryError('FERRY_ERR_REPLAY');
    }
    return { keyId, contentDigest, timestamp: seconds };
  }
}

function single(request: RequestFacts, name: string): string {
  const value = request.headers[name];
  if (value === undefined || value === '') throw missing(`${name} is required`);
  // Node joins most repeated headers with ", "; either way a repeated auth header is refused.
  if (Array.isArray(value) || value.includes(',')) throw missing(`${name} must appear once`);
  return value;
}

function missing(message: string): FerryError {
  return new FerryError('FERRY_ERR_AUTH_MISSING', { message });
}
