import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { createEvent, type EventSink, type FerryEvent } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { isFerryError } from '@ferry/protocol';
import {
  applyEvent, correctionDocument, driftReasons, emptyProjection, matches, MemoryStore, parseDriftIgnore, parseSelector, Registry,
  type Actual, type Desired, type RegistryChange,
} from '@ferry/registry';

const IMAGE_A = `sha256:${'a'.repeat(64)}`;
const IMAGE_B = `sha256:${'b'.repeat(64)}`;
const silent = createLogger({ level: 'silent' });

/** Records what would go to NATS: the registry's own logic is what is under test here. */
class RecordingSink implements EventSink {
  readonly status = 'connected' as const;
  readonly events: FerryEvent[] = [];
  publish(event: FerryEvent): void {
    this.events.push(event);
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  of(type: string): FerryEvent[] {
    return this.events.filter((e) => e.type === `ferry.${type}`);
  }
}

const desired: Desired = {
  deploymentId: 'd1', image: 'web:1', imageId: IMAGE_A, configHash: 'sha256:c1', targetUrl: 'http://h1:7701', recordedAt: '2026-01-01T00:00:00.000Z',
  service: { name: 'web', env: { A: '1' } },
};
const actual = (fields: Partial<Actual>): Actual => ({ service: 'web', state: 'running', imageId: IMAGE_A, configHash: 'sha256:c1', source: 'heartbeat', reportedAt: 'x', ...fields });

const host = { id: 'h1', url: 'http://h1:7701', labels: { env: 'prod' }, capabilities: [], version: '1', engine: { version: '28', storageDriver: 'overlay2', imageStore: 'legacy' as const } };

describe('registry drift rules', () => {
  it('names each differing field, skips fields the actual state does not carry, and honours ignore rules', () => {
    assert.deepEqual(driftReasons('web', desired, actual({}), []), []);
    assert.deepEqual(driftReasons('web', desired, actual({ imageId: IMAGE_B, configHash: 'sha256:c2' }), []).map((r) => r.field), ['imageId', 'configHash']);
    assert.deepEqual(driftReasons('web', desired, actual({ configHash: undefined, imageId: IMAGE_B }), []).map((r) => r.field), ['imageId']);
    assert.deepEqual(driftReasons('web', desired, actual({ state: 'exited' }), []).map((r) => r.field), ['state']);
    assert.deepEqual(driftReasons('web', desired, actual({ state: 'missing' }), []).map((r) => r.field), ['missing']);
    assert.deepEqual(driftReasons('web', desired, actual({ configHash: 'sha256:c2' }), parseDriftIgnore('configHash')), []);
    assert.deepEqual(driftReasons('web', desired, actual({ configHash: 'sha256:c2' }), parseDriftIgnore('api:configHash')).map((r) => r.field), ['configHash']);
    assert.deepEqual(driftReasons('web', null, actual({ imageId: IMAGE_B }), []), []);
  });

  it('refuses an ignore rule that names no field', () => {
    assert.throws(() => parseDriftIgnore('image'), /image/);
    assert.throws(() => parseDriftIgnore(':state'), /state/);
    assert.deepEqual(parseDriftIgnore(' web:state , imageId '), [{ service: 'web', field: 'state' }, { field: 'imageId' }]);
  });

  it('turns a desired state into a one-service, one-target deployment document', () => {
    assert.deepEqual(correctionDocument(desired, 'web', 'r1'), { version: 1, id: 'r1', services: { web: { env: { A: '1' }, image: 'web:1', targets: ['http://h1:7701'] } } });
  });
});

describe('registry selectors', () => {
  it('matches every key=value and no key!=value', () => {
    const s = parseSelector('env=prod,role!=db');
    assert.ok(matches(s, { env: 'prod', role: 'web' }));
    assert.ok(matches(s, { env: 'prod' }));
    assert.ok(!matches(s, { env: 'prod', role: 'db' }));
    assert.ok(!matches(s, { env: 'dev' }));
    assert.throws(() => parseSelector('env'), (err: unknown) => isFerryError(err) && err.code === 'FERRY_ERR_BAD_REQUEST');
  });
});

describe('registry projection', () => {
  const base = { source: 'ferry://receiver/h1', host: 'h1', service: 'web', deploymentId: 'dep-1' };
  const events = [
    createEvent('image.loaded', { ...base, data: { image: 'web:2', imageId: IMAGE_B, durationMs: 1 } }),
    createEvent('container.started', { ...base, data: { containerId: 'c1', durationMs: 1 } }),
    createEvent('deployment.completed', { ...base, data: { timings: {} } }),
  ];

  it('is idempotent on event id and the same for the same events', () => {
    const once = emptyProjection();
    for (const e of events) applyEvent(once, e);
    const twice = emptyProjection();
    for (const e of [...events, ...events]) applyEvent(twice, e);
    assert.deepEqual(twice, once);
    assert.equal(once.deployments['dep-1/h1']?.state, 'succeeded');
    assert.equal(once.actual['h1/web']?.imageId, IMAGE_B);
    assert.equal(once.actual['h1/web']?.containerId, 'c1');
    assert.equal(once.history.web?.length, 3);
  });

  it('keeps a finished deployment finished when a late event of it arrives', () => {
    const data = emptyProjection();
    for (const e of events) applyEvent(data, e);
    applyEvent(data, createEvent('transfer.completed', { ...base, data: { target: 'x', bytes: 1, compression: 'zstd', durationMs: 1 } }));
    assert.equal(data.deployments['dep-1/h1']?.state, 'succeeded');
    assert.equal(data.deployments['dep-1/h1']?.lastEvent, 'deployment.completed');
  });
});

describe('registry hosts and drift episodes', () => {
  const make = (extra: Partial<ConstructorParameters<typeof Registry>[0]> = {}): { registry: Registry; sink: RecordingSink; clock: { now: number } } => {
    const sink = new RecordingSink();
    const clock = { now: Date.parse('2026-01-01T00:00:00Z') };
    const registry = new Registry({
      store: new MemoryStore(), events: sink, logger: silent, registryId: 'reg', ttlSeconds: 10, driftMode: 'warn', driftIgnore: [],
      now: () => clock.now, ...extra,
    });
    return { registry, sink, clock };
  };

  it('marks a silent host lost once, refuses its heartbeat, and brings it back on registration', () => {
    const { registry, sink, clock } = make();
    const changes: RegistryChange[] = [];
    const unsubscribe = registry.subscribe((c) => changes.push(c));
    registry.register(host);
    clock.now += 10_000;
    registry.sweep();
    assert.equal(registry.hosts()[0]?.status, 'online', 'exactly the TTL is not yet lost');
    clock.now += 1;
    registry.sweep();
    registry.sweep();
    assert.equal(registry.hosts({ status: 'lost' }).length, 1);
    assert.equal(sink.of('host.lost').length, 1);
    assert.throws(() => registry.heartbeat('h1', undefined), (err: unknown) => isFerryError(err) && err.code === 'FERRY_ERR_HOST_UNKNOWN');
    registry.register(host);
    registry.heartbeat('h1', undefined);
    assert.equal(registry.hosts({ status: 'online' }).length, 1);
    assert.equal(sink.of('host.registered').length, 2);
    assert.deepEqual(changes.filter((c) => c.kind === 'host').map((c) => (c.data as { status: string }).status), ['online', 'lost', 'online']);
    unsubscribe();
  });

  it('publishes drift.detected once per episode and asks for a correction once, after a heartbeat interval', async () => {
    const asked: string[] = [];
    const { registry, sink, clock } = make({
      driftMode: 'correct',
      corrector: (_d, h, s, id) => {
        asked.push(`${h}/${s}/${id}`);
        return Promise.resolve({ id, state: 'queued' });
      },
    });
    registry.register(host);
    const { recordedAt: _r, ...input } = desired;
    registry.putDesired('h1', 'web', { ...input, deploymentId: randomUUID() });
    const drifted = [{ service: 'web', imageId: IMAGE_B, configHash: 'sha256:c1', state: 'running' }];
    registry.heartbeat('h1', drifted);
    registry.heartbeat('h1', drifted);
    assert.equal(sink.of('drift.detected').length, 1);
    assert.equal(asked.length, 0, 'not before the drift outlived one heartbeat interval');
    clock.now += registry.heartbeatSeconds * 1000;
    registry.heartbeat('h1', drifted);
    registry.heartbeat('h1', drifted);
    assert.equal(asked.length, 1);
    await Promise.resolve();
    await Promise.resolve();
    assert.equal(registry.drifted()[0]?.drift?.correction?.outcome, 'accepted');

    registry.heartbeat('h1', [{ service: 'web', imageId: IMAGE_A, configHash: 'sha256:c1', state: 'running' }]);
    assert.equal(registry.drifted().length, 0);
    registry.heartbeat('h1', []);
    assert.equal(sink.of('drift.detected').length, 2, 'a new episode: the container is gone');
    assert.deepEqual(registry.drifted()[0]?.drift?.reasons.map((r) => r.field), ['missing']);
  });
});
