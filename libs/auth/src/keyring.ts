import { randomBytes } from 'node:crypto';
import { FerryError } from '@ferry/protocol';

const KEY_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MIN_SECRET_LENGTH = 16;

/** Several keys live at once so that a key can be rotated without a moment when nothing works. */
export class KeyRing {
  readonly #keys: ReadonlyMap<string, string>;

  constructor(keys: Iterable<[string, string]>) {
    this.#keys = new Map(keys);
  }

  /** Parses `keyid:secret[,keyid:secret…]`; problems name the entry, never the secret. */
  static parse(spec: string): KeyRing {
    const entries: [string, string][] = [];
    const problems: string[] = [];
    const seen = new Set<string>();
    spec.split(',').map((part) => part.trim()).filter(Boolean).forEach((part, index) => {
      const colon = part.indexOf(':');
      // Without a colon the entry may be a bare secret: it must not be echoed as a key id.
      if (colon < 0) { problems.push(`entry ${index + 1}: expected keyid:secret`); return; }
      const id = part.slice(0, colon);
      const secret = part.slice(colon + 1);
      // Entries are named by position only: written the wrong way round, the id is the secret.
      if (!KEY_ID.test(id)) problems.push(`entry ${index + 1}: key id must match ${KEY_ID.source}`);
      else if (seen.has(id)) problems.push(`entry ${index + 1}: the key id of an earlier entry appears again`);
      else if (secret.length < MIN_SECRET_LENGTH) problems.push(`entry ${index + 1}: secret must be at least ${MIN_SECRET_LENGTH} characters`);
      else { seen.add(id); entries.push([id, secret]); }
    });
    if (entries.length === 0 && problems.length === 0) problems.push('no keys given');
    if (problems.length > 0) throw new FerryError('FERRY_ERR_CONFIG', { message: problems.join('; ') });
    return new KeyRing(entries);
  }

  secretFor(keyId: string): string | undefined {
    return this.#keys.get(keyId);
  }

  get ids(): string[] {
    return [...this.#keys.keys()];
  }
}

/** A new secret: 32 random bytes, base64url, safe in env vars, headers and shell. */
export function generateSecret(): string {
  return randomBytes(32).toString('base64url');
}

export function isValidKeyId(keyId: string): boolean {
  return KEY_ID.test(keyId);
}
