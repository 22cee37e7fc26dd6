import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TrustStore, generateKeyPair, publicKeyText, type ScopeAtTime } from '@ferry/auth';
import type { EventSink, FerryEvent } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { isFerryError, parseManifest, type Manifest } from '@ferry/protocol';
import { DEFAULT_POLICY, PolicyGate } from '@ferry/receiver';

const DIGEST = `blake3:${'a'.repeat(64)}`;
const ID = `sha256:${'b'.repeat(64)}`;

function manifest(service: string, createdAt: string, rollback?: boolean): Manifest {
  const parsed = parseManifest({
    schema: 'ferry.manifest/v1', deploymentId: '43cf4db9-2895-401d-8da7-5b03df634482', createdAt,
    image: { ref: 'myapp:1', id: ID, diffIds: [ID] }, package: { format: 'docker-archive', compression: 'zstd', size: 1, digest: DIGEST },
    service: { name: service }, ...(rollback === undefined ? {} : { rollback }),
  });
  assert.ok(parsed.ok);
  return parsed.manifest;
}

/** The scopes a verified request of `keyId` would carry, from a trust document. */
function scopes(entry: Record<string, unknown>, validity: 'valid' | 'grace' = 'valid'): { keyId: string; scopes: ScopeAtTime[] } {
  const publicKey = publicKeyText(generateKeyPair().privateKey);
  const trust = new TrustStore({ data: { schema: 'ferry.trust/v1', keys: [{ id: 'ci', publicKey, graceSeconds: 0, ...entry }] } });
  return { keyId: 'ci', scopes: trust.scopesFor('ci').map((scope) => ({ scope, validity })) };
}

function gate(newest?: string): { gate: PolicyGate; events: FerryEvent[] } {
  const events: FerryEvent[] = [];
  const sink = { publish: (e: FerryEvent) => { events.push(e); }, flush: () => Promise.resolve(), close: () => Promise.resolve(), status: 'connected' } as unknown as EventSink;
  return {
    events,
    gate: new PolicyGate({ policy: DEFAULT_POLICY, events: sink, hostId: 'edge-1', logger: createLogger({ level: 'silent' }), newestSigned: () => newest }),
  };
}

function refusal(run: () => void): string {
  try {
    run();
  } catch (err) {
    assert.ok(isFerryError(err), String(err));
    return err.code;
  }
  assert.fail('admitted');
}

describe('admission of a manifest', () => {
  it('lets a key deploy only the services its grant names', () => {
    const { gate: g } = gate();
    const auth = scopes({ role: 'deploy', services: ['web-*'] });
    g.admit(manifest('web-1', '2026-01-01T00:00:00.000Z'), auth);
    assert.equal(refusal(() => g.admit(manifest('db', '2026-01-01T00:00:00.000Z'), auth)), 'FERRY_ERR_NOT_GRANTED');
    assert.equal(refusal(() => g.admit(manifest('web-1', '2026-01-01T00:00:00.000Z'), scopes({ role: 'read' }))), 'FERRY_ERR_NOT_GRANTED');
  });

  it('publishes grant.grace when only the grace period lets a deployment in', () => {
    const { gate: g, events } = gate();
    g.admit(manifest('web', '2026-01-01T00:00:00.000Z'), scopes({ role: 'deploy', notAfter: '2026-01-01T00:00:00Z', graceSeconds: 3600 }, 'grace'));
    assert.deepEqual(events.map((e) => e.type), ['ferry.grant.grace']);
    assert.equal((events[0]?.data as { keyId?: string }).keyId, 'ci');
  });

  it('refuses a release signed before the one that runs, unless it is a signed rollback', () => {
    const { gate: g } = gate('2026-06-01T00:00:00.000Z');
    const auth = scopes({ role: 'deploy' });
    assert.equal(refusal(() => g.admit(manifest('web', '2026-05-31T23:59:59.000Z'), auth)), 'FERRY_ERR_DOWNGRADE');
    g.admit(manifest('web', '2026-05-31T23:59:59.000Z', true), auth);
    g.admit(manifest('web', '2026-06-01T00:00:00.000Z'), auth);
    g.admit(manifest('web', '2026-06-02T00:00:00.000Z'), auth);
  });
});
