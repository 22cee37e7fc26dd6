import assert from 'node:assert/strict';
import { createPublicKey, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { envDigests, fingerprint, generateKeyPair, hostKeyId, publicKeyText, signBytes } from '@ferry/auth';
import { createEvent, signedEventPayload, type EventSink, type FerryEvent } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { eventSubject, isFerryError } from '@ferry/protocol';
import {
  admitEvent, applyEvent, driftReasons, emptyProjection, Enrollments, matches, MemoryStore, parseDriftIgnore, parseSelector, Registry, registryAction,
  type Actual, type CorrectionTarget, type Desired, type RegistryChange,
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
  deploymentId: 'd1', image: 'web:1', imageId: IMAGE_A, configHash: 'sha256:c1', targetUrl: 'http://desired.example:7701', recordedAt: '2026-01-01T00:00:00.000Z',
  service: { name: 'web', env: envDigests({ A: '1' }, generateKeyPair().privateKey) },
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

  it('reports restarts of the deployment\'s own container, a crash loop its state alone hides', () => {
    assert.deepEqual(driftReasons('web', desired, actual({ restarts: 0 }), []), []);
    assert.deepEqual(driftReasons('web', desired, actual({ deploymentId: 'd1', restarts: 3 }), []), [{ field: 'restarts', desired: 0, actual: 3 }]);
    assert.deepEqual(driftReasons('web', desired, actual({ restarts: 1 }), []), [{ field: 'restarts', desired: 0, actual: 1 }], 'an unlabelled container counts');
    assert.deepEqual(driftReasons('web', desired, actual({ state: 'restarting', deploymentId: 'd1', restarts: 2 }), []).map((r) => r.field), ['state', 'restarts']);
    assert.deepEqual(driftReasons('web', desired, actual({ deploymentId: 'd0', restarts: 5 }), []), [], 'another deployment\'s container is not the one deployed');
    assert.deepEqual(driftReasons('web', desired, actual({ restarts: 4 }), parseDriftIgnore('web:restarts')), []);
    assert.deepEqual(driftReasons('web', desired, actual({ state: 'missing', restarts: 4 }), []).map((r) => r.field), ['missing']);
  });

  it('refuses an ignore rule that names no field', () => {
    assert.throws(() => parseDriftIgnore('image'), /image/);
    assert.throws(() => parseDriftIgnore(':state'), /state/);
    assert.deepEqual(parseDriftIgnore(' web:state , imageId '), [{ service: 'web', field: 'state' }, { field: 'imageId' }]);
  });

  it('names the role each signed route asks for before its body is read', () => {
    assert.equal(registryAction({ method: 'POST', path: '/hosts' }), 'host');
    assert.equal(registryAction({ method: 'POST', path: '/hosts/h1/heartbeat' }), 'host');
    assert.equal(registryAction({ method: 'POST', path: '/v1/hosts/h1/heartbeat' }), 'host');
    assert.equal(registryAction({ method: 'POST', path: '/join-tokens' }), 'admin');
    assert.equal(registryAction({ method: 'POST', path: '/projection/rebuild' }), 'admin');
    assert.equal(registryAction({ method: 'PUT', path: '/desired/h1/web' }), 'deploy');
    assert.equal(registryAction({ method: 'GET', path: '/services' }), 'read');
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
      store: extra.store ?? new MemoryStore(), events: sink, logger: silent, registryId: 'reg', ttlSeconds: 10, driftMode: 'warn', driftIgnore: [],
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

  it('publishes drift.detected once per episode and asks the host itself, at its own URL, once, after a heartbeat interval', async () => {
    const asked: { target: CorrectionTarget; service: string }[] = [];
    const { registry, sink, clock } = make({
      driftMode: 'correct',
      corrector: (target, service) => {
        asked.push({ target, service });
        return Promise.resolve({ service, action: 'started' });
      },
    });
    const enrolled = enroll(registry, 'h1');
    registry.register(host);
    const { recordedAt: _r, ...input } = desired;
    registry.putDesired('h1', 'web', { ...input, deploymentId: randomUUID() }, 'ops');
    const drifted = [{ service: 'web', imageId: IMAGE_B, configHash: 'sha256:c1', state: 'running' }];
    registry.heartbeat('h1', drifted);
    registry.heartbeat('h1', drifted);
    assert.equal(sink.of('drift.detected').length, 1);
    assert.equal(asked.length, 0, 'not before the drift outlived one heartbeat interval');
    clock.now += registry.heartbeatSeconds * 1000;
    registry.heartbeat('h1', drifted);
    registry.heartbeat('h1', drifted);
    assert.equal(asked.length, 1);
    // The record's URL and enrolled key: nothing of the desired record (its targetUrl) is used.
    assert.deepEqual(asked[0], { target: { host: 'h1', url: host.url, hostKey: enrolled.fingerprint }, service: 'web' });
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

/** Enrolls a fresh key for `id` through a join token, as POST /v1/enroll does once the key is proven. */
function enroll(registry: Registry, id: string, request: { labels?: Record<string, string>; replace?: boolean } = {}): { fingerprint: string; privateKey: ReturnType<typeof generateKeyPair>['privateKey'] } {
  const { privateKey } = generateKeyPair();
  const { token } = registry.issueJoinToken({ host: id, ...request }, 'admin');
  registry.enroll(token, publicKeyText(privateKey), { ...host, id, labels: request.labels ?? host.labels });
  return { fingerprint: fingerprint(privateKey), privateKey };
}

describe('registry enrollment', () => {
  const dirs: string[] = [];
  after(() => { for (const dir of dirs) rmSync(dir, { recursive: true, force: true }); });
  const make = (store = new MemoryStore(), clock = { now: Date.parse('2026-01-01T00:00:00Z') }): { registry: Registry; clock: { now: number } } => ({
    registry: new Registry({ store, events: new RecordingSink(), logger: silent, registryId: 'reg', ttlSeconds: 10, driftMode: 'warn', driftIgnore: [], maxHosts: 3, now: () => clock.now }),
    clock,
  });
  const code = (c: string) => (err: unknown): boolean => isFerryError(err) && err.code === c;

  it('takes a token once, for its host only, before it expires; the key becomes a host key of that host alone', () => {
    const { registry, clock } = make();
    const key = generateKeyPair().privateKey;
    const { token } = registry.issueJoinToken({ host: 'h1', ttlSeconds: 60 }, 'admin');
    assert.throws(() => registry.checkJoinToken(token, 'h2'), code('FERRY_ERR_JOIN_TOKEN_INVALID'), 'bound to its host');
    assert.throws(() => registry.checkJoinToken('x'.repeat(43), 'h1'), code('FERRY_ERR_JOIN_TOKEN_INVALID'));
    registry.enroll(token, publicKeyText(key), host);
    assert.throws(() => registry.enroll(token, publicKeyText(key), host), code('FERRY_ERR_JOIN_TOKEN_INVALID'), 'single use');
    const scope = registry.hostScope(hostKeyId('h1'));
    assert.equal(scope?.role, 'host');
    assert.deepEqual(scope?.hosts, ['h1']);
    assert.equal(scope?.fingerprint, fingerprint(key));
    assert.equal(registry.hostScope(hostKeyId('h2')), undefined);
    assert.equal(registry.hostScope('ops'), undefined);
    assert.equal(registry.hosts()[0]?.hostKey, fingerprint(key));

    const late = registry.issueJoinToken({ host: 'h2', ttlSeconds: 60 }, 'admin');
    clock.now += 60_000;
    assert.throws(() => registry.checkJoinToken(late.token, 'h2'), code('FERRY_ERR_JOIN_TOKEN_INVALID'), 'expired');
  });

  it('enrolls another key for an enrolled host only with a token issued with replace; the old key still vouches for what arrived before', () => {
    const { registry, clock } = make();
    const first = enroll(registry, 'h1');
    assert.throws(() => enroll(registry, 'h1'), code('FERRY_ERR_HOST_ENROLLED'));
    assert.equal(registry.hostScope(hostKeyId('h1'))?.fingerprint, first.fingerprint, 'the enrolled key stays');
    const before = clock.now;
    clock.now += 1000;
    const second = enroll(registry, 'h1', { replace: true });
    assert.equal(registry.hostScope(hostKeyId('h1'))?.fingerprint, second.fingerprint);
    const pub = (k: typeof first): string => publicKeyText(createPublicKey(k.privateKey));
    assert.deepEqual(registry.hostKeysAt('h1', before).map((k) => publicKeyText(k)).sort(), [pub(first), pub(second)].sort());
    assert.deepEqual(registry.hostKeysAt('h1', clock.now).map((k) => publicKeyText(k)), [pub(second)]);
  });

  it('a host key the trust file revokes vouches for no event, and its host is asked for no correction', async () => {
    const revoked = new Set<string>();
    const asked: string[] = [];
    const clock = { now: Date.parse('2026-01-01T00:00:00Z') };
    const registry = new Registry({
      store: new MemoryStore(), events: new RecordingSink(), logger: silent, registryId: 'reg', ttlSeconds: 30, driftMode: 'correct', driftIgnore: [],
      isRevoked: (scope) => revoked.has(scope.fingerprint), now: () => clock.now,
      corrector: (target) => { asked.push(target.host); return Promise.resolve({}); },
    });
    const bad = enroll(registry, 'h1');
    enroll(registry, 'h2');
    assert.equal(registry.hostKeysAt('h1', clock.now).length, 1);
    revoked.add(bad.fingerprint);
    assert.deepEqual(registry.hostKeysAt('h1', clock.now), []);
    assert.equal(registry.hostKeysAt('h2', clock.now).length, 1);
    const { recordedAt: _r, ...input } = desired;
    const stopped = [{ service: 'web', imageId: IMAGE_A, configHash: 'sha256:c1', state: 'exited' }];
    for (const id of ['h1', 'h2']) {
      registry.putDesired(id, 'web', input, 'ops');
      registry.heartbeat(id, stopped);
    }
    clock.now += registry.heartbeatSeconds * 1000;
    for (const id of ['h1', 'h2']) registry.heartbeat(id, stopped);
    await Promise.resolve();
    assert.deepEqual(asked, ['h2']);
    const refused = registry.services({ host: 'h1' })[0]?.drift?.correction;
    assert.deepEqual([refused?.outcome, refused?.error?.code], ['failed', 'FERRY_ERR_HOST_UNKNOWN']);
  });

  it('holds the labels a token pinned, and refuses registrations past FERRY_MAX_HOSTS', () => {
    const { registry } = make();
    enroll(registry, 'h1', { labels: { env: 'prod' } });
    assert.throws(() => registry.register({ ...host, labels: { env: 'prod', role: 'db' } }), code('FERRY_ERR_LABELS_PINNED'));
    assert.equal(registry.register({ ...host, labels: { env: 'prod' } }).status, 'online');
    enroll(registry, 'h2');
    enroll(registry, 'h3');
    assert.throws(() => enroll(registry, 'h4'), code('FERRY_ERR_REGISTRY_LIMIT'));
    assert.equal(registry.hosts().length, 3);
  });

  it('keeps enrolled keys and open tokens in a file without Redis, and reads them back at start', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-reg-keys-'));
    dirs.push(dir);
    const file = join(dir, 'registry-keys.json');
    const { registry } = make(new MemoryStore({ file }));
    await registry.start();
    const enrolled = enroll(registry, 'h1');
    const open = registry.issueJoinToken({ host: 'h2' }, 'admin');
    registry.stop();
    assert.doesNotMatch(readFileSync(file, 'utf8'), new RegExp(open.token), 'tokens are kept as hashes only');

    const { registry: again } = make(new MemoryStore({ file }));
    await again.start();
    again.stop();
    assert.equal(again.hostScope(hostKeyId('h1'))?.fingerprint, enrolled.fingerprint);
    assert.doesNotThrow(() => again.checkJoinToken(open.token, 'h2'));
    assert.deepEqual(again.hosts(), [], 'hosts themselves live in memory only');
  });

  it('merging a stale copy of the store makes no used token usable and no replaced key current again', () => {
    const clock = { now: Date.parse('2026-01-01T00:00:00Z') };
    const keys = new Enrollments({ store: new MemoryStore(), log: silent, now: () => clock.now, maxHosts: 10 });
    const { token } = keys.issue({ host: 'h1' }, 'admin');
    const stale = keys.dump();
    const first = generateKeyPair().privateKey;
    keys.enroll(token, 'h1', publicKeyText(first));
    const enrolledOnce = keys.dump();
    const replace = keys.issue({ host: 'h1', replace: true }, 'admin');
    clock.now += 1000;
    const second = generateKeyPair().privateKey;
    keys.enroll(replace.token, 'h1', publicKeyText(second));
    keys.adopt(stale);
    keys.adopt(enrolledOnce);
    assert.throws(() => keys.check(token, 'h1'), code('FERRY_ERR_JOIN_TOKEN_INVALID'));
    assert.equal(keys.get('h1')?.fingerprint, fingerprint(second));
  });

  it('a stored desired record that still holds env values loses them at start', async () => {
    const store = new MemoryStore();
    store.set('desired', 'h1/web', { ...desired, service: { name: 'web', env: { PASSWORD: 'hunter2' } } });
    const { registry } = make(store);
    await registry.start();
    registry.stop();
    assert.equal(registry.services()[0]?.desired?.service.env, undefined);
    assert.doesNotMatch(JSON.stringify(await store.load()), /hunter2/);
  });

  it('forgets a reported service that vanished and was never desired, so a host cannot grow the registry with names', () => {
    const { registry } = make();
    enroll(registry, 'h1');
    for (let i = 0; i < 20; i++) registry.heartbeat('h1', [{ service: `churn-${i}`, state: 'running' }]);
    assert.deepEqual(registry.services().map((s) => s.service), ['churn-19']);
  });
});

describe('registry event provenance', () => {
  const hostKey = generateKeyPair().privateKey;
  const registryKey = generateKeyPair().privateKey;
  const keys = { hostKeysAt: (h: string): ReturnType<typeof createPublicKey>[] => (h === 'h1' ? [createPublicKey(hostKey)] : []), registryKey: createPublicKey(registryKey) };
  const arrival = Date.parse('2026-01-01T00:00:10Z');
  const event = (host = 'h1', time = '2026-01-01T00:00:05.000Z'): FerryEvent => ({
    ...createEvent('deployment.completed', { source: `ferry://receiver/${host}`, host, service: 'web', deploymentId: 'd1', data: { timings: {} } }), time,
  });
  const signer = (keyId: string, key = hostKey): { keyId: string; sign: (m: Buffer) => string } => ({ keyId, sign: (m: Buffer) => signBytes(key, m) });
  const subject = (e: FerryEvent): string => eventSubject(e.data.host, e.data.service, 'deployment.completed');
  const reason = (payload: Uint8Array, e: FerryEvent, subj = subject(e)): string => {
    const admitted = admitEvent(payload, e, subj, arrival, keys);
    return admitted.ok ? 'ok' : admitted.reason;
  };

  it('admits an event signed by the enrolled key of the host it names, and nothing else', () => {
    const e = event();
    const signed = signedEventPayload(e, signer(hostKeyId('h1')));
    assert.equal(reason(signed, e), 'ok');
    assert.equal(reason(new TextEncoder().encode(JSON.stringify(e)), e), 'unsigned');
    assert.equal(reason(signedEventPayload(e, signer(hostKeyId('h1'), generateKeyPair().privateKey)), e), 'bad-signature', 'another key under the host key id');
    assert.equal(reason(signedEventPayload(e, signer(hostKeyId('h2'))), e), 'bad-signature', 'signed as another host');
    const other = event('h2');
    assert.equal(reason(signedEventPayload(other, signer(hostKeyId('h2'))), other), 'not-enrolled');
    assert.equal(reason(signed, e, eventSubject('h2', 'web', 'deployment.completed')), 'wrong-subject');
    // One byte changed after signing: the image id claimed is not what was signed.
    const tampered = new TextEncoder().encode(new TextDecoder().decode(signed).replace('"d1"', '"d2"'));
    assert.equal(reason(tampered, e), 'bad-signature');
    const named = { ...e, data: { ...e.data, service: '__proto__' } } as FerryEvent;
    assert.equal(reason(signedEventPayload(named, signer(hostKeyId('h1'))), named), 'bad-name');
  });

  it('admits the registry\'s own event types under its own key only', () => {
    const lost = createEvent('host.lost', { source: 'ferry://registry/reg', host: 'h1', service: '_host', deploymentId: '', data: { reason: 'ttl' } });
    const subj = eventSubject('h1', '_host', 'host.lost');
    assert.equal(admitEvent(signedEventPayload(lost, signer('registry.reg', registryKey)), lost, subj, arrival, keys).ok, true);
    const byHost = admitEvent(signedEventPayload(lost, signer(hostKeyId('h1'))), lost, subj, arrival, keys);
    assert.deepEqual(byHost, { ok: false, reason: 'bad-signature' }, 'a host cannot say it was lost, nor anything the registry says');
  });

  it('moves a time later than the stream\'s arrival back to the arrival', () => {
    const future = event('h1', '2030-01-01T00:00:00.000Z');
    const admitted = admitEvent(signedEventPayload(future, signer(hostKeyId('h1'))), future, subject(future), arrival, keys);
    assert.ok(admitted.ok);
    assert.equal(admitted.event.time, new Date(arrival).toISOString());
    const past = event();
    const kept = admitEvent(signedEventPayload(past, signer(hostKeyId('h1'))), past, subject(past), arrival, keys);
    assert.ok(kept.ok);
    assert.equal(kept.event.time, past.time);
  });
});
