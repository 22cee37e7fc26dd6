import { chmod, mkdir, open, rename, rm } from 'node:fs/promises';
import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { z } from 'zod';
import { FerryError, isFerryError } from '@ferry/protocol';
import {
  GRANT_TYPE, GrantPayloadSchema, REVOCATIONS_TYPE, RevocationsPayloadSchema, ScopeFields, roleAllows, toScope, validity, type Scope,
} from './grants.ts';
import { KEY_ID_PATTERN } from './keys.ts';
import { openDocument, parseDocument, type SignedDocument } from './signed.ts';

export const TRUST_SCHEMA = 'ferry.trust/v1';
/** How often, at most, a trust file is looked at again for changes (a revocation takes effect within it). */
const RELOAD_INTERVAL_MS = 1000;

const KeyEntrySchema = z.strictObject({
  id: z.string().regex(KEY_ID_PATTERN, 'a key id: letters, digits, ".", "_" and "-"'),
  publicKey: z.string().max(4096),
  ...ScopeFields,
  note: z.string().max(256).optional(),
});

export const TrustFileSchema = z.strictObject({
  schema: z.literal(TRUST_SCHEMA),
  /** Keys trusted as written here, each with its scope; `admin` ones sign grants and revocations. */
  keys: z.array(KeyEntrySchema).max(10_000).default([]),
  grants: z.array(z.unknown()).max(10_000).default([]),
  revocations: z.array(z.unknown()).max(1000).default([]),
});
export type TrustFile = z.output<typeof TrustFileSchema>;
export type TrustKeyEntry = z.output<typeof KeyEntrySchema>;

/** Keys known elsewhere than in the trust file: the registry's enrolled host keys. */
export type ExtraKeys = (keyId: string) => Scope | undefined;

export interface TrustStoreOptions {
  /** The trust file, read now and again whenever it changes. */
  file?: string;
  /** A trust document given directly (tests, one-shot tools). */
  data?: unknown;
  extraKeys?: ExtraKeys;
  /** Unix seconds. */
  now?: () => number;
}

interface Loaded {
  keys: Scope[];
  /** Checked grants, by key id. */
  grants: Map<string, Scope[]>;
  revokedKeys: Set<string>;
  revokedGrants: Set<string>;
}

/**
 * The keys a service trusts and what each may do: the keys of its trust file, the grants signed
 * by its admin keys (stored, or presented with a request) and the revocation lists. Everything is
 * checked here, offline: nobody is called.
 */
export class TrustStore {
  readonly #file: string | undefined;
  readonly #extra: ExtraKeys | undefined;
  readonly #now: () => number;
  #loaded: Loaded;
  #stamp = '';
  #checkedAt = 0;
  /** Presented grants already checked, by header value (a sender sends the same one each time). */
  readonly #presented = new Map<string, Scope>();

  constructor(options: TrustStoreOptions) {
    this.#file = options.file;
    this.#extra = options.extraKeys;
    this.#now = options.now ?? (() => Math.floor(Date.now() / 1000));
    if (options.file !== undefined) {
      this.#stamp = stampOf(options.file);
      this.#loaded = this.#load(readTrustFileSync(options.file), options.file);
    } else {
      this.#loaded = this.#load(parseTrust(options.data ?? { schema: TRUST_SCHEMA }, 'trust data'), 'trust data');
    }
    this.#checkedAt = Date.now();
  }

  /** Key ids and their roles and fingerprints, safe for a log line. */
  describe(): { keyId: string; role: string; fingerprint: string; grant?: string; notAfter: string | null }[] {
    const all = [...this.#loaded.keys, ...[...this.#loaded.grants.values()].flat()];
    return all.map((s) => ({
      keyId: s.keyId, role: s.role, fingerprint: s.fingerprint, ...(s.grantId ? { grant: s.grantId } : {}),
      notAfter: s.notAfter === undefined ? null : new Date(s.notAfter * 1000).toISOString(),
    }));
  }

  get size(): number {
    return this.#loaded.keys.length + [...this.#loaded.grants.values()].reduce((n, g) => n + g.length, 0);
  }

  /**
   * Every scope under which `keyId` is known, revoked ones included (the caller reports them):
   * trust file entries, stored grants, a grant presented with the request, an enrolled host key.
   *
   * @throws FerryError FERRY_ERR_BAD_GRANT for a presented grant that does not check out.
   */
  scopesFor(keyId: string, presentedGrant?: string): Scope[] {
    this.#refresh();
    const scopes = [...this.#loaded.keys.filter((k) => k.keyId === keyId), ...(this.#loaded.grants.get(keyId) ?? [])];
    if (presentedGrant !== undefined) {
      const grant = this.#presentedGrant(presentedGrant);
      if (grant.keyId !== keyId) throw new FerryError('FERRY_ERR_BAD_GRANT', { message: 'The presented grant is for another key' });
      scopes.push(grant);
    }
    const extra = this.#extra?.(keyId);
    if (extra) scopes.push(extra);
    return scopes;
  }

  isRevoked(scope: Scope): boolean {
    const { revokedKeys, revokedGrants } = this.#loaded;
    return revokedKeys.has(scope.keyId) || revokedKeys.has(scope.fingerprint) || (scope.grantId !== undefined && revokedGrants.has(scope.grantId));
  }

  #presentedGrant(header: string): Scope {
    const cached = this.#presented.get(header);
    if (cached) return cached;
    const scope = this.#checkGrant(parseDocument(header, GRANT_TYPE), this.#loaded.keys);
    // Bounded: a client sending a new grant with every request cannot grow this without limit.
    if (this.#presented.size >= 1000) this.#presented.clear();
    this.#presented.set(header, scope);
    return scope;
  }

  /** A grant is good when an admin key of the trust file, valid now, signed it. */
  #checkGrant(doc: SignedDocument, keys: readonly Scope[]): Scope {
    const issuer = this.#admin(doc, keys);
    const parsed = GrantPayloadSchema.safeParse(openDocument(doc, issuer.publicKey));
    if (!parsed.success) throw new FerryError('FERRY_ERR_BAD_GRANT', { message: `The grant is malformed: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}` });
    return toScope(parsed.data, { grantId: parsed.data.id, issuer: issuer.keyId }, `grant ${parsed.data.id}`);
  }

  #admin(doc: SignedDocument, keys: readonly Scope[]): Scope {
    const now = this.#now();
    const issuer = keys.find((k) => k.keyId === doc.keyId && roleAllows(k.role, 'admin') && validity(k, now) !== 'expired' && validity(k, now) !== 'not-yet');
    if (!issuer) throw new FerryError('FERRY_ERR_BAD_GRANT', { message: `The ${doc.type} document is signed by a key that is not a valid admin key here` });
    return issuer;
  }

  #load(file: TrustFile, where: string): Loaded {
    // A bad selector is a problem of the file like any other: a config error naming the entry.
    const keys = file.keys.map((k, i) => configProblem(`${where}: keys[${i}]`, () => toScope({ ...k, keyId: k.id }, {}, 'publicKey')));
    const grants = new Map<string, Scope[]>();
    file.grants.forEach((raw, i) => {
      const scope = configProblem(`${where}: grants[${i}]`, () => this.#checkGrant(parseDocument(raw, GRANT_TYPE), keys));
      grants.set(scope.keyId, [...(grants.get(scope.keyId) ?? []), scope]);
    });
    const revokedKeys = new Set<string>();
    const revokedGrants = new Set<string>();
    file.revocations.forEach((raw, i) => {
      const list = configProblem(`${where}: revocations[${i}]`, () => {
        const doc = parseDocument(raw, REVOCATIONS_TYPE);
        return RevocationsPayloadSchema.parse(openDocument(doc, this.#admin(doc, keys).publicKey));
      });
      for (const key of list.keys) revokedKeys.add(key);
      for (const grant of list.grants) revokedGrants.add(grant);
    });
    return { keys, grants, revokedKeys, revokedGrants };
  }

  /** Reads the file again when it changed; a file made unreadable or invalid keeps the last good trust. */
  #refresh(): void {
    if (this.#file === undefined || Date.now() - this.#checkedAt < RELOAD_INTERVAL_MS) return;
    this.#checkedAt = Date.now();
    try {
      const stamp = stampOf(this.#file);
      if (stamp === this.#stamp) return;
      this.#loaded = this.#load(readTrustFileSync(this.#file), this.#file);
      this.#stamp = stamp;
      this.#presented.clear();
    } catch {
      // The previous trust stays in force; `ferry trust` checks a file before writing it.
    }
  }
}

function stampOf(file: string): string {
  const s = statSync(file);
  return `${s.mtimeMs}:${s.size}:${s.ino}`;
}

function configProblem<T>(where: string, run: () => T): T {
  try {
    return run();
  } catch (err) {
    const message = isFerryError(err) ? err.message : err instanceof z.ZodError ? err.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') : String(err);
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${where}: ${message}`, cause: err });
  }
}

export function parseTrust(value: unknown, where: string): TrustFile {
  const parsed = TrustFileSchema.safeParse(value);
  if (!parsed.success) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${where}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(file)'}: ${i.message}`).join('; ')}` });
  }
  return parsed.data;
}

export function readTrustFileSync(file: string): TrustFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${file}: cannot read the trust file (${(err as NodeJS.ErrnoException).code ?? 'error'}); make one with "ferry trust add"`, cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${file}: not JSON`, cause: err });
  }
  return parseTrust(value, file);
}

/** An empty trust file's content. */
export function emptyTrust(): TrustFile {
  return { schema: TRUST_SCHEMA, keys: [], grants: [], revocations: [] };
}

/**
 * Writes a trust file whole, 0600, through a temporary file and a rename, after checking that a
 * TrustStore accepts it: a receiver never reads half a file or one it would refuse.
 */
export async function writeTrustFile(file: string, trust: TrustFile): Promise<void> {
  new TrustStore({ data: trust });
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const temporary = `${file}.${process.pid}.tmp`;
  const handle = await open(temporary, 'wx', 0o600);
  try {
    await handle.writeFile(`${JSON.stringify(trust, null, 2)}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await chmod(temporary, 0o600);
    await rename(temporary, file);
  } catch (err) {
    await rm(temporary, { force: true });
    throw err;
  }
}
