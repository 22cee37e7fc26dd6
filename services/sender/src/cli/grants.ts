import { readFile, writeFile } from 'node:fs/promises';
import {
  GRANT_TYPE, GrantPayloadSchema, REVOCATIONS_TYPE, ROLES, RevocationsPayloadSchema, TrustStore, emptyTrust, issueGrant, issueRevocations, loadCredentials,
  parseDocument, readTrustFileSync, writeTrustFile, type Role, type SignedDocument, type SigningKey, type TrustFile,
} from '@ferry/auth';
import { FerryError, isFerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';

const DEFAULT_TRUST_FILE = '/var/lib/ferry/trust.json';

/** `ferry grant issue|show|revoke`: signed grants and revocation lists, made with an admin key. */
export async function grantCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'issue') return await issue(rest, io);
  if (sub === 'show') return await show(rest, io);
  if (sub === 'revoke') return await revoke(rest, io);
  throw new FerryError('FERRY_ERR_USAGE', { message: `"ferry grant ${sub ?? ''}": expected "grant issue", "grant show" or "grant revoke"` });
}

/** `ferry trust add|remove|list`: the trust file of a receiver, registry or sender service. */
export async function trustCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'add') return await trustAdd(rest, io);
  if (sub === 'remove') return await trustRemove(rest, io);
  if (sub === 'list') return trustList(rest, io);
  throw new FerryError('FERRY_ERR_USAGE', { message: `"ferry trust ${sub ?? ''}": expected "trust add", "trust remove" or "trust list"` });
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
  if (values.id === undefined || values['public-key'] === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: '--id KEY_ID and --public-key KEY (of the key being granted) are required' });
  const scope = scopeOf(values);
  const grant = issueGrant({ keyId: values.id, publicKey: await keyText(values['public-key']), ...scope, ...(values.note === undefined ? {} : { note: values.note }) }, signer(values, io));
  await output(io, grant, values.out);
  return 0;
}

async function revoke(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { ...SIGNER, key: { type: 'string', multiple: true }, grant: { type: 'string', multiple: true }, out: { type: 'string', short: 'o' } });
  if (!values.key?.length && !values.grant?.length) throw new FerryError('FERRY_ERR_USAGE', { message: 'name what to revoke: --key KEY_ID|FINGERPRINT and/or --grant GRANT_ID (repeatable)' });
  await output(io, issueRevocations({ keys: values.key ?? [], grants: values.grant ?? [] }, signer(values, io)), values.out);
  return 0;
}

async function show(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { trust: { type: 'string' }, json: { type: 'boolean' } }, 1);
  const file = positionals[0];
  if (file === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry grant show FILE [--trust TRUST_FILE]' });
  const text = await readText(file);
  const doc = parseDocument(text, text.includes(REVOCATIONS_TYPE) ? REVOCATIONS_TYPE : GRANT_TYPE);
  const payload: unknown = JSON.parse(Buffer.from(doc.payload, 'base64').toString('utf8'));
  let verdict = 'not checked (give --trust TRUST_FILE)';
  if (values.trust !== undefined) {
    try {
      new TrustStore({ data: { ...readTrustFileSync(values.trust), ...(doc.type === GRANT_TYPE ? { grants: [doc] } : { revocations: [doc] }) } });
      verdict = `valid: signed by ${doc.keyId}, an admin key of ${values.trust}`;
    } catch (err) {
      verdict = `NOT valid here: ${isFerryError(err) ? err.message : String(err)}`;
    }
  }
  if (values.json === true) {
    line(io.stdout, JSON.stringify({ type: doc.type, signedBy: doc.keyId, payload, verdict }));
    return verdict.startsWith('NOT') ? 1 : 0;
  }
  line(io.stdout, `${'type'.padEnd(13)}${doc.type}`);
  line(io.stdout, `${'signed by'.padEnd(13)}${doc.keyId}`);
  for (const [key, value] of Object.entries(payload as Record<string, unknown>)) line(io.stdout, `${key.padEnd(13)}${Array.isArray(value) ? value.join(', ') : String(value)}`);
  line(io.stdout, `${'verdict'.padEnd(13)}${verdict}`);
  return verdict.startsWith('NOT') ? 1 : 0;
}

async function trustAdd(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { ...SCOPE, file: { type: 'string' }, id: { type: 'string' }, 'public-key': { type: 'string' } }, 1);
  const path = trustPath(values.file, io);
  const trust = await currentTrust(path);
  const document = positionals[0];
  if (document !== undefined) {
    const text = await readText(document);
    const isList = text.includes(REVOCATIONS_TYPE);
    const doc = parseDocument(text, isList ? REVOCATIONS_TYPE : GRANT_TYPE);
    if (isList) trust.revocations.push(doc);
    else trust.grants.push(doc);
    await writeTrustFile(path, trust);
    line(io.stdout, `${path}: added ${isList ? 'a revocation list' : 'a grant'} signed by ${doc.keyId}`);
    return 0;
  }
  if (values.id === undefined || values['public-key'] === undefined) {
    throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry trust add GRANT_OR_REVOCATIONS_FILE, or --id KEY_ID --public-key KEY --role ROLE [--service GLOB] [--host ID|K=V] …' });
  }
  const scope = scopeOf(values);
  const entry = {
    id: values.id, publicKey: await keyText(values['public-key']), role: scope.role, services: scope.services ?? ['*'], hosts: scope.hosts ?? ['*'],
    ...(scope.notBefore ? { notBefore: scope.notBefore.toISOString() } : {}), ...(scope.notAfter ? { notAfter: scope.notAfter.toISOString() } : {}),
    graceSeconds: scope.graceSeconds ?? 0,
  };
  trust.keys = [...trust.keys.filter((k) => k.id !== entry.id), entry];
  await writeTrustFile(path, trust);
  line(io.stdout, `${path}: ${entry.id} trusted as ${entry.role} for services ${entry.services.join(',')} on hosts ${entry.hosts.join(',')}`);
  return 0;
}

async function trustRemove(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { file: { type: 'string' } }, 1);
  const id = positionals[0];
  if (id === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry trust remove KEY_ID_OR_GRANT_ID [--file TRUST_FILE]' });
  const path = trustPath(values.file, io);
  const trust = await currentTrust(path);
  const keys = trust.keys.filter((k) => k.id !== id);
  const grants = trust.grants.filter((g) => {
    const payload = GrantPayloadSchema.safeParse(JSON.parse(Buffer.from(parseDocument(g, GRANT_TYPE).payload, 'base64').toString('utf8')));
    return !payload.success || (payload.data.id !== id && payload.data.keyId !== id);
  });
  const removed = trust.keys.length - keys.length + trust.grants.length - grants.length;
  if (removed === 0) throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `${path} holds no key or grant ${id}` });
  await writeTrustFile(path, { ...trust, keys, grants });
  line(io.stdout, `${path}: removed ${removed} entr${removed === 1 ? 'y' : 'ies'} for ${id} (to refuse a key everywhere at once, revoke it: "ferry grant revoke")`);
  return 0;
}

function trustList(args: string[], io: Io): number {
  const { values } = parse(args, { file: { type: 'string' }, json: { type: 'boolean' } });
  const path = trustPath(values.file, io);
  const trust = readTrustFileSync(path);
  const store = new TrustStore({ data: trust });
  const revoked = trust.revocations.map((r) => RevocationsPayloadSchema.parse(JSON.parse(Buffer.from(parseDocument(r, REVOCATIONS_TYPE).payload, 'base64').toString('utf8'))));
  if (values.json === true) {
    line(io.stdout, JSON.stringify({ file: path, keys: store.describe(), revoked: { keys: revoked.flatMap((r) => r.keys), grants: revoked.flatMap((r) => r.grants) } }));
    return 0;
  }
  for (const k of store.describe()) {
    line(io.stdout, `${k.keyId.padEnd(24)} ${k.role.padEnd(7)} ${k.fingerprint}  ${k.grant ? `grant ${k.grant}` : 'trust file'}  until ${k.notAfter ?? 'no expiry'}`);
  }
  for (const r of revoked) line(io.stdout, `revoked: keys ${r.keys.join(', ') || '-'}; grants ${r.grants.join(', ') || '-'} (${r.issuedAt})`);
  return 0;
}

function scopeOf(values: { role?: string | undefined; service?: string[] | undefined; host?: string[] | undefined; 'not-before'?: string | undefined; 'not-after'?: string | undefined; grace?: string | undefined }): {
  role: Role; services?: string[]; hosts?: string[]; notBefore?: Date; notAfter?: Date; graceSeconds?: number;
} {
  const role = values.role;
  if (role === undefined || !(ROLES as readonly string[]).includes(role)) throw new FerryError('FERRY_ERR_USAGE', { message: `--role: one of ${ROLES.join(', ')}` });
  return {
    role: role as Role,
    ...(values.service?.length ? { services: values.service } : {}),
    ...(values.host?.length ? { hosts: values.host } : {}),
    ...(values['not-before'] === undefined ? {} : { notBefore: instant('not-before', values['not-before']) }),
    ...(values['not-after'] === undefined ? {} : { notAfter: instant('not-after', values['not-after']) }),
    ...(values.grace === undefined ? {} : { graceSeconds: duration('grace', values.grace) }),
  };
}

/** An ISO 8601 instant, or a span from now such as `90d`. */
function instant(name: string, text: string): Date {
  if (/^\d+[smhd]$/.test(text)) return new Date(Date.now() + duration(name, text) * 1000);
  if (!/(Z|[+-]\d{2}:\d{2})$/.test(text) || Number.isNaN(Date.parse(text))) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `--${name}: an ISO 8601 date-time with a zone (2027-01-01T00:00:00Z) or a span from now (90d)` });
  }
  return new Date(text);
}

/** `30s`, `15m`, `12h`, `7d` or a number of seconds. */
export function duration(name: string, text: string): number {
  const match = /^(\d+)([smhd]?)$/.exec(text);
  if (!match) throw new FerryError('FERRY_ERR_USAGE', { message: `--${name}: a duration such as 30s, 15m, 12h or 7d` });
  return Number(match[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86_400 }[match[2] as '' | 's' | 'm' | 'h' | 'd'];
}

function signer(values: { 'key-id'?: string | undefined; 'key-file'?: string | undefined }, io: Io): SigningKey {
  const keyId = values['key-id'] ?? io.env.FERRY_KEY_ID;
  const keyFile = values['key-file'] ?? io.env.FERRY_KEY_FILE;
  if (keyId === undefined || (keyFile === undefined && io.env.FERRY_KEY === undefined)) {
    throw new FerryError('FERRY_ERR_USAGE', { message: 'the admin key signs: --key-id ID --key-file FILE (or FERRY_KEY_ID and FERRY_KEY_FILE)' });
  }
  const { privateKey } = loadCredentials({ keyId, keyFile, key: values['key-file'] === undefined ? io.env.FERRY_KEY : undefined });
  return { keyId, privateKey };
}

/** A public key given inline (base64, PEM) or as a file holding one. */
async function keyText(value: string): Promise<string> {
  if (value.startsWith('/') || value.startsWith('./') || value.endsWith('.pem') || value.endsWith('.pub')) return await readText(value);
  return value;
}

function trustPath(given: string | undefined, io: Io): string {
  return given ?? io.env.FERRY_TRUST_FILE ?? DEFAULT_TRUST_FILE;
}

async function currentTrust(path: string): Promise<TrustFile> {
  try {
    await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyTrust();
  }
  return readTrustFileSync(path);
}

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `${file}: cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
  }
}

async function output(io: Io, doc: SignedDocument, out: string | undefined): Promise<void> {
  const text = `${JSON.stringify(doc, null, 2)}\n`;
  if (out === undefined) {
    io.stdout.write(text);
    return;
  }
  await writeFile(out, text, { mode: 0o644, flag: 'wx' }).catch((err: unknown) => {
    throw new FerryError('FERRY_ERR_USAGE', { message: `${out}: ${(err as NodeJS.ErrnoException).code === 'EEXIST' ? 'exists already' : 'cannot be written'}`, cause: err });
  });
  line(io.stderr, `wrote ${out}`);
}
