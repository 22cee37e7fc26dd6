import { randomBytes } from 'node:crypto';
import { FerryError } from '@ferry/protocol';

const KEY_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MIN_SECRET_LENGTH = 16;
const NOT_AFTER_MARK = ':notAfter=';
// A zone is required: "2026-12-01T00:00" would mean a different instant on every host.
const ISO_WITH_ZONE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$/;

/** One key of a ring. */
export interface KeyEntry {
  id: string;
  secret: string;
  /** Unix seconds after which the key is refused; absent for a key that does not expire. */
  notAfter?: number;
}

/** What may be shown about a key: never its secret. */
export interface KeyDescription {
  id: string;
  notAfter: string | null;
}

/**
 * Several keys live at once so that a key can be rotated without a moment when nothing works; an
 * old key may carry a `notAfter` so that it stops working by itself when its overlap ends.
 */
export class KeyRing {
  readonly #keys: ReadonlyMap<string, KeyEntry>;

  constructor(keys: Iterable<KeyEntry | readonly [string, string]>) {
    const entries = new Map<string, KeyEntry>();
    for (const key of keys) {
      const entry: KeyEntry = 'id' in key ? key : { id: key[0], secret: key[1] };
      entries.set(entry.id, entry);
    }
    this.#keys = entries;
  }

  /**
   * Parses `keyid:secret[:notAfter=ISO-8601][,…]`; problems name the entry, never the secret.
   * Everything between the first colon and `:notAfter=` (or the end) is the secret.
   */
  static parse(spec: string): KeyRing {
    const entries: KeyEntry[] = [];
    const problems: string[] = [];
    const seen = new Set<string>();
    spec.split(',').map((part) => part.trim()).filter(Boolean).forEach((part, index) => {
      const colon = part.indexOf(':');
      // Without a colon the entry may be a bare secret: it must not be echoed as a key id.
      if (colon < 0) { problems.push(`entry ${index + 1}: expected keyid:secret`); return; }
      const id = part.slice(0, colon);
      let secret = part.slice(colon + 1);
      let notAfter: number | undefined;
      const mark = secret.lastIndexOf(NOT_AFTER_MARK);
      if (mark >= 0) {
        const text = secret.slice(mark + NOT_AFTER_MARK.length);
        secret = secret.slice(0, mark);
        const ms = ISO_WITH_ZONE.test(text) ? Date.parse(text) : Number.NaN;
        if (Number.isNaN(ms)) { problems.push(`entry ${index + 1}: notAfter must be an ISO 8601 date-time with a zone, e.g. 2026-12-01T00:00:00Z`); return; }
        notAfter = Math.floor(ms / 1000);
      }
      // Entries are named by position only: written the wrong way round, the id is the secret.
      if (!KEY_ID.test(id)) problems.push(`entry ${index + 1}: key id must match ${KEY_ID.source}`);
      else if (seen.has(id)) problems.push(`entry ${index + 1}: the key id of an earlier entry appears again`);
      else if (secret.length < MIN_SECRET_LENGTH) problems.push(`entry ${index + 1}: secret must be at least ${MIN_SECRET_LENGTH} characters`);
      else { seen.add(id); entries.push(notAfter === undefined ? { id, secret } : { id, secret, notAfter }); }
    });
    if (entries.length === 0 && problems.length === 0) problems.push('no keys given');
    if (problems.length > 0) throw new FerryError('FERRY_ERR_CONFIG', { message: problems.join('; ') });
    return new KeyRing(entries);
  }

  /** The key with that id, expired or not: the verifier decides what an expiry means. */
  lookup(keyId: string): Readonly<KeyEntry> | undefined {
    return this.#keys.get(keyId);
  }

  secretFor(keyId: string): string | undefined {
    return this.#keys.get(keyId)?.secret;
  }

  get ids(): string[] {
    return [...this.#keys.keys()];
  }

  /** Ids and expiry dates, safe for a log line. */
  describe(): KeyDescription[] {
    return [...this.#keys.values()].map((k) => ({
      id: k.id, notAfter: k.notAfter === undefined ? null : new Date(k.notAfter * 1000).toISOString(),
    }));
  }
}

/** A new secret: 32 random bytes, base64url, safe in env vars, headers and shell. */
export function generateSecret(): string {
  return randomBytes(32).toString('base64url');
}

export function isValidKeyId(keyId: string): boolean {
  return KEY_ID.test(keyId);
}
