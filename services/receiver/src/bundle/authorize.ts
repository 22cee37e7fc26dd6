import { GRANT_TYPE, GrantPayloadSchema, coversHost, coversService, parseDocument, roleAllows, validity, type HostFacts, type Scope, type TrustStore } from '@ferry/auth';
import { releaseSignedBy, type VerifiedBundle } from '@ferry/bundle';
import { FerryError } from '@ferry/protocol';

/** Who may apply a bundle here, as the trust file says: what a signed request's headers prove, for a file. */
export interface BundleAuthority {
  keyId: string;
  /** The embedded grant (the licence), when the bundle carries one. */
  licence: { grantId: string; notAfter: string | null; graceSeconds: number; inGrace: boolean } | undefined;
  /** Services let in only by a scope inside its grace: each gets a `grant.grace` event. */
  graceServices: ReadonlySet<string>;
}

/**
 * Checks a verified bundle against the receiver's trust file, offline, as a signed request is
 * checked (security.md): the key that signed release.json must be one the trust file knows under
 * that id — a key entry, a grant stored there, or the grant the bundle carries, signed by an admin
 * key of the trust file — (else FERRY_ERR_BUNDLE_SIGNATURE), not revoked (FERRY_ERR_KEY_REVOKED),
 * and each service must be covered on this host by a scope in force that may deploy it
 * (FERRY_ERR_NOT_GRANTED, FERRY_ERR_GRANT_EXPIRED, FERRY_ERR_GRANT_NOT_YET_VALID). A bundle that
 * carries a grant is under that licence whatever else the trust file holds: past its notAfter and
 * grace it is refused with FERRY_ERR_LICENCE_EXPIRED, inside its grace it applies with a warning.
 */
export function authorizeBundle(trust: TrustStore, bundle: VerifiedBundle, host: HostFacts, now: number): BundleAuthority {
  const { keyId, scopes, licence } = trustedSigner(trust, bundle, now);
  const graceServices = new Set<string>();
  for (const service of bundle.document.release.services) {
    if (grantingScope(scopes, host, service.name, now).inGrace) graceServices.add(service.name);
  }
  if (licence?.inGrace) for (const service of bundle.document.release.services) graceServices.add(service.name);
  return { keyId, licence, graceServices };
}

/**
 * The first half of {@link authorizeBundle}, for any host (`ferry bundle verify --trust`): the
 * signer is a key the trust file knows, not revoked, and the bundle's licence is in force. Answers
 * the signer's live scopes.
 */
export function trustedSigner(trust: TrustStore, bundle: VerifiedBundle, now: number): { keyId: string; scopes: Scope[]; licence: BundleAuthority['licence'] } {
  const { document, signature, releaseBytes } = bundle;
  const keyId = signature.keyId;
  const presented = document.grant === undefined ? undefined : JSON.stringify(parseDocument(document.grant, GRANT_TYPE));
  const known = trust.scopesFor(keyId, presented);
  if (known.length === 0) {
    throw new FerryError('FERRY_ERR_BUNDLE_SIGNATURE', { message: `The bundle is signed by key ${keyId}, which this host's trust file does not know (nor a grant for it)`, details: { keyId } });
  }
  const signedBy = known.filter((scope) => releaseSignedBy(scope.publicKey, releaseBytes, signature));
  if (signedBy.length === 0) {
    throw new FerryError('FERRY_ERR_BUNDLE_SIGNATURE', { message: `The bundle's signature is not that of the key this host trusts as ${keyId}`, details: { keyId } });
  }
  const live = signedBy.filter((scope) => !trust.isRevoked(scope));
  if (live.length === 0) throw new FerryError('FERRY_ERR_KEY_REVOKED');
  return { keyId, scopes: live, licence: licenceOf(document.grant, signedBy, trust, now) };
}

function licenceOf(grant: unknown, scopes: readonly Scope[], trust: TrustStore, now: number): BundleAuthority['licence'] {
  if (grant === undefined) return undefined;
  const payload = GrantPayloadSchema.parse(JSON.parse(Buffer.from(parseDocument(grant, GRANT_TYPE).payload, 'base64').toString('utf8')));
  const scope = scopes.find((s) => s.grantId === payload.id);
  // The grant checked out (scopesFor) but is for another key than the one that signed the bundle.
  if (!scope) throw new FerryError('FERRY_ERR_BAD_GRANT', { message: "The bundle's grant is not for the key that signed it" });
  if (trust.isRevoked(scope)) throw new FerryError('FERRY_ERR_KEY_REVOKED', { message: "The bundle's grant is revoked here" });
  const state = validity(scope, now);
  const notAfter = scope.notAfter === undefined ? null : new Date(scope.notAfter * 1000).toISOString();
  if (state === 'expired') {
    throw new FerryError('FERRY_ERR_LICENCE_EXPIRED', {
      message: `The bundle's grant ${payload.id} ended at ${notAfter ?? '?'} and its grace of ${scope.graceSeconds} s is over: ask the vendor for a new grant`,
      details: { grant: payload.id, notAfter, graceSeconds: scope.graceSeconds },
    });
  }
  if (state === 'not-yet') {
    throw new FerryError('FERRY_ERR_GRANT_NOT_YET_VALID', { details: { grant: payload.id, notBefore: payload.notBefore ?? null } });
  }
  return { grantId: payload.id, notAfter, graceSeconds: scope.graceSeconds, inGrace: state === 'grace' };
}

/** The scope that lets the key deploy `service` here now: a fully valid one before one in its grace. */
function grantingScope(scopes: readonly Scope[], host: HostFacts, service: string, now: number): { scope: Scope; inGrace: boolean } {
  const here = scopes.filter((scope) => coversHost(scope, host));
  if (here.length === 0) throw new FerryError('FERRY_ERR_NOT_GRANTED', { message: "The key's grants do not cover this host", details: { service } });
  const states = here.map((scope) => ({ scope, state: validity(scope, now) }));
  const inForce = states.filter((s) => s.state === 'valid' || s.state === 'grace');
  if (inForce.length === 0) {
    const expired = states.find((s) => s.state === 'expired')?.scope;
    if (expired) {
      throw new FerryError('FERRY_ERR_GRANT_EXPIRED', {
        details: { notAfter: expired.notAfter === undefined ? null : new Date(expired.notAfter * 1000).toISOString(), graceSeconds: expired.graceSeconds, service },
      });
    }
    throw new FerryError('FERRY_ERR_GRANT_NOT_YET_VALID', { details: { service } });
  }
  const allowed = inForce.filter((s) => roleAllows(s.scope.role, 'deploy') && coversService(s.scope, service));
  const chosen = allowed.find((s) => s.state === 'valid') ?? allowed[0];
  if (!chosen) throw new FerryError('FERRY_ERR_NOT_GRANTED', { message: `The key may not deploy ${service} here`, details: { service } });
  return { scope: chosen.scope, inGrace: chosen.state === 'grace' };
}
