import { randomUUID, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { FerryError, matchesGlob, matchesSelector, parseSelector } from '@ferry/protocol';
import { KEY_ID_PATTERN, fingerprint, parsePublicKey, publicKeyText, type SigningKey } from './keys.ts';
import { signDocument, type SignedDocument } from './signed.ts';

export const GRANT_TYPE = 'ferry.grant/v1';
export const REVOCATIONS_TYPE = 'ferry.revocations/v1';

/**
 * What a key may do. `deploy` also reads; `admin` may do everything and signs grants and
 * revocation lists; `host` is a receiver's own key, which writes only its own registry record.
 */
export const ROLES = ['deploy', 'read', 'admin', 'host'] as const;
export type Role = (typeof ROLES)[number];

/** What a request asks to do; each route names one. */
export type Action = 'deploy' | 'read' | 'admin' | 'host';

const ALLOWED: Readonly<Record<Role, readonly Action[]>> = {
  admin: ['admin', 'deploy', 'read'],
  deploy: ['deploy', 'read'],
  read: ['read'],
  host: ['host'],
};

// A zone is required: "2026-12-01T00:00" would mean a different instant on every host.
const instant = z.string().regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$/, 'an ISO 8601 date-time with a zone');
const pattern = z.string().min(1).max(256).regex(/^[\x21-\x7e]+$/, 'printable, without spaces');

/** The fields a grant and a trust file's key entry share: the scope of one key. */
export const ScopeFields = {
  role: z.enum(ROLES),
  services: z.array(pattern).min(1).max(64).default(['*']),
  hosts: z.array(pattern).min(1).max(64).default(['*']),
  notBefore: instant.optional(),
  notAfter: instant.optional(),
  graceSeconds: z.number().int().min(0).max(366 * 24 * 3600).default(0),
};

export const GrantPayloadSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/),
  keyId: z.string().regex(KEY_ID_PATTERN),
  publicKey: z.string().max(4096),
  ...ScopeFields,
  issuedAt: instant,
  note: z.string().max(256).optional(),
});
export type GrantPayload = z.output<typeof GrantPayloadSchema>;

export const RevocationsPayloadSchema = z.strictObject({
  issuedAt: instant,
  /** Key ids or key fingerprints (`SHA256:…`) refused from now on. */
  keys: z.array(z.string().max(128)).max(10_000).default([]),
  /** Grant ids refused from now on. */
  grants: z.array(z.string().max(64)).max(10_000).default([]),
});
export type RevocationsPayload = z.output<typeof RevocationsPayloadSchema>;

/** One key's scope, resolved: from a trust file entry or from a checked grant. */
export interface Scope {
  keyId: string;
  publicKey: KeyObject;
  fingerprint: string;
  role: Role;
  services: readonly string[];
  hosts: readonly string[];
  /** Unix seconds. */
  notBefore: number | undefined;
  notAfter: number | undefined;
  graceSeconds: number;
  /** The grant's id; undefined for a key written in the trust file itself. */
  grantId: string | undefined;
  /** The admin key that signed the grant; undefined for a trust file entry. */
  issuer: string | undefined;
}

/** The host a scope is checked against: a receiver's own id and labels, or a registry record. */
export interface HostFacts {
  id: string;
  labels: Readonly<Record<string, string>>;
}

/** Where a scope stands in time at one moment. */
export type Validity = 'valid' | 'grace' | 'not-yet' | 'expired';

export function validity(scope: Pick<Scope, 'notBefore' | 'notAfter' | 'graceSeconds'>, now: number): Validity {
  if (scope.notBefore !== undefined && now < scope.notBefore) return 'not-yet';
  if (scope.notAfter === undefined || now <= scope.notAfter) return 'valid';
  return now <= scope.notAfter + scope.graceSeconds ? 'grace' : 'expired';
}

export function roleAllows(role: Role, action: Action): boolean {
  return ALLOWED[role].includes(action);
}

export function coversService(scope: Pick<Scope, 'services'>, service: string): boolean {
  return scope.services.some((p) => matchesGlob(p, service));
}

/**
 * A hosts entry is a host id (globs allowed, `*` for every host) or a label selector
 * (`env=prod,role=web`: anything with `=` in it).
 */
export function coversHost(scope: Pick<Scope, 'hosts'>, host: HostFacts): boolean {
  return scope.hosts.some((entry) => (entry.includes('=') ? matchesSelector(parseSelector(entry), host.labels) : matchesGlob(entry, host.id)));
}

export function seconds(iso: string | undefined): number | undefined {
  return iso === undefined ? undefined : Math.floor(Date.parse(iso) / 1000);
}

/** A trust entry's or grant's fields as a {@link Scope}; the public key is parsed here. */
export function toScope(fields: {
  keyId: string; publicKey: string; role: Role; services: readonly string[]; hosts: readonly string[];
  notBefore?: string | undefined; notAfter?: string | undefined; graceSeconds: number;
}, source: { grantId?: string; issuer?: string }, where: string): Scope {
  for (const entry of fields.hosts) if (entry.includes('=')) parseSelector(entry);
  const publicKey = parsePublicKey(fields.publicKey, where);
  return {
    keyId: fields.keyId, publicKey, fingerprint: fingerprint(publicKey), role: fields.role, services: fields.services, hosts: fields.hosts,
    notBefore: seconds(fields.notBefore), notAfter: seconds(fields.notAfter), graceSeconds: fields.graceSeconds,
    grantId: source.grantId, issuer: source.issuer,
  };
}

export interface GrantRequest {
  keyId: string;
  /** The grantee's public key: text or a key object. */
  publicKey: string | KeyObject;
  role: Role;
  services?: string[];
  hosts?: string[];
  notBefore?: Date;
  notAfter?: Date;
  graceSeconds?: number;
  note?: string;
  id?: string;
  now?: Date;
}

/** A grant signed by an admin key (`ferry grant issue`). */
export function issueGrant(request: GrantRequest, admin: SigningKey): SignedDocument {
  const publicKey = typeof request.publicKey === 'string' ? publicKeyText(parsePublicKey(request.publicKey, 'the grantee key')) : publicKeyText(request.publicKey);
  const payload = GrantPayloadSchema.parse({
    id: request.id ?? randomUUID(),
    keyId: request.keyId,
    publicKey,
    role: request.role,
    services: request.services ?? ['*'],
    hosts: request.hosts ?? ['*'],
    ...(request.notBefore ? { notBefore: request.notBefore.toISOString() } : {}),
    ...(request.notAfter ? { notAfter: request.notAfter.toISOString() } : {}),
    graceSeconds: request.graceSeconds ?? 0,
    issuedAt: (request.now ?? new Date()).toISOString(),
    ...(request.note === undefined ? {} : { note: request.note }),
  });
  if (payload.notBefore && payload.notAfter && Date.parse(payload.notAfter) < Date.parse(payload.notBefore)) {
    throw new FerryError('FERRY_ERR_USAGE', { message: 'notAfter is before notBefore' });
  }
  return signDocument(GRANT_TYPE, payload, admin);
}

/** A revocation list signed by an admin key (`ferry grant revoke`). */
export function issueRevocations(entries: { keys?: string[]; grants?: string[] }, admin: SigningKey, now = new Date()): SignedDocument {
  const payload = RevocationsPayloadSchema.parse({ issuedAt: now.toISOString(), keys: entries.keys ?? [], grants: entries.grants ?? [] });
  return signDocument(REVOCATIONS_TYPE, payload, admin);
}
