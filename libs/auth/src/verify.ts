import { timingSafeEqual } from 'node:crypto';
import { DIGEST_PATTERN, FerryError, HEADERS, TIMESTAMP_WINDOW_SECONDS } from '@ferry/protocol';
import { computeSignature, type SignedFields } from './canonical.ts';
import type { KeyRing } from './keyring.ts';
import type { NonceStore } from './nonces.ts';

const NONCE = /^[A-Za-z0-9_-]{22,128}$/;
const TIMESTAMP = /^[0-9]{1,12}$/;
const SIGNATURE = /^[0-9a-f]{64}$/;
const AUDIENCE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

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
  /** This service's own id (a receiver's FERRY_HOST_ID): requests signed for another are refused. */
  audience: string;
  /** Unix seconds. */
  now?: () => number;
  /**
   * The first second (unix) in which this process accepts requests: while the nonce store is not
   * persistent, a request signed before it is refused, since its nonce may have been forgotten.
   * A receiver takes the second after its start and listens only once it has begun, so the
   * previous process cannot have accepted anything signed in it. Defaults to the current second.
   */
  startedAt?: number;
  windowSeconds?: number;
}

/**
 * Checks a request's signature from its headers alone, so that a caller can refuse it before a
 * byte of the body is read. Every failure is a typed 401; nothing about the secret leaks.
 */
export class RequestVerifier {
  readonly #keys: KeyRing;
  readonly #nonces: NonceStore;
  readonly #audience: string;
  readonly #now: () => number;
  readonly #startedAt: number;
  readonly #window: number;

  constructor(options: VerifierOptions) {
    this.#keys = options.keys;
    this.#nonces = options.nonces;
    this.#audience = options.audience;
    this.#now = options.now ?? (() => Math.floor(Date.now() / 1000));
    this.#startedAt = options.startedAt ?? this.#now();
    this.#window = options.windowSeconds ?? TIMESTAMP_WINDOW_SECONDS;
  }

  async verify(request: RequestFacts): Promise<Verified> {
    const keyId = single(request, HEADERS.keyId);
    const timestamp = single(request, HEADERS.timestamp);
    const nonce = single(request, HEADERS.nonce);
    const contentDigest = single(request, HEADERS.contentDigest);
    const audience = single(request, HEADERS.audience);
    const signature = single(request, HEADERS.signature);
    const offset = optional(request, HEADERS.uploadOffset);
    if (!TIMESTAMP.test(timestamp)) throw missing(`${HEADERS.timestamp} must be unix seconds`);
    if (!NONCE.test(nonce)) throw missing(`${HEADERS.nonce} must be 22–128 characters of [A-Za-z0-9_-] (≥128 random bits)`);
    if (!DIGEST_PATTERN.test(contentDigest)) throw missing(`${HEADERS.contentDigest} must be blake3:<64 lowercase hex>`);
    if (!AUDIENCE.test(audience)) throw missing(`${HEADERS.audience} must be the receiver's host id`);

    const key = this.#keys.lookup(keyId);
    if (key === undefined) throw new FerryError('FERRY_ERR_UNKNOWN_KEY', { details: { keyId } });

    const fields: SignedFields = { method: request.method, path: request.path, timestamp, nonce, contentDigest, keyId, audience, offset };
    const expected = Buffer.from(computeSignature(key.secret, fields), 'hex');
    const given = SIGNATURE.test(signature) ? Buffer.from(signature, 'hex') : Buffer.alloc(expected.length);
    // The comparison runs even for a malformed signature so that timing says nothing about why.
    const equal = timingSafeEqual(expected, given);
    if (!equal || !SIGNATURE.test(signature)) throw new FerryError('FERRY_ERR_BAD_SIGNATURE');

    // Checked after the signature, so that only the key's holder learns the key has expired.
    const now = this.#now();
    if (key.notAfter !== undefined && now > key.notAfter) {
      throw new FerryError('FERRY_ERR_KEY_EXPIRED', { details: { keyId, notAfter: new Date(key.notAfter * 1000).toISOString() } });
    }
    if (audience !== this.#audience) throw new FerryError('FERRY_ERR_WRONG_AUDIENCE', { details: { expected: this.#audience } });

    const seconds = Number(timestamp);
    const skew = seconds - now;
    if (Math.abs(skew) > this.#window) {
      throw new FerryError('FERRY_ERR_STALE_TIMESTAMP', { details: { skewSeconds: skew, windowSeconds: this.#window } });
    }
    // A store that forgets on restart cannot recognise a request accepted by the previous process:
    // refusing everything signed before this one started closes that gap.
    if (this.#nonces.persistent !== true && seconds < this.#startedAt) {
      throw new FerryError('FERRY_ERR_REPLAY', {
        message: 'The request was signed before this receiver started; sign it anew',
        details: { reason: 'before-boot' },
      });
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
  return once(value, name);
}

function optional(request: RequestFacts, name: string): string {
  const value = request.headers[name];
  return value === undefined ? '' : once(value, name);
}

// Node joins most repeated headers with ", "; either way a repeated signed header is refused.
function once(value: string | string[], name: string): string {
  if (Array.isArray(value) || value.includes(',')) throw missing(`${name} must appear once`);
  return value;
}

function missing(message: string): FerryError {
  return new FerryError('FERRY_ERR_AUTH_MISSING', { message });
}
