import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TrustStore, generateKeyPair, publicKeyText, type ScopeAtTime } from '@ferry/auth';
import type { EventSink, FerryEvent } from '@ferry/events';
import { digestOf } from '@ferry/integrity';
import { createLogger } from '@ferry/log';
import { FerryError, isFerryError } from '@ferry/protocol';
import { Admission, DEFAULT_POLICY, PolicyGate, type Policy, type SignedRequest, type UploadKind } from '@ferry/receiver';

const DIGEST = `blake3:${'a'.repeat(64)}`;
const ID = `sha256:${'b'.repeat(64)}`;

interface Fields {
  service?: string;
  createdAt?: string;
  rollback?: boolean;
  size?: number;
  privileged?: boolean;
  /** A stream's opening manifest: no package size or digest. */
  opening?: boolean;
}

/** Manifest bytes as a sender signs them. */
function manifest(fields: Fields = {}): Buffer {
  const pkg = fields.opening
    ? { format: 'docker-archive', compression: 'zstd' }
    : { format: 'docker-archive', compression: 'zstd', size: fields.size ?? 1, digest: DIGEST };
  return Buffer.from(JSON.stringify({
    schema: 'ferry.manifest/v1', deploymentId: '43cf4db9-2895-401d-8da7-5b03df634482', createdAt: fields.createdAt ?? '2026-01-01T00:00:00.000Z',
    image: { ref: 'myapp:1', id: ID, diffIds: [ID] }, package: pkg,
    service: { name: fields.service ?? 'web', ...(fields.privileged ? { privileged: true } : {}) },
    ...(fields.rollback === undefined ? {} : { rollback: fields.rollback }),
  }));
}

/** The verified request that signed `bytes`, with the scopes of a trust entry. */
function signer(bytes: Buffer, entry: Record<string, unknown> = { role: 'deploy' }, validity: 'valid' | 'grace' = 'valid'): SignedRequest {
  const publicKey = publicKeyText(generateKeyPair().privateKey);
  const trust = new TrustStore({ data: { schema: 'ferry.trust/v1', keys: [{ id: 'ci', publicKey, graceSeconds: 0, ...entry }] } });
  const scopes: ScopeAtTime[] = trust.scopesFor('ci').map((scope) => ({ scope, validity }));
  return { keyId: 'ci', contentDigest: digestOf(bytes), scopes };
}

interface Setup {
  newest?: string;
  /** Free space on the data disk stands in for a guard that refuses packages larger than this. */
  roomFor?: number;
  policy?: Policy;
}

function admission(setup: Setup = {}): { admission: Admission; events: FerryEvent[]; diskAsked: number[] } {
  const events: FerryEvent[] = [];
  const diskAsked: number[] = [];
  const sink = { publish: (e: FerryEvent) => { events.push(e); }, flush: () => Promise.resolve(), close: () => Promise.resolve(), status: 'connected' } as unknown as EventSink;
  const logger = createLogger({ level: 'silent' });
  const policy = new PolicyGate({ policy: setup.policy ?? DEFAULT_POLICY, events: sink, hostId: 'edge-1', logger, newestSigned: () => setup.newest });
  return {
    events,
    diskAsked,
    admission: new Admission({
      policy, events: sink, hostId: 'edge-1', logger, limits: { package: 100, upload: 1000 },
      assertDiskSpace: (bytes) => {
        diskAsked.push(bytes);
        return bytes > (setup.roomFor ?? Infinity) ? Promise.reject(new FerryError('FERRY_ERR_DISK_FULL')) : Promise.resolve();
      },
    }),
  };
}

async function refusal(admitting: Promise<unknown>): Promise<string> {
  try {
    await admitting;
  } catch (err) {
    assert.ok(isFerryError(err), String(err));
    return err.code;
  }
  assert.fail('admitted');
}

const types = (events: FerryEvent[]): string[] => events.map((e) => e.type);

describe('admission of a manifest', () => {
  it('lets a key deploy only the services its grant names', async () => {
    const { admission: a, events } = admission();
    const web = manifest({ service: 'web-1' });
    const db = manifest({ service: 'db' });
    await a.admit('package', web, signer(web, { role: 'deploy', services: ['web-*'] }));
    assert.equal(await refusal(a.admit('package', db, signer(db, { role: 'deploy', services: ['web-*'] }))), 'FERRY_ERR_NOT_GRANTED');
    assert.equal(await refusal(a.admit('upload', web, signer(web, { role: 'read' }))), 'FERRY_ERR_NOT_GRANTED');
    // A key may not end deployments of a service it is not granted, not even in the event stream.
    assert.deepEqual(types(events), []);
  });

  it('publishes grant.grace when only the grace period lets a deployment in', async () => {
    const { admission: a, events } = admission();
    const bytes = manifest();
    await a.admit('stream', manifest({ opening: true }), signer(manifest({ opening: true }), { role: 'deploy', notAfter: '2026-01-01T00:00:00Z', graceSeconds: 3600 }, 'grace'));
    assert.deepEqual(types(events), ['ferry.grant.grace']);
    assert.equal((events[0]?.data as { keyId?: string }).keyId, 'ci');
    await a.admit('package', bytes, signer(bytes));
    assert.equal(events.length, 1);
  });

  it('refuses a release signed before the one that runs, unless it is a signed rollback', async () => {
    const { admission: a, events } = admission({ newest: '2026-06-01T00:00:00.000Z' });
    const older = manifest({ createdAt: '2026-05-31T23:59:59.000Z' });
    assert.equal(await refusal(a.admit('package', older, signer(older))), 'FERRY_ERR_DOWNGRADE');
    assert.deepEqual(types(events), ['ferry.deployment.failed']);
    for (const bytes of [manifest({ createdAt: '2026-05-31T23:59:59.000Z', rollback: true }), manifest({ createdAt: '2026-06-01T00:00:00.000Z' }), manifest({ createdAt: '2026-06-02T00:00:00.000Z' })]) {
      await a.admit('package', bytes, signer(bytes));
    }
  });

  it('checks in one order for every upload: signature, grant, limit, disk, policy', async () => {
    for (const kind of ['package', 'upload', 'stream'] as UploadKind[]) {
      const opening = kind === 'stream';
      const over = kind === 'package' ? 101 : 1001;
      const { admission: a, events } = admission({ roomFor: 10 });
      const all = manifest({ opening, size: over, privileged: true });
      // Every check would refuse this one: the first in the order answers.
      assert.equal(await refusal(a.admit(kind, all, { ...signer(all), contentDigest: digestOf('other') })), 'FERRY_ERR_MANIFEST_DIGEST_MISMATCH', kind);
      assert.equal(await refusal(a.admit(kind, Buffer.from('{'), signer(Buffer.from('{')))), 'FERRY_ERR_BAD_MANIFEST', kind);
      assert.equal(await refusal(a.admit(kind, all, signer(all, { role: 'deploy', services: ['db'] }))), 'FERRY_ERR_NOT_GRANTED', kind);
      assert.deepEqual(types(events), [], `${kind}: nothing published before the grant passed`);
      if (!opening) {
        assert.equal(await refusal(a.admit(kind, all, signer(all))), 'FERRY_ERR_PAYLOAD_TOO_LARGE', kind);
        assert.deepEqual(types(events.splice(0)), ['ferry.deployment.failed'], kind);
        const full = manifest({ size: 11, privileged: true });
        assert.equal(await refusal(a.admit(kind, full, signer(full))), 'FERRY_ERR_DISK_FULL', kind);
        // The sender waits a full disk out and comes again under the same deployment id.
        assert.deepEqual(types(events), [], `${kind}: no rejection event for a full disk`);
      }
      const denied = manifest({ opening, size: 10, privileged: true });
      const error = await a.admit(kind, denied, signer(denied)).then(() => undefined, (err: unknown) => err as FerryError);
      assert.equal(error?.code, 'FERRY_ERR_POLICY_DENIED', kind);
      assert.equal(error.details?.deploymentId, '43cf4db9-2895-401d-8da7-5b03df634482');
      assert.deepEqual(types(events.splice(0)), ['ferry.policy.denied', 'ferry.deployment.failed'], kind);
    }
  });

  it('asks the disk for room for the package; a stream\'s size is not known when it opens', async () => {
    const { admission: a, diskAsked } = admission();
    const bytes = manifest({ size: 42 });
    const opening = manifest({ opening: true });
    const admitted = await a.admit('upload', bytes, signer(bytes));
    assert.equal(admitted.digest, digestOf(bytes));
    assert.equal(admitted.manifest.package.size, 42);
    await a.admit('stream', opening, signer(opening));
    assert.deepEqual(diskAsked, [42, 0]);
    // A stream's opening manifest names no size or digest; a full manifest does.
    assert.equal(await refusal(a.admit('stream', bytes, signer(bytes))), 'FERRY_ERR_BAD_MANIFEST');
    assert.equal(await refusal(a.admit('package', opening, signer(opening))), 'FERRY_ERR_BAD_MANIFEST');
  });
});
