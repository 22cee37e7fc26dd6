import { createHash, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import {
  RequestVerifier, TrustStore, emptyTrust, fingerprint, hostKeyId, parsePublicKey, publicKeyText, toScope,
  type NonceStore, type RequestFacts, type Scope, type Verified,
} from '@ferry/auth';
import type { Logger } from '@ferry/log';
import { FerryError } from '@ferry/protocol';
import type { RegistryStore, StoreData } from './store.ts';

/** How long a join token lives when the request names no ttlSeconds, and the most it may ask. */
export const DEFAULT_TOKEN_TTL_SECONDS = 3600;
export const MAX_TOKEN_TTL_SECONDS = 7 * 24 * 3600;
/** Join tokens issued and not expired (used or not) the registry holds at most. */
export const MAX_OPEN_TOKENS = 1000;

/**
 * A join token as the registry keeps it: its SHA-256 only, never the token. A used token is kept,
 * marked, until it expires: a copy of the store that missed its use cannot make it usable again.
 */
export interface JoinTokenRecord {
  /** Hex SHA-256 of the token: the store key. */
  hash: string;
  host: string;
  /** Labels the host must register with from its enrollment on; absent: the host says its own. */
  labels?: Record<string, string>;
  /** Whether it may replace the key of a host that is already enrolled. */
  replace: boolean;
  issuedBy: string;
  issuedAt: string;
  expiresAt: string;
  usedAt?: string;
}

/** A key a host had before it was enrolled again with another one. */
export interface PreviousHostKey {
  publicKey: string;
  fingerprint: string;
  enrolledAt: string;
  replacedAt: string;
}

/** A host's enrolled key: what proves every later registration, heartbeat and event of it. */
export interface Enrollment {
  host: string;
  /** Base64 of the raw Ed25519 public key. */
  publicKey: string;
  fingerprint: string;
  enrolledAt: string;
  /** The labels its token fixed, when it fixed any. */
  labels?: Record<string, string>;
  /** Keys it had before, oldest first: events they signed before `replacedAt` still count. */
  previous: PreviousHostKey[];
}

export interface IssuedToken {
  token: string;
  host: string;
  expiresAt: string;
}

export interface TokenRequest {
  host: string;
  labels?: Record<string, string> | undefined;
  ttlSeconds?: number | undefined;
  replace?: boolean | undefined;
}

/**
 * Enrolled host keys and open join tokens, in memory and written through to the registry's store
 * (kinds `enrollments` and `joinTokens`), so that both outlive a restart. A host enrolls once, with
 * a token an admin asked for and its host key; from then on that key alone is its proof.
 */
export class Enrollments {
  readonly #store: RegistryStore;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #maxHosts: number;
  readonly #enrolled = new Map<string, Enrollment>();
  readonly #tokens = new Map<string, JoinTokenRecord>();
  /** Parsed scopes and keys by host id, made again when the enrollment changes. */
  readonly #scopes = new Map<string, { scope: Scope; keys: { scope: Scope; replacedAt: number | undefined }[] }>();

  constructor(options: { store: RegistryStore; log: Logger; now: () => number; maxHosts: number }) {
    this.#store = options.store;
    this.#log = options.log;
    this.#now = options.now;
    this.#maxHosts = options.maxHosts;
  }

  get size(): number {
    return this.#enrolled.size;
  }

  /**
   * A join token for `host`, answered once and kept only as its hash.
   *
   * @throws FerryError FERRY_ERR_REGISTRY_LIMIT when MAX_OPEN_TOKENS are open.
   */
  issue(request: TokenRequest, issuedBy: string): IssuedToken {
    this.#dropExpired();
    if (this.#tokens.size >= MAX_OPEN_TOKENS) {
      throw new FerryError('FERRY_ERR_REGISTRY_LIMIT', { message: `${MAX_OPEN_TOKENS} join tokens were issued and have not expired yet`, details: { kind: 'joinTokens', limit: MAX_OPEN_TOKENS } });
    }
    const token = randomBytes(32).toString('base64url');
    const now = this.#now();
    const record: JoinTokenRecord = {
      hash: tokenHash(token), host: request.host, replace: request.replace === true, issuedBy,
      issuedAt: new Date(now).toISOString(), expiresAt: new Date(now + (request.ttlSeconds ?? DEFAULT_TOKEN_TTL_SECONDS) * 1000).toISOString(),
      ...(request.labels ? { labels: request.labels } : {}),
    };
    this.#tokens.set(record.hash, record);
    this.#store.set('joinTokens', record.hash, record);
    this.#log.info({ host: record.host, expiresAt: record.expiresAt, replace: record.replace, issuedBy, pinnedLabels: record.labels ?? null }, 'join token issued');
    return { token, host: record.host, expiresAt: record.expiresAt };
  }

  /**
   * The open token for `host`, checked without using it up (enrollment checks it before it spends
   * anything on the request, and uses it once the key is proven).
   *
   * @throws FerryError FERRY_ERR_JOIN_TOKEN_INVALID, the same for every reason.
   */
  check(token: string, host: string): JoinTokenRecord {
    const record = this.#tokens.get(tokenHash(token));
    let reason: string | undefined;
    if (!record) reason = 'unknown';
    else if (record.usedAt !== undefined) reason = 'used';
    else if (Date.parse(record.expiresAt) <= this.#now()) reason = 'expired';
    else if (!sameText(record.host, host)) reason = `issued for ${record.host}`;
    if (reason !== undefined || !record) {
      this.#log.warn({ host, reason }, 'enrollment refused: join token');
      throw new FerryError('FERRY_ERR_JOIN_TOKEN_INVALID');
    }
    return record;
  }

  /**
   * Uses the token up and enrolls `publicKey` as `host`'s key. Enrolling the key the host already
   * has changes nothing (and leaves the token open); another key needs a token issued with
   * `replace`.
   *
   * @throws FerryError FERRY_ERR_JOIN_TOKEN_INVALID, FERRY_ERR_HOST_ENROLLED, FERRY_ERR_REGISTRY_LIMIT.
   */
  enroll(token: string, host: string, publicKey: string): Enrollment {
    // Checked again: the proof of possession was awaited since the first check.
    const record = this.check(token, host);
    const keyText = publicKeyText(parsePublicKey(publicKey, 'publicKey'));
    const current = this.#enrolled.get(host);
    if (current?.publicKey === keyText) {
      // A retried enrollment: nothing changes, and the token is spent all the same.
      this.#spend(record);
      return current;
    }
    if (current && !record.replace) {
      this.#log.warn({ host, enrolled: current.fingerprint, presented: fingerprint(keyText) }, 'enrollment refused: the host is enrolled with another key');
      throw new FerryError('FERRY_ERR_HOST_ENROLLED', { details: { host } });
    }
    if (!current && this.#enrolled.size >= this.#maxHosts) {
      throw new FerryError('FERRY_ERR_REGISTRY_LIMIT', { message: `The registry has ${this.#maxHosts} enrolled hosts (FERRY_MAX_HOSTS)`, details: { kind: 'hosts', limit: this.#maxHosts } });
    }
    this.#spend(record);
    const now = new Date(this.#now()).toISOString();
    // A token that fixes no labels leaves those an earlier enrollment fixed.
    const labels = record.labels ?? current?.labels;
    const enrollment: Enrollment = {
      host, publicKey: keyText, fingerprint: fingerprint(keyText), enrolledAt: now,
      ...(labels ? { labels } : {}),
      previous: current ? [...current.previous, { publicKey: current.publicKey, fingerprint: current.fingerprint, enrolledAt: current.enrolledAt, replacedAt: now }] : [],
    };
    this.#set(enrollment);
    this.#log.info({ host, fingerprint: enrollment.fingerprint, replaced: current?.fingerprint ?? null }, 'host key enrolled');
    return enrollment;
  }

  get(host: string): Enrollment | undefined {
    return this.#enrolled.get(host);
  }

  /** The TrustStore's `extraKeys`: `host.<id>` is known as a `host` key for that one host. */
  scopeFor(keyId: string): Scope | undefined {
    if (!keyId.startsWith('host.')) return undefined;
    const host = keyId.slice('host.'.length);
    return this.#parsed(host)?.scope;
  }

  /**
   * The keys whose signature on an event about `host` that reached the stream at `arrivalMs` is
   * believed: the current key, and a replaced one for what arrived before it was replaced.
   */
  keysAt(host: string, arrivalMs: number, isRevoked: (scope: Scope) => boolean = () => false): KeyObject[] {
    return (this.#parsed(host)?.keys ?? [])
      .filter((k) => (k.replacedAt === undefined || arrivalMs < k.replacedAt) && !isRevoked(k.scope))
      .map((k) => k.scope.publicKey);
  }

  /**
   * Merges stored state (Redis, the key file) into memory, whichever copy is behind: of two
   * enrollments of a host the later one stands, and a token used in any copy is used. Answers
   * whether memory changed.
   */
  adopt(data: Pick<StoreData, 'enrollments' | 'joinTokens'>): boolean {
    let changed = false;
    for (const [host, value] of Object.entries(data.enrollments)) {
      const enrollment = value as Enrollment;
      const current = this.#enrolled.get(host);
      if (current && current.enrolledAt >= enrollment.enrolledAt) continue;
      try {
        parsePublicKey(enrollment.publicKey, `enrollment of ${host}`);
        this.#enrolled.set(host, { ...enrollment, previous: enrollment.previous ?? [] });
        this.#scopes.delete(host);
        changed = true;
      } catch (err) {
        this.#log.error({ err, host }, 'a stored enrollment holds no usable key; the host must enroll again');
      }
    }
    for (const [hash, value] of Object.entries(data.joinTokens)) {
      const record = value as JoinTokenRecord;
      const current = this.#tokens.get(hash);
      if (!current) {
        this.#tokens.set(hash, record);
        changed = true;
      } else if (current.usedAt === undefined && record.usedAt !== undefined) {
        current.usedAt = record.usedAt;
        changed = true;
      }
    }
    return changed;
  }

  dump(): Pick<StoreData, 'enrollments' | 'joinTokens'> {
    return { enrollments: Object.fromEntries(this.#enrolled), joinTokens: Object.fromEntries(this.#tokens) };
  }

  #spend(record: JoinTokenRecord): void {
    record.usedAt = new Date(this.#now()).toISOString();
    this.#store.set('joinTokens', record.hash, record);
  }

  #set(enrollment: Enrollment): void {
    this.#enrolled.set(enrollment.host, enrollment);
    this.#scopes.delete(enrollment.host);
    this.#store.set('enrollments', enrollment.host, enrollment);
  }

  #parsed(host: string): { scope: Scope; keys: { scope: Scope; replacedAt: number | undefined }[] } | undefined {
    const cached = this.#scopes.get(host);
    if (cached) return cached;
    const enrollment = this.#enrolled.get(host);
    if (!enrollment) return undefined;
    const scopeOf = (publicKey: string): Scope => toScope({ keyId: hostKeyId(host), publicKey, role: 'host', services: ['*'], hosts: [host], graceSeconds: 0 }, {}, `enrollment of ${host}`);
    const scope = scopeOf(enrollment.publicKey);
    const keys = [
      { scope, replacedAt: undefined },
      ...enrollment.previous.map((p) => ({ scope: scopeOf(p.publicKey), replacedAt: Date.parse(p.replacedAt) })),
    ];
    const parsed = { scope, keys };
    this.#scopes.set(host, parsed);
    return parsed;
  }

  #dropExpired(): void {
    const now = this.#now();
    for (const [hash, record] of this.#tokens) {
      if (Date.parse(record.expiresAt) > now) continue;
      this.#tokens.delete(hash);
      this.#store.delete('joinTokens', hash);
    }
  }
}

function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Checks an enrollment request's signature against the key it presents in its body, with the
 * registry's own audience, clock window and nonce store: the caller proves it holds the private
 * half of the key it asks to enroll, and the request cannot be replayed.
 */
export class EnrollmentProof {
  readonly #nonces: NonceStore;
  readonly #audience: string;
  readonly #startedAt: number;

  constructor(options: { nonces: NonceStore; audience: string; startedAt: number }) {
    this.#nonces = options.nonces;
    this.#audience = options.audience;
    this.#startedAt = options.startedAt;
  }

  /** @throws FerryError the verifier's 401s (FERRY_ERR_UNKNOWN_KEY when the key id is not `host.<host>`). */
  async verify(request: RequestFacts, host: string, publicKey: string): Promise<Verified> {
    const keyId = hostKeyId(host);
    const scope = toScope({ keyId, publicKey, role: 'host', services: ['*'], hosts: [host], graceSeconds: 0 }, {}, 'publicKey');
    const trust = new TrustStore({ data: emptyTrust(), extraKeys: (id) => (id === keyId ? scope : undefined) });
    return new RequestVerifier({ trust, nonces: this.#nonces, audience: this.#audience, startedAt: this.#startedAt }).verify(request);
  }
}
