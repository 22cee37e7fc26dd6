import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TrustStore, hostKeyId } from '@ferry/auth';
import { createEvent, createReleaseEvent, keySigner, NullSink, signedEventPayload, subjectOf, type FerryEvent } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { newReleaseId, releaseSubject, type ReleaseEventType } from '@ferry/protocol';
import {
  admitEvent, applyEvent, emptyProjection, listReleases, MAX_RELEASE_HOSTS, MAX_RELEASE_OUTCOMES, MAX_RELEASE_SERVICES, MemoryStore, Registry,
  RELEASES_LIMIT, releaseSignerKeys, releaseSummary, serviceQuality, type DeploymentSummary, type ProvenanceKeys, type RegistryChange,
} from '@ferry/registry';
import { grantFor, testKey, trustDocument } from '../helpers/keys.ts';
import { documentHeader } from '@ferry/auth';

const silent = createLogger({ level: 'silent' });
const RELEASE = newReleaseId(new Date('2026-03-01T12:00:00Z'));
const SOURCE = 'ferry://sender/laptop';
let clock = Date.parse('2026-03-01T12:00:00Z');
/** Records are made without prototypes (their keys come from events): compared as JSON. */
const plain = (value: unknown): unknown => JSON.parse(JSON.stringify(value));
const at = (): string => new Date((clock += 1000)).toISOString();

function step<T extends ReleaseEventType>(type: T, data: Parameters<typeof createReleaseEvent<T>>[1]['data'], id = RELEASE): FerryEvent {
  const event = createReleaseEvent(type, { source: SOURCE, releaseId: id, project: 'shop', data });
  return { ...event, time: at() };
}

function deploy(type: 'package.verified' | 'deployment.completed' | 'deployment.failed' | 'rollback.completed', host: string, service: string, phase: number, extra: Record<string, unknown> = {}, id = RELEASE): FerryEvent {
  const data = {
    ...(type === 'deployment.completed' ? { timings: { total: 1000 } } : {}),
    ...(type === 'deployment.failed' ? { code: 'FERRY_ERR_HEALTHCHECK_FAILED', reason: 'no', state: 'ROLLED_BACK' } : {}),
    ...(type === 'package.verified' ? { digest: 'd', bytes: 1, durationMs: 1 } : {}),
    ...(type === 'rollback.completed' ? { durationMs: 1 } : {}),
    ...extra,
    release: { id, phase, wave: 0 },
  };
  const event = createEvent(type, { source: `ferry://receiver/${host}`, host, service, deploymentId: `d-${host}-${service}-${id.slice(-4)}`, data: data as never });
  return { ...event, time: at() };
}

const PLAN = {
  phases: ['data', 'apps'],
  waves: [['edge-1'], ['edge-2']],
  services: [
    { name: 'db', image: 'db:1', imageId: 'sha256:aa', phase: 0, dependsOn: [], hosts: ['edge-1', 'edge-2'] },
    { name: 'api', image: 'api:1', imageId: 'sha256:bb', phase: 1, dependsOn: [{ service: 'db', condition: 'healthy' as const }], hosts: ['edge-1', 'edge-2'] },
  ],
};

describe('the release projection', () => {
  it('follows a release from its plan through its phases and waves to its end', () => {
    const data = emptyProjection();
    const started = applyEvent(data, step('release.started', PLAN), 'ops');
    assert.equal(started?.history, undefined, 'a release is not one service\'s history');
    const record = started?.release?.value;
    assert.ok(record);
    assert.equal(record.project, 'shop');
    assert.equal(record.startedBy, 'ops');
    assert.deepEqual(plain(record.outcomes), { 'edge-1': { db: 'pending', api: 'pending' }, 'edge-2': { db: 'pending', api: 'pending' } });

    applyEvent(data, deploy('package.verified', 'edge-1', 'db', 0));
    assert.equal(data.releases[RELEASE]?.outcomes['edge-1']?.db, 'deploying');
    const done = applyEvent(data, deploy('deployment.completed', 'edge-1', 'db', 0));
    assert.equal(done?.release?.value.outcomes['edge-1']?.db, 'healthy');
    assert.deepEqual(done?.deployment?.value.release, { id: RELEASE, phase: 0, wave: 0 });
    applyEvent(data, step('release.phase.completed', { phase: 0, name: 'data', wave: 0, outcomes: { 'edge-1': { db: 'healthy' } } }));
    applyEvent(data, deploy('deployment.completed', 'edge-1', 'api', 1));
    applyEvent(data, step('release.wave.completed', { wave: 0, name: 'canary', hosts: ['edge-1'], outcomes: {} }));
    applyEvent(data, step('release.paused', { wave: 1, reason: 'continue' }));
    assert.equal(data.releases[RELEASE]?.state, 'paused');
    assert.equal(data.releases[RELEASE]?.paused?.wave, 1);
    applyEvent(data, deploy('deployment.completed', 'edge-2', 'db', 0));
    applyEvent(data, step('release.phase.completed', { phase: 0, name: 'data', wave: 1, outcomes: {} }));
    assert.equal(data.releases[RELEASE]?.state, 'in-progress', 'the next step resumes it');
    assert.equal(data.releases[RELEASE]?.paused, undefined);
    applyEvent(data, deploy('deployment.completed', 'edge-2', 'api', 1));
    applyEvent(data, step('release.completed', { outcomes: {}, durationMs: 9000 }));
    const end = data.releases[RELEASE];
    assert.equal(end?.state, 'completed');
    assert.ok(end?.finishedAt);
    assert.deepEqual(end?.completed.waves, [{ wave: 0, name: 'canary' }]);
    assert.deepEqual(plain(releaseSummary(end).outcomes), { healthy: 4 });
  });

  it('halts, rolls back and says where it went back to; a late receiver event does not undo a rollback', () => {
    const data = emptyProjection();
    const previous = newReleaseId(new Date('2026-02-01T00:00:00Z'));
    // The receiver's event may be stored before the sender's release.started.
    applyEvent(data, deploy('deployment.completed', 'edge-1', 'db', 0));
    assert.equal(data.releases[RELEASE]?.project, '');
    applyEvent(data, step('release.started', { ...PLAN, previousId: previous }));
    assert.equal(data.releases[RELEASE]?.outcomes['edge-1']?.db, 'healthy', 'the plan does not undo what a receiver told');
    applyEvent(data, step('release.failed', {
      error: { code: 'FERRY_ERR_HEALTHCHECK_FAILED', message: 'api did not answer' }, phase: 1, wave: 0, failedService: 'api', failedHost: 'edge-1',
      outcomes: { 'edge-1': { api: 'failed' }, 'edge-2': { db: 'skipped', api: 'skipped' } }, rollback: true,
    }));
    assert.equal(data.releases[RELEASE]?.state, 'failed');
    applyEvent(data, step('release.rollback.started', { reason: 'api failed', hosts: ['edge-1'], to: previous }));
    assert.equal(data.releases[RELEASE]?.state, 'rolling-back');
    applyEvent(data, step('release.rolled_back', { rolledBackTo: previous, outcomes: { 'edge-1': { db: 'rolled-back', api: 'rolled-back' } }, durationMs: 800 }));
    applyEvent(data, deploy('deployment.failed', 'edge-1', 'api', 1));
    const end = data.releases[RELEASE];
    assert.equal(end?.state, 'rolled-back');
    assert.equal(end?.rolledBackTo, previous);
    assert.equal(end?.previousId, previous);
    assert.deepEqual(end?.error, { code: 'FERRY_ERR_HEALTHCHECK_FAILED', message: 'api did not answer' });
    assert.deepEqual(plain(end?.outcomes['edge-1']), { db: 'rolled-back', api: 'rolled-back' });
    // A late release.completed (another publisher's order) does not reopen it.
    applyEvent(data, step('release.completed', { outcomes: {}, durationMs: 1 }));
    assert.equal(data.releases[RELEASE]?.state, 'rolled-back');
  });

  it('keeps a record bounded whatever an event holds, and keeps no spec or env', () => {
    const data = emptyProjection();
    const services = Array.from({ length: MAX_RELEASE_SERVICES + 50 }, (_, i) => ({
      name: `s${i}`, image: 'x'.repeat(5000), imageId: 'sha256:aa', phase: 0, dependsOn: [], hosts: Array.from({ length: 400 }, (_, j) => `h${j}`),
      env: { PASSWORD: 'hunter2' }, spec: { env: { TOKEN: 'secret' } },
    }));
    applyEvent(data, step('release.started', { phases: ['p'], waves: [Array.from({ length: 2000 }, (_, j) => `h${j}`)], services }));
    const record = data.releases[RELEASE];
    assert.ok(record);
    assert.equal(record.services.length, MAX_RELEASE_SERVICES);
    assert.ok((record.services[0]?.image.length ?? 0) <= 512);
    assert.ok(record.waves.flat().length <= MAX_RELEASE_HOSTS);
    const cells = Object.values(record.outcomes).reduce((n, row) => n + Object.keys(row).length, 0);
    assert.ok(cells <= MAX_RELEASE_OUTCOMES, `${cells} cells`);
    assert.ok(Object.keys(record.outcomes).length <= MAX_RELEASE_HOSTS);
    const text = JSON.stringify(record);
    assert.ok(!text.includes('hunter2') && !text.includes('secret'), 'nothing but the listed fields is kept');
    // Hostile names: none becomes a key, none reaches a prototype.
    applyEvent(data, step('release.phase.completed', { phase: 0, name: 'p', outcomes: JSON.parse('{"__proto__":{"x":"healthy"},"h0":{"__proto__":"failed","constructor":"healthy"}}') as never }));
    assert.equal(Object.hasOwn(record.outcomes, '__proto__'), false);
    assert.equal(({} as Record<string, unknown>).x, undefined);
  });

  it('ignores events that name no valid release', () => {
    const data = emptyProjection();
    const bad = createReleaseEvent('release.started', { source: SOURCE, releaseId: 'rel-nope', project: 'shop', data: PLAN });
    assert.deepEqual(applyEvent(data, bad), {});
    applyEvent(data, deploy('deployment.completed', 'edge-1', 'db', 0, {}, 'rel-x'));
    assert.deepEqual(Object.keys(data.releases), []);
  });

  it('keeps the newest releases only, by id', () => {
    const data = emptyProjection();
    const ids = Array.from({ length: RELEASES_LIMIT + 2 }, (_, i) => newReleaseId(new Date(Date.parse('2026-01-01T00:00:00Z') + i * 1000)));
    let removed: string[] = [];
    for (const id of ids) {
      const applied = applyEvent(data, step('release.started', PLAN, id));
      if (applied?.release?.removed) removed = [...removed, applied.release.removed];
    }
    assert.equal(Object.keys(data.releases).length, RELEASES_LIMIT);
    assert.deepEqual(removed, ids.slice(0, 2));
  });

  it('lists newest first, a page at a time', () => {
    const data = emptyProjection();
    const ids = Array.from({ length: 5 }, (_, i) => newReleaseId(new Date(Date.parse('2026-01-01T00:00:00Z') + i * 1000)));
    for (const id of ids) applyEvent(data, step('release.started', PLAN, id));
    const first = listReleases(data.releases, { limit: 2 });
    assert.deepEqual(first.releases.map((r) => r.id), [ids[4], ids[3]]);
    assert.equal(first.next, ids[3]);
    const last = listReleases(data.releases, { limit: 3, before: ids[1] });
    assert.deepEqual(last.releases.map((r) => r.id), [ids[0]]);
    assert.equal(last.next, undefined);
    assert.deepEqual(first.releases[0]?.services, ['api', 'db']);
    assert.deepEqual(first.releases[0]?.hosts, ['edge-1', 'edge-2']);
  });
});

describe('release events the registry believes', () => {
  const ops = testKey('ops');
  const webOnly = testKey('web-only');
  const admin = testKey('admin');
  const graced = testKey('graced');
  const trust = new TrustStore({
    data: trustDocument([ops, { key: webOnly, services: ['web'] }, { key: admin, role: 'admin' }], {
      grants: [],
    }),
  });
  const keys = (arrival = Date.now()): ProvenanceKeys => ({
    hostKeysAt: () => [], registryKey: undefined,
    releaseKeysAt: (keyId, grant, arrivalMs, claims) => {
      let scopes;
      try {
        scopes = trust.scopesFor(keyId, grant);
      } catch {
        return [];
      }
      return releaseSignerKeys(scopes, { isRevoked: (s) => trust.isRevoked(s), hostFacts: (id) => ({ id, labels: {} }), arrivalMs: arrival || arrivalMs, claims });
    },
  });
  const started = createReleaseEvent('release.started', { source: SOURCE, releaseId: RELEASE, project: 'Shop', data: PLAN });
  const reason = (payload: Uint8Array, event: FerryEvent, subject = subjectOf(event)): string => {
    const admitted = admitEvent(payload, event, subject, Date.now(), keys());
    return admitted.ok ? `ok:${admitted.signer}` : admitted.reason;
  };

  it('takes a release event signed by a key that may deploy what it names, and names the signer', () => {
    assert.equal(reason(signedEventPayload(started, keySigner(ops.keyId, ops.privateKey)), started), 'ok:ops');
    assert.equal(reason(new TextEncoder().encode(JSON.stringify(started)), started), 'unsigned');
    assert.equal(reason(signedEventPayload(started, keySigner(ops.keyId, admin.privateKey)), started), 'bad-signature');
    assert.equal(reason(signedEventPayload(started, keySigner(webOnly.keyId, webOnly.privateKey)), started), 'not-allowed', 'its scope does not cover db and api');
    assert.equal(reason(signedEventPayload(started, keySigner('nobody', graced.privateKey)), started), 'not-allowed');
    assert.equal(reason(signedEventPayload(started, keySigner(hostKeyId('edge-1'), ops.privateKey)), started), 'not-allowed');
  });

  it('judges what a release event names, not its envelope: the project is no service, the failed service is', () => {
    const sign = (event: FerryEvent): string => reason(signedEventPayload(event, keySigner(webOnly.keyId, webOnly.privateKey)), event);
    const done = createReleaseEvent('release.completed', { source: SOURCE, releaseId: RELEASE, project: 'shop', data: { outcomes: { 'edge-1': { web: 'healthy' } }, durationMs: 1 } });
    assert.equal(sign(done), 'ok:web-only');
    const failed = (failedService: string): FerryEvent => createReleaseEvent('release.failed', {
      source: SOURCE, releaseId: RELEASE, project: 'shop',
      data: { error: { code: 'FERRY_ERR_RELEASE_HALTED', message: 'halted' }, failedService, failedHost: 'edge-1', outcomes: { 'edge-1': { web: 'failed' } }, rollback: false },
    });
    assert.equal(sign(failed('web')), 'ok:web-only');
    assert.equal(sign(failed('db')), 'not-allowed');
  });

  it('takes a key whose right comes from the grant the event carries', () => {
    const grant = grantFor(graced, admin, { role: 'deploy', services: ['*'], hosts: ['*'] });
    const withGrant = createReleaseEvent('release.completed', { source: SOURCE, releaseId: RELEASE, project: 'shop', data: { outcomes: {}, durationMs: 1 }, grant: documentHeader(grant) });
    assert.equal(reason(signedEventPayload(withGrant, keySigner(graced.keyId, graced.privateKey)), withGrant), 'ok:graced');
    const withoutGrant = createReleaseEvent('release.completed', { source: SOURCE, releaseId: RELEASE, project: 'shop', data: { outcomes: {}, durationMs: 1 } });
    assert.equal(reason(signedEventPayload(withoutGrant, keySigner(graced.keyId, graced.privateKey)), withoutGrant), 'not-allowed');
  });

  it('refuses a release event on another subject, for another project, or about a host', () => {
    const payload = signedEventPayload(started, keySigner(ops.keyId, ops.privateKey));
    assert.equal(reason(payload, started, releaseSubject('other', 'release.started')), 'wrong-subject');
    const moved = { ...started, data: { ...started.data, service: 'other' } } as FerryEvent;
    assert.equal(reason(signedEventPayload(moved, keySigner(ops.keyId, ops.privateKey)), moved), 'bad-name');
    const asHost = { ...started, data: { ...started.data, host: 'edge-1' } } as FerryEvent;
    assert.equal(reason(signedEventPayload(asHost, keySigner(ops.keyId, ops.privateKey)), asHost), 'bad-name');
    const notRelease = createEvent('deployment.completed', { source: SOURCE, host: '_release', service: 'shop', deploymentId: 'd', data: { timings: {} } });
    assert.equal(reason(signedEventPayload(notRelease, keySigner(ops.keyId, ops.privateKey)), notRelease), 'bad-name');
  });
});

describe('service quality', () => {
  const summary = (n: number, fields: Partial<DeploymentSummary>): DeploymentSummary => ({
    deploymentId: `d${n}`, host: 'h1', service: 'api', state: 'succeeded', lastEvent: 'deployment.completed',
    startedAt: new Date(Date.parse('2026-01-01T00:00:00Z') + n * 1000).toISOString(), updatedAt: 'x', ...fields,
  });

  it('gives success rate, p50/p95 duration and rollback effectiveness over the last N deployments', () => {
    const deployments = [
      ...Array.from({ length: 18 }, (_, i) => summary(i + 10, { durationMs: (i + 1) * 100 })),
      summary(40, { state: 'rolled_back', rollback: { restored: true } }),
      summary(41, { state: 'failed', rollback: { restored: false } }),
      summary(42, { state: 'running' }),
      // Older than the window: not counted.
      summary(1, { state: 'failed' }),
      summary(2, { service: 'web', durationMs: 5 }),
    ];
    const [api, web] = serviceQuality(deployments, { window: 21 });
    assert.deepEqual(api, {
      service: 'api', deployments: 21, finished: 20, succeeded: 18, successRate: 0.9, p50DurationMs: 900, p95DurationMs: 1800,
      rollbacks: 2, rollbacksRestored: 1, rollbackEffectiveness: 0.5,
    });
    assert.equal(web?.successRate, 1);
    assert.equal(web?.rollbackEffectiveness, null);
    assert.deepEqual(serviceQuality(deployments, { window: 5, service: 'web' }).map((q) => q.service), ['web']);
  });

  it('comes from the receivers\' events', () => {
    const data = emptyProjection();
    applyEvent(data, deploy('deployment.completed', 'edge-1', 'api', 0));
    applyEvent(data, deploy('rollback.completed', 'edge-2', 'api', 0, { restoredContainerId: 'c1' }));
    applyEvent(data, deploy('deployment.failed', 'edge-2', 'api', 0));
    const [q] = serviceQuality(Object.values(data.deployments), { window: 50 });
    assert.equal(q?.successRate, 0.5);
    assert.equal(q?.p50DurationMs, 1000);
    assert.equal(q?.rollbackEffectiveness, 1);
  });
});

describe('the registry with releases', () => {
  it('projects, stores, lists and announces releases, and gets them back from its store', async () => {
    const store = new MemoryStore();
    const registry = new Registry({ store, events: new NullSink(), logger: silent, registryId: 'r', ttlSeconds: 30, driftMode: 'warn', driftIgnore: [] });
    await registry.start();
    const changes: RegistryChange[] = [];
    registry.subscribe((c) => changes.push(c));
    assert.equal(registry.project(step('release.started', PLAN), 1, 'ops'), true);
    assert.equal(registry.project(deploy('deployment.completed', 'edge-1', 'db', 0), 2), true);
    registry.stop();
    assert.equal(registry.release(RELEASE)?.outcomes['edge-1']?.db, 'healthy');
    assert.equal(registry.release('rel-20260101T000000Z-00000000'), undefined);
    assert.deepEqual(registry.releases({ limit: 10 }).releases.map((r) => r.id), [RELEASE]);
    assert.ok(changes.some((c) => c.kind === 'release' && c.data.id === RELEASE));
    assert.ok(changes.some((c) => c.kind === 'quality' && c.data.service === 'db'));
    const snapshot = await registry.snapshot();
    assert.equal(snapshot.releases?.[0]?.id, RELEASE);

    const again = new Registry({ store, events: new NullSink(), logger: silent, registryId: 'r', ttlSeconds: 30, driftMode: 'warn', driftIgnore: [] });
    await again.start();
    again.stop();
    assert.deepEqual(again.release(RELEASE)?.outcomes, registry.release(RELEASE)?.outcomes);
    assert.equal(again.checkpoint, 2);
  });
});
