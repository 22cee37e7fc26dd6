import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  GRANT_TYPE, GrantPayloadSchema, REVOCATIONS_TYPE, ROLES, RevocationsPayloadSchema, TrustStore, emptyTrust, fingerprint, isValidKeyId, issueGrant, issueRevocations,
  parseDocument, parsePrivateKey, parsePublicKey, publicKeyText, readTrustFileSync, validity, writeTrustFile,
  type GrantPayload, type RevocationsPayload, type Role, type SignedDocument, type SigningKey, type TrustFile, type Validity,
} from '@ferry/auth';
import { FerryError, checkSelectorInput, isFerryError, parseDuration, type ErrorCode } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { warnIfShared } from './keys.ts';

/** Where a receiver looks when neither FERRY_TRUST_FILE nor FERRY_DATA_DIR is set. */
const DEFAULT_DATA_DIR = '/var/lib/ferry';
/** Base64 of a raw 32-byte Ed25519 public key, as `ferry key new` prints it. */
const RAW_PUBLIC_KEY = /^[A-Za-z0-9+/]{43}=?$/;
/** A service or host pattern of a scope: printable, no spaces (as grants and trust files take it). */
const PATTERN = /^[\x21-\x7e]{1,256}$/;
const MAX_PATTERNS = 64;
const MAX_GRACE_SECONDS = 366 * 24 * 3600;

/** `ferry grant issue|show|revoke`: signed grants and revocation lists, made with an admin key. */
export async function grantCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'issue') return await issue(rest, io);
  if (sub === 'show') return await show(rest, io);
  if (sub === 'revoke') return await revoke(rest, io);
  throw usage(`"ferry grant ${sub ?? ''}": expected "grant issue", "grant show" or "grant revoke"`);
}

/** `ferry trust add|remove|list`: the trust file of a receiver, registry or sender service. */
export async function trustCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'add') return await trustAdd(rest, io);
  if (sub === 'remove') return await trustRemove(rest, io);
  if (sub === 'list') return trustList(rest, io);
  throw usage(`"ferry trust ${sub ?? ''}": expected "trust add", "trust remove" or "trust list"`);
}

const SIGNER = { 'key-id': { type: 'string' }, 'key-file': { type: 'string' } } as const;
const SCOPE = {
  role: { type: 'string' }, service: { type: 'string', multiple: true }, host: { type: 'string', multiple: true },
  'not-before': { type: 'string' }, 'not-after': { type: 'string' }, grace: { type: 'string' },
} as const;

async function issue(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, {
    ...SIGNER, ...SCOPE, id: { type: 'string' }, 'public-key': { type: 'string' }, note: { type: 'string' }, out: { type: 'string', short: 'o' },
  });
  if (values.id === undefined || values['public-key'] === undefined) throw usage('--id KEY_ID and --public-key KEY (of the key being granted) are required');
  const keyId = keyIdArg(values.id);
  const publicKey = await publicKeyArg(values['public-key']);
  const scope = scopeOf(values);
  if (values.note !== undefined && values.note.length > 256) throw usage('--note: at most 256 characters');
  const grant = issueGrant({ keyId, publicKey, ...scope, ...(values.note === undefined ? {} : { note: values.note }) }, await signer(values, io));
  await output(io, grant, values.out);
  const payload = payloadOf(grant) as GrantPayload;
  line(io.stderr, `grant ${payload.id} for ${keyId}: ${payload.role}, services ${payload.services.join(',')}, hosts ${payload.hosts.join(',')}, ${until(payload)}`);
  if (payload.notAfter === undefined) line(io.stderr, 'note: without --not-after this grant stays valid until it is revoked ("ferry grant revoke")');
  return 0;
}

async function revoke(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { ...SIGNER, key: { type: 'string', multiple: true }, grant: { type: 'string', multiple: true }, out: { type: 'string', short: 'o' } });
  const keys = values.key ?? [];
  const grants = values.grant ?? [];
  if (keys.length === 0 && grants.length === 0) throw usage('name what to revoke: --key KEY_ID|FINGERPRINT and/or --grant GRANT_ID (repeatable)');
  for (const key of keys) if (!isValidKeyId(key) && !/^SHA256:[A-Za-z0-9+/]{43}$/.test(key)) throw usage(`--key ${key}: a key id or a fingerprint (SHA256:…, as "ferry key show" and "ferry trust list" print it)`);
  for (const grant of grants) if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(grant)) throw usage(`--grant ${grant}: a grant id (as "ferry grant show" and "ferry trust list" print it)`);
  await output(io, issueRevocations({ keys, grants }, await signer(values, io)), values.out);
  line(io.stderr, 'add it to the trust file of every receiver, registry and sender service: "ferry trust add FILE"');
  return 0;
}

async function show(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { trust: { type: 'string' }, json: { type: 'boolean' } }, 1);
  const file = positionals[0];
  if (file === undefined) throw usage('ferry grant show FILE [--trust TRUST_FILE]');
  const doc = documentOf(await readText(file), file);
  const payload = payloadOf(doc);
  const verdict = values.trust === undefined
    ? (payload === undefined ? { valid: false, text: 'NOT valid: the payload is not JSON' } : { valid: undefined, text: 'signature not checked (give --trust TRUST_FILE)' })
    : checkAgainst(doc, payload, values.trust);
  const code = verdict.valid === false ? 1 : 0;
  if (values.json === true) {
    line(io.stdout, JSON.stringify({ type: doc.type, signedBy: doc.keyId, payload: payload ?? null, valid: verdict.valid ?? null, verdict: verdict.text }));
    return code;
  }
  line(io.stdout, `${'type'.padEnd(13)}${doc.type}`);
  line(io.stdout, `${'signed by'.padEnd(13)}${doc.keyId}`);
  if (payload === undefined) line(io.stdout, `${'payload'.padEnd(13)}(not JSON)`);
  for (const [key, value] of Object.entries(payload ?? {})) line(io.stdout, `${key.padEnd(13)}${Array.isArray(value) ? value.join(', ') : String(value)}`);
  line(io.stdout, `${'verdict'.padEnd(13)}${verdict.text}`);
  return code;
}

/**
 * Whether a trust file would accept the document: signed by one of its admin keys, and for a
 * grant, not revoked by its lists and in force now. `valid` false: the command exits 1.
 */
function checkAgainst(doc: SignedDocument, payload: Record<string, unknown> | undefined, trustPath: string): { valid: boolean; text: string } {
  const trust = readTrustFileSync(trustPath);
  let store: TrustStore;
  try {
    store = new TrustStore({ data: doc.type === GRANT_TYPE ? { ...trust, grants: [doc] } : { ...trust, revocations: [doc] } });
  } catch (err) {
    return { valid: false, text: `NOT valid here: ${reason(err)}` };
  }
  const signed = `signed by ${doc.keyId}, an admin key of ${trustPath}`;
  if (doc.type !== GRANT_TYPE) return { valid: true, text: `valid: ${signed}` };
  const grant = payload as GrantPayload;
  const scope = store.scopesFor(grant.keyId).find((s) => s.grantId === grant.id);
  if (scope === undefined) return { valid: false, text: 'NOT valid here: the grant could not be read back' };
  if (store.isRevoked(scope)) return { valid: false, text: `NOT valid here: ${signed}, but revoked by a revocation list of ${trustPath}` };
  const state: Validity = validity(scope, Math.floor(Date.now() / 1000));
  if (state === 'expired') return { valid: false, text: `NOT valid any more: expired ${graceEnd(grant)} (issue a new grant)` };
  if (state === 'not-yet') return { valid: false, text: `NOT valid yet: from ${grant.notBefore ?? '?'}` };
  if (state === 'grace') return { valid: true, text: `valid, in its grace period until ${graceEnd(grant)}: ${signed}; issue a new grant` };
  return { valid: true, text: `valid: ${signed}; ${until(grant)}` };
}

async function trustAdd(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { ...SCOPE, file: { type: 'string' }, id: { type: 'string' }, 'public-key': { type: 'string' } }, 1);
  const path = trustPath(values.file, io);
  const document = positionals[0];
  if (document !== undefined) {
    if (values.id !== undefined || values['public-key'] !== undefined || values.role !== undefined) {
      throw usage('give either a grant or revocation list FILE, or --id, --public-key and --role, not both');
    }
    const doc = documentOf(await readText(document), document);
    const trust = await currentTrust(path);
    const list = doc.type === REVOCATIONS_TYPE ? trust.revocations : trust.grants;
    if (list.some((d) => (d as Partial<SignedDocument>).signature === doc.signature)) {
      line(io.stdout, `${path}: holds this ${describe(doc)} already`);
      return 0;
    }
    list.push(doc);
    await save(path, trust, document);
    line(io.stdout, `${path}: added ${describe(doc)} signed by ${doc.keyId}`);
    return 0;
  }
  if (values.id === undefined || values['public-key'] === undefined) {
    throw usage('ferry trust add GRANT_OR_REVOCATIONS_FILE, or --id KEY_ID --public-key KEY --role ROLE [--service GLOB] [--host ID|K=V] …');
  }
  const id = keyIdArg(values.id);
  const publicKey = await publicKeyArg(values['public-key']);
  const scope = scopeOf(values);
  const trust = await currentTrust(path);
  const entry = {
    id, publicKey, role: scope.role, services: scope.services ?? ['*'], hosts: scope.hosts ?? ['*'],
    ...(scope.notBefore ? { notBefore: scope.notBefore.toISOString() } : {}), ...(scope.notAfter ? { notAfter: scope.notAfter.toISOString() } : {}),
    graceSeconds: scope.graceSeconds ?? 0,
  };
  const replaced = trust.keys.some((k) => k.id === id);
  trust.keys = [...trust.keys.filter((k) => k.id !== id), entry];
  await save(path, trust, '--id');
  line(io.stdout, `${path}: ${replaced ? 'replaced the entry of' : 'trusts'} ${id} (${fingerprint(publicKey)}) as ${entry.role} for services ${entry.services.join(',')} on hosts ${entry.hosts.join(',')}, ${until(entry)}`);
  return 0;
}

async function trustRemove(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { file: { type: 'string' }, 'drop-signed': { type: 'boolean' } }, 1);
  const id = positionals[0];
  if (id === undefined) throw usage('ferry trust remove KEY_ID_OR_GRANT_ID [--drop-signed] [--file TRUST_FILE]');
  const path = trustPath(values.file, io);
  const trust = await currentTrust(path);
  const keys = trust.keys.filter((k) => k.id !== id);
  let grants = trust.grants.filter((g) => {
    const payload = GrantPayloadSchema.safeParse(payloadOf(parseDocument(g, GRANT_TYPE)));
    return !payload.success || (payload.data.id !== id && payload.data.keyId !== id);
  });
  let revocations = trust.revocations;
  const removed = trust.keys.length - keys.length + trust.grants.length - grants.length;
  if (removed === 0) throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `${path} holds no key or grant ${id}` });
  // An admin key's grants and revocation lists are refused once it is gone: dropping them is asked for, never implied.
  const signedBy = (doc: unknown): boolean => (doc as Partial<SignedDocument>).keyId === id;
  const signed = [...grants, ...revocations].filter(signedBy).length;
  if (signed > 0 && keys.some((k) => k.id === id) === false && trust.keys.some((k) => k.id === id && k.role === 'admin')) {
    if (values['drop-signed'] !== true) {
      throw usage(`${id} signed ${signed} grant(s) or revocation list(s) in ${path}, which no service would accept without it: `
        + 'issue them again with another admin key and add those first, then remove it with --drop-signed');
    }
    grants = grants.filter((g) => !signedBy(g));
    revocations = revocations.filter((r) => !signedBy(r));
  }
  await save(path, { ...trust, keys, grants, revocations }, id);
  line(io.stdout, `${path}: removed ${removed} entr${removed === 1 ? 'y' : 'ies'} for ${id}${values['drop-signed'] === true ? ` and ${signed} document(s) it signed` : ''}`);
  line(io.stdout, 'grants presented with requests are still accepted here: to refuse a key everywhere, revoke it ("ferry grant revoke") and add the list to every trust file');
  return 0;
}

/** One line (or JSON entry) per key the trust file trusts, directly or by a grant, with its state now. */
function trustList(args: string[], io: Io): number {
  const { values } = parse(args, { file: { type: 'string' }, json: { type: 'boolean' } });
  const path = trustPath(values.file, io);
  const trust = readTrustFileSync(path);
  // Throws, naming the entry, for a file a service would refuse.
  new TrustStore({ data: trust });
  const lists = trust.revocations.map((r) => {
    const doc = parseDocument(r, REVOCATIONS_TYPE);
    return { signedBy: doc.keyId, ...RevocationsPayloadSchema.parse(payloadOf(doc)) };
  });
  const revokedKeys = new Set(lists.flatMap((r) => r.keys));
  const revokedGrants = new Set(lists.flatMap((r) => r.grants));
  const now = Math.floor(Date.now() / 1000);
  const state = (entry: { keyId: string; publicKey: string; grant?: string; notBefore?: string | undefined; notAfter?: string | undefined; graceSeconds: number }): ListedKey['state'] => {
    if (revokedKeys.has(entry.keyId) || revokedKeys.has(fingerprint(entry.publicKey)) || (entry.grant !== undefined && revokedGrants.has(entry.grant))) return 'revoked';
    return validity({ notBefore: seconds(entry.notBefore), notAfter: seconds(entry.notAfter), graceSeconds: entry.graceSeconds }, now);
  };
  const entries: ListedKey[] = [
    ...trust.keys.map((k) => ({ keyId: k.id, publicKey: k.publicKey, role: k.role, services: k.services, hosts: k.hosts, notBefore: k.notBefore, notAfter: k.notAfter, graceSeconds: k.graceSeconds, source: 'trust file' })),
    ...trust.grants.map((g) => {
      const doc = parseDocument(g, GRANT_TYPE);
      const p = GrantPayloadSchema.parse(payloadOf(doc));
      return { keyId: p.keyId, publicKey: p.publicKey, role: p.role, services: p.services, hosts: p.hosts, notBefore: p.notBefore, notAfter: p.notAfter, graceSeconds: p.graceSeconds, source: `grant ${p.id}`, grant: p.id, signedBy: doc.keyId };
    }),
  ].map(({ publicKey, ...entry }) => ({ ...entry, fingerprint: fingerprint(publicText(publicKey)), state: state({ ...entry, publicKey: publicText(publicKey) }) }));
  if (values.json === true) {
    line(io.stdout, JSON.stringify({ file: path, keys: entries, revocations: lists }));
    return 0;
  }
  if (entries.length === 0) line(io.stdout, `${path} trusts no key yet: "ferry trust add --id ID --public-key KEY --role admin" adds the first`);
  for (const e of entries) {
    line(io.stdout, `${e.keyId.padEnd(20)} ${e.role.padEnd(6)} ${e.state.padEnd(8)} services ${e.services.join(',')}  hosts ${e.hosts.join(',')}  ${until(e)}  ${e.fingerprint}  ${e.source}${e.signedBy === undefined ? '' : ` (by ${e.signedBy})`}`);
  }
  for (const r of lists) line(io.stdout, `revoked by ${r.signedBy} on ${r.issuedAt}: keys ${r.keys.join(', ') || '-'}; grants ${r.grants.join(', ') || '-'}`);
  return 0;
}

/** One key as "trust list" shows it. */
interface ListedKey {
  keyId: string;
  role: Role;
  services: readonly string[];
  hosts: readonly string[];
  notBefore?: string | undefined;
  notAfter?: string | undefined;
  graceSeconds: number;
  /** `trust file`, or `grant <id>`. */
  source: string;
  grant?: string;
  signedBy?: string;
  fingerprint: string;
  state: Validity | 'revoked';
}

type ScopeValues = {
  role?: string | undefined; service?: string[] | undefined; host?: string[] | undefined; 'not-before'?: string | undefined; 'not-after'?: string | undefined; grace?: string | undefined;
};

/** The scope options, each checked here so that a mistake is a usage error naming its flag. */
function scopeOf(values: ScopeValues): { role: Role; services?: string[]; hosts?: string[]; notBefore?: Date; notAfter?: Date; graceSeconds?: number } {
  const role = values.role;
  if (role === undefined || !(ROLES as readonly string[]).includes(role)) throw usage(`--role: one of ${ROLES.join(', ')}`);
  const services = values.service ?? [];
  const hosts = values.host ?? [];
  if (services.length > MAX_PATTERNS || hosts.length > MAX_PATTERNS) throw usage(`at most ${MAX_PATTERNS} --service and ${MAX_PATTERNS} --host`);
  for (const service of services) if (!PATTERN.test(service)) throw usage(`--service ${service}: a service name or glob (web-*), printable, without spaces`);
  for (const host of hosts) {
    if (!PATTERN.test(host)) throw usage(`--host ${host}: a host id or glob (edge-*), or a label selector (env=prod,role=web), without spaces`);
    if (host.includes('=')) checkSelectorInput(`--host ${host}`, host);
  }
  const notBefore = values['not-before'] === undefined ? undefined : instant('not-before', values['not-before']);
  const notAfter = values['not-after'] === undefined ? undefined : instant('not-after', values['not-after']);
  if (notBefore && notAfter && notAfter < notBefore) throw usage('--not-after is before --not-before');
  const graceSeconds = values.grace === undefined ? undefined : duration('grace', values.grace);
  if (graceSeconds !== undefined && graceSeconds > MAX_GRACE_SECONDS) throw usage('--grace: at most 366d');
  return {
    role: role as Role,
    ...(services.length > 0 ? { services } : {}),
    ...(hosts.length > 0 ? { hosts } : {}),
    ...(notBefore ? { notBefore } : {}),
    ...(notAfter ? { notAfter } : {}),
    ...(graceSeconds === undefined ? {} : { graceSeconds }),
  };
}

/** An ISO 8601 instant, or a span from now such as `90d`. */
function instant(name: string, text: string): Date {
  if (/^[\d.]+(?:ms|[smhd])/.test(text)) {
    const date = new Date(Date.now() + duration(name, text) * 1000);
    if (Number.isNaN(date.getTime()) || date.getUTCFullYear() > 9999) throw usage(`--${name} ${text}: too far ahead`);
    return date;
  }
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$/.test(text) || Number.isNaN(Date.parse(text))) {
    throw usage(`--${name}: an ISO 8601 date-time with a zone (2027-01-01T00:00:00Z) or a span from now (90d)`);
  }
  return new Date(text);
}

/** `30s`, `15m`, `12h`, `7d`, `1d12h` or a number of seconds; in whole seconds. */
export function duration(name: string, text: string): number {
  const ms = parseDuration(text, 's');
  if (ms === undefined || ms % 1000 !== 0) throw usage(`--${name} ${text}: a duration in whole seconds, such as 30s, 15m, 12h or 7d (a plain number is seconds)`);
  return ms / 1000;
}

function keyIdArg(id: string): string {
  if (!isValidKeyId(id)) throw usage(`--id ${id}: a key id is letters, digits, ".", "_" and "-", at most 128`);
  return id;
}

/**
 * `--public-key`: base64 of the raw key or a PEM given inline, else a file holding either. Answered
 * as base64 of the raw key, the form trust files and grants carry. A private key is refused: it
 * must not end up in a trust file or a grant, which are copied around.
 */
async function publicKeyArg(value: string): Promise<string> {
  const inline = RAW_PUBLIC_KEY.test(value.trim()) || value.trim().startsWith('-----BEGIN');
  let text = value;
  if (!inline) {
    try {
      text = await readFile(value, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw usage(code === 'ENOENT'
        ? `--public-key ${value}: neither a public key (base64 of its 32 bytes, as "ferry key new" prints it, or a PEM) nor a file`
        : `--public-key ${value}: cannot be read (${code ?? 'error'})`);
    }
  }
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) {
    throw usage(`--public-key${inline ? '' : ` ${value}`}: this is a private key; give its public key ("ferry key show FILE" prints it)`);
  }
  try {
    return publicKeyText(parsePublicKey(text, '--public-key'));
  } catch {
    throw usage(`--public-key${inline ? '' : ` ${value}`}: not an Ed25519 public key (base64 of its 32 bytes, as "ferry key new" prints it, or a PEM)`);
  }
}

/** The admin key that signs: --key-id/--key-file, else FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY. */
async function signer(values: { 'key-id'?: string | undefined; 'key-file'?: string | undefined }, io: Io): Promise<SigningKey> {
  const keyId = values['key-id'] ?? io.env.FERRY_KEY_ID;
  const keyFile = values['key-file'] ?? io.env.FERRY_KEY_FILE;
  const inline = keyFile === undefined ? io.env.FERRY_KEY : undefined;
  if (keyId === undefined || (keyFile === undefined && inline === undefined)) {
    throw usage('the admin key signs: --key-id ID --key-file FILE (or FERRY_KEY_ID and FERRY_KEY_FILE)');
  }
  if (!isValidKeyId(keyId)) throw usage(`--key-id ${keyId}: a key id is letters, digits, ".", "_" and "-", at most 128`);
  const where = keyFile === undefined ? 'FERRY_KEY' : `${values['key-file'] === undefined ? 'FERRY_KEY_FILE' : '--key-file'} ${keyFile}`;
  let pem = inline ?? '';
  if (keyFile !== undefined) {
    try {
      pem = await readFile(keyFile, 'utf8');
    } catch (err) {
      throw usage(`${where}: cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  let privateKey;
  try {
    privateKey = parsePrivateKey(pem, where);
  } catch (err) {
    throw usage(reason(err));
  }
  if (keyFile !== undefined) await warnIfShared(io, keyFile);
  return { keyId, privateKey };
}

/** --file, else FERRY_TRUST_FILE, else <FERRY_DATA_DIR>/trust.json: where the services look. */
function trustPath(given: string | undefined, io: Io): string {
  return given ?? io.env.FERRY_TRUST_FILE ?? join(io.env.FERRY_DATA_DIR ?? DEFAULT_DATA_DIR, 'trust.json');
}

async function currentTrust(path: string): Promise<TrustFile> {
  try {
    await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyTrust();
  }
  return readTrustFileSync(path);
}

/**
 * Writes the trust file once a service would accept it; otherwise it is left as it was and the
 * problem is told in the words of the command (`what` names the argument that brought it in).
 */
async function save(path: string, trust: TrustFile, what: string): Promise<void> {
  try {
    new TrustStore({ data: trust });
  } catch (err) {
    const inner = isFerryError(err) && isFerryError(err.cause) ? err.cause : err;
    const code: ErrorCode = isFerryError(inner) && inner.code !== 'FERRY_ERR_CONFIG' ? inner.code : 'FERRY_ERR_USAGE';
    throw new FerryError(code, { message: `${what}: ${path} is left as it was: ${reason(err)}`, cause: err });
  }
  try {
    await writeTrustFile(path, trust);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw usage(`${path}: cannot be written (${code ?? 'error'})${code === 'EACCES' ? ': run as the user the service runs as, or give --file' : ''}`);
  }
}

/** The signed document in a file, of the type it names (a grant or a revocation list). */
function documentOf(text: string, file: string): SignedDocument {
  let type: unknown;
  try {
    const trimmed = text.trim();
    type = (JSON.parse(trimmed.startsWith('{') ? trimmed : Buffer.from(trimmed, 'base64url').toString('utf8')) as { type?: unknown } | null)?.type;
  } catch {
    type = undefined;
  }
  if (type !== GRANT_TYPE && type !== REVOCATIONS_TYPE) throw usage(`${file}: not a grant nor a revocation list (a signed document of type ${GRANT_TYPE} or ${REVOCATIONS_TYPE})`);
  try {
    return parseDocument(text, type);
  } catch (err) {
    throw new FerryError('FERRY_ERR_BAD_GRANT', { message: `${file}: ${reason(err)}`, cause: err });
  }
}

/** The payload's JSON, unchecked (its signature is checked against a trust file elsewhere); undefined when it is not JSON. */
function payloadOf(doc: SignedDocument): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(doc.payload, 'base64').toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : undefined;
  } catch {
    return undefined;
  }
}

function describe(doc: SignedDocument): string {
  const payload = payloadOf(doc);
  if (doc.type === REVOCATIONS_TYPE) {
    const list = payload as Partial<RevocationsPayload> | undefined;
    return `a revocation list (keys ${list?.keys?.join(', ') || '-'}; grants ${list?.grants?.join(', ') || '-'})`;
  }
  return `grant ${String(payload?.id)} for ${String(payload?.keyId)}`;
}

function until(scope: { notAfter?: string | undefined; graceSeconds: number }): string {
  if (scope.notAfter === undefined) return 'no expiry';
  return `until ${scope.notAfter}${scope.graceSeconds > 0 ? ` (+${scope.graceSeconds}s grace)` : ''}`;
}

function graceEnd(grant: { notAfter?: string | undefined; graceSeconds: number }): string {
  return grant.notAfter === undefined ? '?' : new Date(Date.parse(grant.notAfter) + grant.graceSeconds * 1000).toISOString();
}

function seconds(iso: string | undefined): number | undefined {
  return iso === undefined ? undefined : Math.floor(Date.parse(iso) / 1000);
}

/** A trust entry's public key as base64 of its raw bytes (a trust file may hold a PEM). */
function publicText(key: string): string {
  return publicKeyText(parsePublicKey(key, 'publicKey'));
}

/** A problem's message without the "trust data: " a TrustStore built from data puts in front. */
function reason(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/^trust data: /, '');
}

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw usage(`${file}: cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
}

async function output(io: Io, doc: SignedDocument, out: string | undefined): Promise<void> {
  const text = `${JSON.stringify(doc, null, 2)}\n`;
  if (out === undefined) {
    io.stdout.write(text);
    return;
  }
  // Not secret (public keys and a scope), but never written over: a grant file is replaced on purpose.
  await writeFile(out, text, { mode: 0o644, flag: 'wx' }).catch((err: unknown) => {
    throw usage(`${out}: ${(err as NodeJS.ErrnoException).code === 'EEXIST' ? 'exists already' : 'cannot be written'}`);
  });
  line(io.stderr, `wrote ${out}`);
}

function usage(message: string): FerryError {
  return new FerryError('FERRY_ERR_USAGE', { message });
}
