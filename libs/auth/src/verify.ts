import { DIGEST_PATTERN, FerryError, HEADERS, TIMESTAMP_WINDOW_SECONDS } from '@ferry/protocol';
import { canonicalString, type SignedFields } from './canonical.ts';
import { coversHost, coversService, roleAllows, validity, type Action, type HostFacts, type Scope, type Validity } from './grants.ts';
import { verifyBytes } from './keys.ts';
import { replayFloor, type NonceStore } from './nonces.ts';
import type { TrustStore } from './trust.ts';

const NONCE = /^[A-Za-z0-9_-]{22,128}$/;
const TIMESTAMP = /^[0-9]{1,12}$/;
const SIGNATURE = /^[0-9a-f]{128}$/;
const AUDIENCE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const KEY_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** A grant travels in one header; a larger one is refused before it is parsed. */
const MAX_GRANT_HEADER = 8192;

export interface RequestFacts {
  method: string;
  path: string;
  /** Node's lower-cased header map; a repeated header arrives as an array or a joined string. */
  headers: Record<string, string | string[] | undefined>;
}

/** One scope under which a verified request may act, with where it stands in time. */
export interface ScopeAtTime {
  scope: Scope;
  validity: Exclude<Validity, 'expired' | 'not-yet'>;
}

export interface Verified {
  keyId: string;
  contentDigest: string;
  timestamp: number;
  /** Every scope of the key that is in force now and (for a receiver) covers this host. */
  scopes: ScopeAtTime[];
}

/** What {@link authorize} found: the scope that allows the action, and whether only its grace does. */
export interface Authorized {
  scope: Scope;
  /** True when the grant is past its notAfter but inside its grace: the caller warns (an event). */
  grace: boolean;
}

export interface VerifierOptions {
  trust: TrustStore;
  nonces: NonceStore;
  /** This service's own id (a receiver's FERRY_HOST_ID): requests signed for another are refused. */
  audience: string;
  /** A receiver's id and labels: grants whose hosts do not cover them are not in force here. */
  subject?: HostFacts;
  /** Unix seconds. */
  now?: () => number;
  /**
   * The first second (unix) in which this process accepts requests: while the nonce store is not
   * persistent, a request signed before it is refused, since its nonce may have been forgotten.
   * Defaults to the current second.
   */
  startedAt?: number;
  windowSeconds?: number;
}

/**
 * Checks a request's Ed25519 signature and its key's grants from the headers alone, so that a
 * caller can refuse it before a byte of the body is read. Every failure is a typed 401 (403 when
 * the key is known but its grants do not reach this host), naming nothing a caller did not send.
 */
export class RequestVerifier {
  readonly #trust: TrustStore;
  readonly #nonces: NonceStore;
  readonly #audience: string;
  readonly #subject: HostFacts | undefined;
  readonly #now: () => number;
  readonly #startedAt: number;
  readonly #window: number;

  constructor(options: VerifierOptions) {
    this.#trust = options.trust;
    this.#nonces = options.nonces;
    this.#audience = options.audience;
    this.#subject = options.subject;
    this.#now = options.now ?? (() => Math.floor(Date.now() / 1000));
    this.#startedAt = options.startedAt ?? this.#now();
    this.#window = options.windowSeconds ?? TIMESTAMP_WINDOW_SECONDS;
  }

  get trust(): TrustStore {
    return this.#trust;
  }

  async verify(request: RequestFacts): Promise<Verified> {
    const keyId = single(request, HEADERS.keyId);
    const timestamp = single(request, HEADERS.timestamp);
    const nonce = single(request, HEADERS.nonce);
    const contentDigest = single(request, HEADERS.contentDigest);
    const audience = single(request, HEADERS.audience);
    const signature = single(request, HEADERS.signature);
    const offset = optional(request, HEADERS.uploadOffset);
    const grant = optional(request, HEADERS.grant);
    if (!KEY_ID.test(keyId)) throw missing(`${HEADERS.keyId} must be 1–128 characters of [A-Za-z0-9._-]`);
    if (!TIMESTAMP.test(timestamp)) throw missing(`${HEADERS.timestamp} must be unix seconds`);
    if (!NONCE.test(nonce)) throw missing(`${HEADERS.nonce} must be 22–128 characters of [A-Za-z0-9_-] (≥128 random bits)`);
    if (!DIGEST_PATTERN.test(contentDigest)) throw missing(`${HEADERS.contentDigest} must be blake3:<64 lowercase hex>`);
    if (!AUDIENCE.test(audience)) throw missing(`${HEADERS.audience} must be the receiver's host id`);
    if (!SIGNATURE.test(signature)) throw new FerryError('FERRY_ERR_BAD_SIGNATURE', { message: `${HEADERS.signature} must be 128 lowercase hex characters (an Ed25519 signature)` });
    if (grant.length > MAX_GRANT_HEADER) throw new FerryError('FERRY_ERR_BAD_GRANT', { message: `${HEADERS.grant} is larger than ${MAX_GRANT_HEADER} bytes` });

    // The key id is never echoed: a caller probing for key names learns nothing from the answer.
    const known = this.#trust.scopesFor(keyId, grant === '' ? undefined : grant);
    if (known.length === 0) throw new FerryError('FERRY_ERR_UNKNOWN_KEY');

    const fields: SignedFields = { method: request.method, path: request.path, timestamp, nonce, contentDigest, keyId, audience, offset };
    const message = canonicalString(fields);
    const signedBy = known.filter((scope) => verifyBytes(scope.publicKey, message, signature));
    if (signedBy.length === 0) throw new FerryError('FERRY_ERR_BAD_SIGNATURE');

    // Checked after the signature, so that only the key's holder learns where its grants stand.
    const live = signedBy.filter((scope) => !this.#trust.isRevoked(scope));
    if (live.length === 0) throw new FerryError('FERRY_ERR_KEY_REVOKED');
    if (audience !== this.#audience) throw new FerryError('FERRY_ERR_WRONG_AUDIENCE', { details: { expected: this.#audience } });

    const now = this.#now();
    const seconds = Number(timestamp);
    const skew = seconds - now;
    if (Math.abs(skew) > this.#window) {
      throw new FerryError('FERRY_ERR_STALE_TIMESTAMP', { details: { skewSeconds: skew, windowSeconds: this.#window } });
    }
    const scopes = inForce(live, now, this.#subject);

    // A store that forgot (a restart of this process with nonces in memory, or a Redis that lost its
    // data) cannot recognise a request accepted before: what was signed before then is refused.
    const floor = replayFloor(this.#nonces, this.#startedAt);
    if (floor !== undefined && seconds < floor.notBefore) {
      throw new FerryError('FERRY_ERR_REPLAY', {
        message: floor.reason === 'before-boot'
          ? 'The request was signed before this receiver started; sign it anew'
          : 'The request was signed before the nonce store lost its data; sign it anew',
        details: { reason: floor.reason },
      });
    }
    // A nonce must outlive the window on both sides of the clock to make a replay impossible.
    if (!(await this.#nonces.remember(`${keyId}:${nonce}`, 2 * this.#window + 1))) {
      throw new FerryError('FERRY_ERR_REPLAY');
    }
    return { keyId, contentDigest, timestamp: seconds, scopes };
  }
}

/**
 * The key's scopes in force at `now` (and covering `subject`, when given). None: the most telling
 * refusal — expired, not yet valid, or granted for other hosts.
 */
function inForce(scopes: readonly Scope[], now: number, subject: HostFacts | undefined): ScopeAtTime[] {
  const here = subject === undefined ? scopes : scopes.filter((scope) => coversHost(scope, subject));
  if (here.length === 0) throw new FerryError('FERRY_ERR_NOT_GRANTED', { message: "The key's grants do not cover this host" });
  const found: ScopeAtTime[] = [];
  let expired: Scope | undefined;
  for (const scope of here) {
    const state = validity(scope, now);
    if (state === 'valid' || state === 'grace') found.push({ scope, validity: state });
    else if (state === 'expired') expired = scope;
  }
  if (found.length > 0) return found;
  if (expired) {
    throw new FerryError('FERRY_ERR_GRANT_EXPIRED', {
      details: { notAfter: iso(expired.notAfter), graceSeconds: expired.graceSeconds, ...(expired.grantId ? { grant: expired.grantId } : {}) },
    });
  }
  throw new FerryError('FERRY_ERR_GRANT_NOT_YET_VALID', { details: { notBefore: iso(here[0]?.notBefore) } });
}

/**
 * Whether a verified request may do `action` (to `service`, on `host` when given): the first scope
 * in force that allows it, a fully valid one before one in its grace.
 *
 * @throws FerryError FERRY_ERR_NOT_GRANTED naming the action, service and host asked for.
 */
export function authorize(verified: Pick<Verified, 'scopes'>, action: Action, target: { service?: string; host?: HostFacts } = {}): Authorized {
  const allowing = verified.scopes.filter(({ scope }) => roleAllows(scope.role, action)
    && (target.service === undefined || coversService(scope, target.service))
    && (target.host === undefined || coversHost(scope, target.host)));
  const best = allowing.find((s) => s.validity === 'valid') ?? allowing[0];
  if (!best) {
    throw new FerryError('FERRY_ERR_NOT_GRANTED', {
      message: `The key's grants do not allow ${action}${target.service === undefined ? '' : ` of ${target.service}`}${target.host === undefined ? '' : ` on ${target.host.id}`}`,
      details: { action, ...(target.service === undefined ? {} : { service: target.service }), ...(target.host === undefined ? {} : { host: target.host.id }) },
    });
  }
  return { scope: best.scope, grace: best.validity === 'grace' };
}

function iso(seconds: number | undefined): string | null {
  return seconds === undefined ? null : new Date(seconds * 1000).toISOString();
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
