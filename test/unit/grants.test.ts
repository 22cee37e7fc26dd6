/**
 * The trust model on an injected clock: grants signed by an admin key of the trust file and
 * presented with the request, their services, hosts, roles and time window, revocation lists, and
 * a trust file changed on disk while the store is in use.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  MemoryNonceStore, RequestVerifier, TrustStore, authorize, documentHeader, fingerprint, issueRevocations, signRequest, writeTrustFile,
  type Action, type HostFacts, type SignedDocument, type TrustFile, type Verified,
} from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { FerryError, type ErrorCode } from '@ferry/protocol';
import { grantFor, testKey, trustDocument, type TestKey } from '../helpers/keys.ts';

/** 2026-01-01T00:00:00Z: every clock below is counted from it. */
const T = 1_767_225_600;
const at = (seconds: number): Date => new Date(seconds * 1000);

const admin = testKey('root');
const ci = testKey('ci');
const PROD: HostFacts = { id: 'edge-1', labels: { env: 'prod', role: 'web' } };
const DEV: HostFacts = { id: 'dev-1', labels: { env: 'dev' } };

/** The trust file of every receiver here: the admin key only, unless a test adds more. */
function trustWith(extra: Partial<TrustFile> = {}): TrustFile {
  return { ...trustDocument([{ key: admin, role: 'admin' }]), ...extra };
}

interface Setup {
  trust: TrustStore;
  subject?: HostFacts;
  /** Unix seconds; the verifier's and the trust store's clock. */
  now: () => number;
}

function verifierFor(setup: Setup): RequestVerifier {
  const subject = setup.subject ?? PROD;
  return new RequestVerifier({ trust: setup.trust, nonces: new MemoryNonceStore(), audience: subject.id, subject, now: setup.now, startedAt: 0 });
}

/** A request signed by `key` at `now`, presenting `grant` when given. */
function request(key: TestKey, audience: string, now: number, grant?: SignedDocument): { method: string; path: string; headers: Record<string, string> } {
  const path = '/v1/packages';
  const headers = signRequest({
    method: 'POST', path, contentDigest: digestOf('{}'), keyId: key.keyId, privateKey: key.privateKey, audience, now,
    ...(grant ? { grant: documentHeader(grant) } : {}),
  });
  return { method: 'POST', path, headers };
}

async function refusedWith(promise: Promise<unknown>, code: ErrorCode, status = 401): Promise<FerryError> {
  let caught: unknown;
  await promise.then(() => assert.fail(`expected ${code}, the request was accepted`), (err: unknown) => { caught = err; });
  assert.ok(caught instanceof FerryError, `expected a FerryError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  assert.equal(caught.status, status);
  return caught;
}

function notGranted(verified: Pick<Verified, 'scopes'>, action: Action, target: { service?: string; host?: HostFacts } = {}): void {
  assert.throws(() => authorize(verified, action, target), (err: unknown) => {
    assert.ok(err instanceof FerryError);
    assert.equal(err.code, 'FERRY_ERR_NOT_GRANTED');
    assert.equal(err.status, 403);
    return true;
  });
}

describe('grants presented in X-Ferry-Grant', () => {
  const grant = grantFor(ci, admin, { role: 'deploy', services: ['web-*'], hosts: ['env=prod'], now: at(T) });
  const setup: Setup = { trust: new TrustStore({ data: trustWith(), now: () => T }), now: () => T };

  it('a grant issued by an admin key of the trust file, presented with the request, is accepted', async () => {
    const verified = await verifierFor(setup).verify(request(ci, PROD.id, T, grant));
    assert.equal(verified.keyId, 'ci');
    assert.equal(verified.scopes.length, 1);
    const [only] = verified.scopes;
    assert.equal(only?.validity, 'valid');
    assert.equal(only?.scope.issuer, 'root');
    assert.equal(only?.scope.grantId, (JSON.parse(Buffer.from(grant.payload, 'base64').toString('utf8')) as { id: string }).id);
  });

  it('without the grant, the key is unknown to the receiver', async () => {
    await refusedWith(verifierFor(setup).verify(request(ci, PROD.id, T)), 'FERRY_ERR_UNKNOWN_KEY');
  });

  it('a grant signed by a key that is not an admin of the trust file → FERRY_ERR_BAD_GRANT', async () => {
    const deployer = testKey('deployer');
    const trust = new TrustStore({ data: { ...trustDocument([{ key: admin, role: 'admin' }, { key: deployer, role: 'deploy' }]) }, now: () => T });
    const byDeployer = grantFor(ci, deployer, { role: 'deploy', now: at(T) });
    await refusedWith(verifierFor({ trust, now: () => T }).verify(request(ci, PROD.id, T, byDeployer)), 'FERRY_ERR_BAD_GRANT');
  });

  it('a grant signed by a key the trust file does not hold → FERRY_ERR_BAD_GRANT', async () => {
    const stranger = testKey('stranger');
    await refusedWith(verifierFor(setup).verify(request(ci, PROD.id, T, grantFor(ci, stranger, { role: 'admin', now: at(T) }))), 'FERRY_ERR_BAD_GRANT');
    // The stranger names itself "root": a key id alone makes nobody an admin.
    const impostor = testKey('root');
    await refusedWith(verifierFor(setup).verify(request(ci, PROD.id, T, grantFor(ci, impostor, { role: 'admin', now: at(T) }))), 'FERRY_ERR_BAD_GRANT');
  });

  it('a grant whose payload was widened after signing → FERRY_ERR_BAD_GRANT', async () => {
    const payload = JSON.parse(Buffer.from(grant.payload, 'base64').toString('utf8')) as Record<string, unknown>;
    const widened = { ...grant, payload: Buffer.from(JSON.stringify({ ...payload, services: ['*'], hosts: ['*'] })).toString('base64') };
    await refusedWith(verifierFor(setup).verify(request(ci, PROD.id, T, widened)), 'FERRY_ERR_BAD_GRANT');
  });

  it('a grant for another key, presented by this one → FERRY_ERR_BAD_GRANT', async () => {
    const other = testKey('other');
    await refusedWith(verifierFor(setup).verify(request(other, PROD.id, T, grant)), 'FERRY_ERR_BAD_GRANT');
  });
});

describe('services and hosts of a grant for web-* on env=prod', () => {
  const grant = grantFor(ci, admin, { role: 'deploy', services: ['web-*'], hosts: ['env=prod'], now: at(T) });
  const trust = new TrustStore({ data: trustWith(), now: () => T });

  it('deploys web-1 on a host labelled env=prod; db → FERRY_ERR_NOT_GRANTED', async () => {
    const verified = await verifierFor({ trust, now: () => T }).verify(request(ci, PROD.id, T, grant));
    const allowed = authorize(verified, 'deploy', { service: 'web-1', host: PROD });
    assert.equal(allowed.grace, false);
    assert.equal(allowed.scope.keyId, 'ci');
    notGranted(verified, 'deploy', { service: 'db', host: PROD });
    notGranted(verified, 'deploy', { service: 'web', host: PROD });
    notGranted(verified, 'deploy', { service: 'web-1', host: DEV });
  });

  it('a receiver whose subject is dev-1 with env=dev does not let the grant in → FERRY_ERR_NOT_GRANTED', async () => {
    await refusedWith(verifierFor({ trust, subject: DEV, now: () => T }).verify(request(ci, DEV.id, T, grant)), 'FERRY_ERR_NOT_GRANTED', 403);
  });
});

describe('the time window of a grant', () => {
  const NOT_AFTER = T + 24 * 3600;
  const GRACE = 3600;
  const grant = grantFor(ci, admin, { role: 'deploy', notAfter: at(NOT_AFTER), graceSeconds: GRACE, now: at(T) });

  const verifyAt = (now: number, doc = grant): Promise<Verified> =>
    verifierFor({ trust: new TrustStore({ data: trustWith(), now: () => now }), now: () => now }).verify(request(ci, PROD.id, now, doc));

  it('valid up to notAfter', async () => {
    const verified = await verifyAt(NOT_AFTER);
    assert.equal(authorize(verified, 'deploy', { service: 'web-1' }).grace, false);
  });

  it('inside the grace (notAfter + grace/2): accepted, and authorize says grace', async () => {
    const verified = await verifyAt(NOT_AFTER + GRACE / 2);
    assert.deepEqual(verified.scopes.map((s) => s.validity), ['grace']);
    const allowed = authorize(verified, 'deploy', { service: 'web-1', host: PROD });
    assert.equal(allowed.grace, true);
  });

  it('past the grace (notAfter + grace + 1) → FERRY_ERR_GRANT_EXPIRED', async () => {
    const err = await refusedWith(verifyAt(NOT_AFTER + GRACE + 1), 'FERRY_ERR_GRANT_EXPIRED');
    assert.equal(err.details?.notAfter, at(NOT_AFTER).toISOString());
    assert.equal(err.details?.graceSeconds, GRACE);
  });

  it('before notBefore → FERRY_ERR_GRANT_NOT_YET_VALID', async () => {
    const later = grantFor(ci, admin, { role: 'deploy', notBefore: at(T + 3600), now: at(T) });
    await refusedWith(verifyAt(T, later), 'FERRY_ERR_GRANT_NOT_YET_VALID');
    await verifyAt(T + 3600, later);
  });
});

describe('revocation lists', () => {
  const grant = grantFor(ci, admin, { role: 'deploy', id: 'grant-ci-1', now: at(T) });
  const revoked = (entries: { keys?: string[]; grants?: string[] }): RequestVerifier => {
    const trust = new TrustStore({ data: trustWith({ revocations: [issueRevocations(entries, admin, at(T))] }), now: () => T });
    return verifierFor({ trust, now: () => T });
  };

  it('not revoked: accepted', async () => {
    await revoked({ keys: ['someone-else'], grants: ['grant-other'] }).verify(request(ci, PROD.id, T, grant));
  });

  const lists: [string, { keys?: string[]; grants?: string[] }][] = [
    ['its key id', { keys: ['ci'] }],
    ['its fingerprint', { keys: [fingerprint(ci.publicKey)] }],
    ['its grant id', { grants: ['grant-ci-1'] }],
  ];
  for (const [what, entries] of lists) {
    it(`a list naming ${what} → FERRY_ERR_KEY_REVOKED`, async () => {
      await refusedWith(revoked(entries).verify(request(ci, PROD.id, T, grant)), 'FERRY_ERR_KEY_REVOKED');
    });
  }

  it('revokes a key written in the trust file itself', async () => {
    const direct = testKey('direct');
    const trust = new TrustStore({
      data: trustDocument([{ key: admin, role: 'admin' }, direct], { revocations: [issueRevocations({ keys: ['direct'] }, admin, at(T))] }), now: () => T,
    });
    await refusedWith(verifierFor({ trust, now: () => T }).verify(request(direct, PROD.id, T)), 'FERRY_ERR_KEY_REVOKED');
  });

  it('a revocation list not signed by an admin key makes the trust file invalid', () => {
    const deployer = testKey('deployer');
    assert.throws(
      () => new TrustStore({ data: trustDocument([{ key: admin, role: 'admin' }, deployer], { revocations: [issueRevocations({ keys: ['root'] }, deployer, at(T))] }), now: () => T }),
      (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_CONFIG',
    );
  });
});

describe('roles', () => {
  it('a read key reads and cannot deploy', async () => {
    const reader = testKey('reader');
    const trust = new TrustStore({ data: trustWith(), now: () => T });
    const verified = await verifierFor({ trust, now: () => T }).verify(request(reader, PROD.id, T, grantFor(reader, admin, { role: 'read', now: at(T) })));
    assert.equal(authorize(verified, 'read').scope.role, 'read');
    notGranted(verified, 'deploy', { service: 'web-1', host: PROD });
    notGranted(verified, 'admin');
  });

  it('a host key (a receiver\'s own) can neither deploy nor read', async () => {
    const host = testKey('host.edge-2');
    const trust = new TrustStore({ data: trustDocument([{ key: admin, role: 'admin' }, { key: host, role: 'host' }]), now: () => T });
    const verified = await verifierFor({ trust, now: () => T }).verify(request(host, PROD.id, T));
    notGranted(verified, 'deploy', { service: 'web-1', host: PROD });
    notGranted(verified, 'deploy');
    notGranted(verified, 'read');
    assert.equal(authorize(verified, 'host').scope.role, 'host');
  });

  it('a deploy key deploys and reads, but does not administer', async () => {
    const trust = new TrustStore({ data: trustWith(), now: () => T });
    const verified = await verifierFor({ trust, now: () => T }).verify(request(ci, PROD.id, T, grantFor(ci, admin, { role: 'deploy', now: at(T) })));
    authorize(verified, 'deploy', { service: 'db', host: PROD });
    authorize(verified, 'read');
    notGranted(verified, 'admin');
    notGranted(verified, 'host');
  });
});

describe('a trust file changed on disk', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-trust-')); });
  after(async () => { if (dir) await rm(dir, { recursive: true, force: true }); });

  it('a revocation written to the file takes effect without a restart', async () => {
    const file = join(dir, 'trust.json');
    const grant = grantFor(ci, admin, { role: 'deploy', now: at(T) });
    await writeTrustFile(file, trustWith({ grants: [grant] }));
    // The verifier's clock is injected; the store's re-reading runs on the real one.
    const verifier = verifierFor({ trust: new TrustStore({ file, now: () => T }), now: () => T });
    await verifier.verify(request(ci, PROD.id, T));

    await writeTrustFile(file, trustWith({ grants: [grant], revocations: [issueRevocations({ keys: ['ci'] }, admin, at(T))] }));
    // Re-read at most once a second: poll until the revocation is seen (a store that never
    // re-reads fails by the runner's timeout).
    for (;;) {
      try {
        await verifier.verify(request(ci, PROD.id, T));
      } catch (err) {
        assert.ok(err instanceof FerryError);
        assert.equal(err.code, 'FERRY_ERR_KEY_REVOKED', err.message);
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  });
});
