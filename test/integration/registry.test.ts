import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import {
  MemoryNonceStore, RequestVerifier, TrustStore, envDigests, generateKeyPair, hostKeyId, isChallenge, publicKeyText, signBytes, signIdentity, signRequest,
} from '@ferry/auth';
import { createEvent, JetStreamPublisher, signedEventPayload, type EventSigner, type FerryEvent } from '@ferry/events';
import { digestOf } from '@ferry/integrity';
import { createLogger } from '@ferry/log';
import { eventSubject } from '@ferry/protocol';
import { startRegistry, type HistoryEntry, type RunningRegistry, type ServiceState } from '@ferry/registry';
import { Redis } from 'ioredis';
import { connect, type NatsConnection } from 'nats';
import { testKey, trustDocument, trustFile, type TestKey } from '../helpers/keys.ts';
import { enroll, enrolledHost, hostRegistration, joinToken, signedCall, until, type Answer, type Signer } from '../helpers/registry.ts';
import { NatsServer } from '../helpers/servers.ts';
import { stack } from '../helpers/stack.ts';

const SUITE = { timeout: 180_000 };
const RUN = randomBytes(3).toString('hex');
const ID = `registry-${RUN}`;
const IMAGE_A = `sha256:${'a'.repeat(64)}`;
const IMAGE_B = `sha256:${'b'.repeat(64)}`;
const silent = createLogger({ level: 'silent' });

const admin = testKey(`reg-admin-${RUN}`);
const ops = testKey(`reg-ops-${RUN}`);
const webOps = testKey(`reg-web-${RUN}`);
const prodOps = testKey(`reg-prod-${RUN}`);
const reader = testKey(`reg-read-${RUN}`);
const TRUST = trustFile([
  { key: admin, role: 'admin' }, { key: ops }, { key: webOps, services: ['web'] }, { key: prodOps, hosts: ['env=prod'] }, { key: reader, role: 'read' },
]);

function registration(id: string, labels: Record<string, string>, url = `http://127.0.0.1:1/${id}`): Record<string, unknown> {
  return { ...hostRegistration(id, labels), url, capabilities: ['resumable'] };
}

/** A desired record as the sender's RegistryClient sends it: env values replaced by their digests. */
function desiredRecord(deploymentId: string, targetUrl: string, env: Record<string, string> = { A: '1' }): Record<string, unknown> {
  return {
    deploymentId, image: 'demo:1', imageId: IMAGE_A, configHash: 'sha256:c1', targetUrl,
    service: { name: 'web', env: envDigests(env, ops.privateKey), ports: ['8080:80'] },
  };
}

function signerOf(key: TestKey, audience = ID): Signer {
  return { keyId: key.keyId, privateKey: key.privateKey, audience };
}

function eventSigner(host: Signer): EventSigner {
  return { keyId: host.keyId, sign: (message) => signBytes(host.privateKey, message) };
}

function code(answer: Answer): string | undefined {
  return (answer.body.error as { code?: string } | undefined)?.code;
}

class Watcher {
  readonly events: FerryEvent[] = [];
  constructor(nc: NatsConnection, subject: string) {
    const sub = nc.subscribe(subject);
    void (async () => {
      for await (const m of sub) {
        try {
          this.events.push(m.json<FerryEvent>());
        } catch {
          // not an event (the projection test publishes one such message on purpose)
        }
      }
    })();
  }

  of(type: string, host: string): FerryEvent[] {
    return this.events.filter((e) => e.type === `ferry.${type}` && e.data.host === host);
  }
}

describe('registry', SUITE, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let watcher: Watcher;
  let registry: RunningRegistry;
  let dataDir: string;
  const closers: (() => Promise<unknown>)[] = [];

  const env = (extra: Record<string, string> = {}): Record<string, string> => ({
    FERRY_TRUST_FILE: TRUST, FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: ID,
    FERRY_NATS_URL: nats.url, FERRY_DATA_DIR: mkdtempSync(join(dataDir, 'r-')), FERRY_HOST_TTL_SECONDS: '2', FERRY_LOG_LEVEL: 'error', ...extra,
  });
  const as = (key: TestKey | Signer) => (method: string, path: string, body?: unknown): Promise<Answer> =>
    signedCall(registry.url, 'audience' in key ? key : signerOf(key), method, path, body);
  const api = as(ops);
  const read = as(reader);

  before(async () => {
    // A private nats-server: the projection replays the whole stream, which must hold only this test's events.
    nats = await NatsServer.create();
    await nats.start();
    nc = await connect({ servers: nats.url });
    watcher = new Watcher(nc, 'ferry.events.>');
    dataDir = mkdtempSync(join(tmpdir(), 'fx-registry-'));
    registry = await startRegistry(env(), { logger: silent });
  });

  after(async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    await registry?.close();
    await nc?.close();
    await nats?.dispose();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('enrolls hosts with a one-time join token; they register and heartbeat with their own key and are listed by label selector', async () => {
    const web = `web-${RUN}`;
    const db = `db-${RUN}`;
    const webKey = await enrolledHost(registry.url, signerOf(admin), web, { env: 'prod', role: 'web' }, registration(web, { env: 'prod', role: 'web' }));
    const dbKey = await enrolledHost(registry.url, signerOf(admin), db, { env: 'prod', role: 'db' }, registration(db, { env: 'prod', role: 'db' }));
    const first = await as(webKey)('POST', '/v1/hosts', registration(web, { env: 'prod', role: 'web' }));
    assert.equal(first.status, 200, JSON.stringify(first.body));
    const record = first.body.host as { status: string; hostKey: string };
    assert.equal(record.status, 'online');
    assert.match(record.hostKey, /^SHA256:/);
    assert.equal(first.body.ttlSeconds, 2);
    assert.ok(typeof first.body.heartbeatSeconds === 'number' && first.body.heartbeatSeconds >= 1);
    assert.deepEqual((await as(dbKey)('POST', `/v1/hosts/${db}/heartbeat`, {})).body, { ok: true });

    const selected = await read('GET', '/v1/hosts?selector=env=prod,role=web&status=online');
    assert.deepEqual((selected.body.hosts as { id: string }[]).map((h) => h.id), [web]);
    const notWeb = await read('GET', '/v1/hosts?selector=role!=web');
    assert.ok((notWeb.body.hosts as { id: string }[]).some((h) => h.id === db));
    assert.ok(!(notWeb.body.hosts as { id: string }[]).some((h) => h.id === web));
    await until(() => (watcher.of('host.registered', web).length > 0 ? true : undefined));
    const event = watcher.of('host.registered', web)[0];
    assert.equal(event?.subject, '_host');
  });

  it('a join token is for one host, used once, and only an admin key gets one; the enrollment proves the key it brings', async () => {
    const id = `enr-${RUN}`;
    const refused = await api('POST', '/v1/join-tokens', { host: id });
    assert.deepEqual([refused.status, code(refused)], [403, 'FERRY_ERR_NOT_GRANTED'], 'a deploy key gets no token');
    const token = await joinToken(registry.url, signerOf(admin), id);
    const key = generateKeyPair().privateKey;

    // For another host id than it was issued for.
    const elsewhere = await enroll(registry.url, ID, token, key, registration(`other-${RUN}`, {}));
    assert.deepEqual([elsewhere.status, code(elsewhere)], [401, 'FERRY_ERR_JOIN_TOKEN_INVALID']);
    // Signed by another key than the one presented: no proof of possession; the token stays usable.
    const text = JSON.stringify({ token, publicKey: publicKeyText(key), registration: registration(id, {}) });
    const forged = await fetch(`${registry.url}/v1/enroll`, {
      method: 'POST', body: text,
      headers: { ...signRequest({ method: 'POST', path: '/v1/enroll', contentDigest: digestOf(text), keyId: hostKeyId(id), privateKey: generateKeyPair().privateKey, audience: ID }), 'content-type': 'application/json' },
    });
    assert.equal(forged.status, 401);
    assert.equal(((await forged.json()) as { error: { code: string } }).error.code, 'FERRY_ERR_BAD_SIGNATURE');

    const enrolled = await enroll(registry.url, ID, token, key, registration(id, {}));
    assert.equal(enrolled.status, 200, JSON.stringify(enrolled.body));
    const again = await enroll(registry.url, ID, token, generateKeyPair().privateKey, registration(id, {}));
    assert.deepEqual([again.status, code(again)], [401, 'FERRY_ERR_JOIN_TOKEN_INVALID'], 'used once');

    // Another key for an enrolled host needs a token issued with replace.
    const plain = await joinToken(registry.url, signerOf(admin), id);
    const newKey = generateKeyPair().privateKey;
    const taken = await enroll(registry.url, ID, plain, newKey, registration(id, {}));
    assert.deepEqual([taken.status, code(taken)], [409, 'FERRY_ERR_HOST_ENROLLED']);
    const replace = await joinToken(registry.url, signerOf(admin), id, { replace: true });
    assert.equal((await enroll(registry.url, ID, replace, newKey, registration(id, {}))).status, 200);
    const oldKey = { keyId: hostKeyId(id), privateKey: key, audience: ID };
    assert.deepEqual(code(await as(oldKey)('POST', `/v1/hosts/${id}/heartbeat`, {})), 'FERRY_ERR_BAD_SIGNATURE', 'the replaced key is refused');
    assert.equal((await as({ ...oldKey, privateKey: newKey })('POST', `/v1/hosts/${id}/heartbeat`, {})).status, 200);
  });

  it('a host key writes its own record only, and nothing else: no desired state, no reads, no other host', async () => {
    const mine = `own-${RUN}`;
    const other = `oth-${RUN}`;
    const hostKey = await enrolledHost(registry.url, signerOf(admin), mine);
    await enrolledHost(registry.url, signerOf(admin), other);
    const host = as(hostKey);
    const cases: [string, Answer, number, string][] = [
      ['register another id', await host('POST', '/v1/hosts', registration(other, {})), 403, 'FERRY_ERR_NOT_GRANTED'],
      ['heartbeat for another id', await host('POST', `/v1/hosts/${other}/heartbeat`, {}), 403, 'FERRY_ERR_NOT_GRANTED'],
      ['desired state, even its own', await host('PUT', `/v1/desired/${mine}/web`, desiredRecord(randomUUID(), 'http://127.0.0.1:1/x')), 403, 'FERRY_ERR_NOT_GRANTED'],
      ['reads', await host('GET', '/v1/services'), 403, 'FERRY_ERR_NOT_GRANTED'],
      ['a join token', await host('POST', '/v1/join-tokens', { host: mine }), 403, 'FERRY_ERR_NOT_GRANTED'],
      ['a deploy key registering a host', await api('POST', '/v1/hosts', registration(`x-${RUN}`, {})), 403, 'FERRY_ERR_NOT_GRANTED'],
      ['a read key writing desired state', await read('PUT', `/v1/desired/${mine}/web`, desiredRecord(randomUUID(), 'http://127.0.0.1:1/x')), 403, 'FERRY_ERR_NOT_GRANTED'],
      ['a web-only key writing db', await as(webOps)('PUT', `/v1/desired/${mine}/db`, desiredRecord(randomUUID(), 'http://127.0.0.1:1/x')), 403, 'FERRY_ERR_NOT_GRANTED'],
      ['a prod-only key writing for a host without env=prod', await as(prodOps)('PUT', `/v1/desired/${mine}/web`, desiredRecord(randomUUID(), 'http://127.0.0.1:1/x')), 403, 'FERRY_ERR_NOT_GRANTED'],
    ];
    for (const [name, answer, status, errorCode] of cases) assert.deepEqual([answer.status, code(answer)], [status, errorCode], `${name}: ${JSON.stringify(answer.body)}`);
    assert.equal((await host('POST', `/v1/hosts/${mine}/heartbeat`, {})).status, 200);
    assert.equal((await as(webOps)('PUT', `/v1/desired/${mine}/web`, desiredRecord(randomUUID(), 'http://127.0.0.1:1/x'))).status, 200);
    const prodHost = `prod-${RUN}`;
    await enrolledHost(registry.url, signerOf(admin), prodHost, { env: 'prod' });
    assert.equal((await as(prodOps)('PUT', `/v1/desired/${prodHost}/web`, desiredRecord(randomUUID(), 'http://127.0.0.1:1/x'))).status, 200, 'labels from the host\'s record');
  });

  it('desired state holds no env value: values are refused, digests are what is listed', async () => {
    const host = `env-${RUN}`;
    const values = { ...desiredRecord(randomUUID(), 'http://127.0.0.1:1/x'), service: { name: 'web', env: { DB_PASSWORD: 'hunter2-secret' } } };
    const refused = await api('PUT', `/v1/desired/${host}/web`, values);
    assert.deepEqual([refused.status, code(refused)], [400, 'FERRY_ERR_BAD_REQUEST']);
    assert.doesNotMatch(JSON.stringify(refused.body), /hunter2/, 'the refusal does not echo the value');
    assert.match(JSON.stringify(refused.body), /DB_PASSWORD/);
    assert.equal((await api('PUT', `/v1/desired/${host}/web`, desiredRecord(randomUUID(), 'http://127.0.0.1:1/x', { DB_PASSWORD: 'hunter2-secret' }))).status, 200);
    const listed = JSON.stringify([(await read('GET', `/v1/services?host=${host}`)).body, (await read('GET', '/v1/drift')).body]);
    assert.doesNotMatch(listed, /hunter2/);
    assert.match(listed, /"DB_PASSWORD":"hmac-sha256:[0-9a-f]{64}"/);
  });

  it('refuses unsigned and wrongly signed requests', async () => {
    const unsigned = await fetch(`${registry.url}/v1/hosts`);
    assert.equal(unsigned.status, 401);
    const wrongAudience = await signedCall(registry.url, signerOf(ops, 'someone-else'), 'GET', '/v1/hosts');
    assert.equal(wrongAudience.status, 401);
    const health = await (await fetch(`${registry.url}/healthz`)).json() as { host: string };
    assert.equal(health.host, ID);
  });

  it('row 31: a host that stops heartbeating is lost after its TTL (once), its heartbeat gets 404, and it comes back by registering', async () => {
    const id = `quiet-${RUN}`;
    const host = as(await enrolledHost(registry.url, signerOf(admin), id, { env: 'test' }));
    // No more heartbeats: the registry's timer marks it lost.
    await until(async () => {
      const hosts = (await read('GET', '/v1/hosts?status=lost')).body.hosts as { id: string }[];
      return hosts.some((h) => h.id === id) ? true : undefined;
    });
    await until(() => (watcher.of('host.lost', id).length > 0 ? true : undefined));
    const refused = await host('POST', `/v1/hosts/${id}/heartbeat`, { services: [] });
    assert.equal(refused.status, 404);
    assert.equal(code(refused), 'FERRY_ERR_HOST_UNKNOWN');

    const back = await host('POST', '/v1/hosts', hostRegistration(id, { env: 'test' }));
    assert.equal((back.body.host as { status: string }).status, 'online');
    assert.equal((await host('POST', `/v1/hosts/${id}/heartbeat`, {})).status, 200);
    await until(() => (watcher.of('host.registered', id).length >= 2 ? true : undefined));
    // Lost once: the sweeps that ran while it was lost published nothing more.
    assert.equal(watcher.of('host.lost', id).length, 1);
  });

  it('desired and reported actual differ: one drift.detected per episode, shown in /v1/services and /v1/drift', async () => {
    const host = `drift-${RUN}`;
    const service = 'web';
    const beat = as(await enrolledHost(registry.url, signerOf(admin), host));
    const deploymentId = randomUUID();
    const put = await api('PUT', `/v1/desired/${host}/${service}`, desiredRecord(deploymentId, `http://127.0.0.1:1/${host}`));
    assert.equal(put.status, 200, JSON.stringify(put.body));
    const running = (imageId: string, configHash = 'sha256:c1'): Record<string, unknown> => ({
      services: [{ service, containerId: 'c0ffee', imageId, image: 'demo:1', configHash, deploymentId, state: 'running' }],
    });
    assert.equal((await beat('POST', `/v1/hosts/${host}/heartbeat`, running(IMAGE_A))).status, 200);
    assert.ok(!((await read('GET', '/v1/drift')).body.drift as ServiceState[]).some((s) => s.host === host));

    // Someone replaced the container by hand: another image, and later another config too.
    await beat('POST', `/v1/hosts/${host}/heartbeat`, running(IMAGE_B));
    await beat('POST', `/v1/hosts/${host}/heartbeat`, running(IMAGE_B, 'sha256:c2'));
    const detected = await until(() => watcher.of('drift.detected', host)[0]);
    assert.equal(detected.deploymentid, deploymentId);
    assert.equal(detected.subject, service);
    const drifted = ((await read('GET', '/v1/drift')).body.drift as ServiceState[]).find((s) => s.host === host);
    assert.ok(drifted?.drift);
    assert.equal(drifted.drift.mode, 'warn');
    assert.deepEqual(drifted.drift.reasons.map((r) => r.field), ['imageId', 'configHash']);
    const listed = ((await read('GET', `/v1/services?host=${host}`)).body.services as ServiceState[])[0];
    assert.equal(listed?.actual?.imageId, IMAGE_B);
    assert.equal(listed?.desired?.imageId, IMAGE_A);
    assert.equal(listed?.desired?.recordedBy, ops.keyId);

    // Back to the desired state ends the episode; a new difference is a new episode and a new event.
    await beat('POST', `/v1/hosts/${host}/heartbeat`, running(IMAGE_A));
    assert.ok(!((await read('GET', '/v1/drift')).body.drift as ServiceState[]).some((s) => s.host === host));
    await beat('POST', `/v1/hosts/${host}/heartbeat`, { services: [] });
    const second = await until(() => watcher.of('drift.detected', host)[1]);
    assert.deepEqual((second.data as unknown as { reasons: { field: string }[] }).reasons.map((r) => r.field), ['missing']);
    // Both are in the stream: each episode was published once.
    await sleep(200);
    assert.equal(watcher.of('drift.detected', host).length, 2);
  });

  it('row 37: events change the view only when the host they name signed them; a future time is moved back to arrival', async () => {
    const host = `ev-${RUN}`;
    const service = 'api';
    const hostKey = await enrolledHost(registry.url, signerOf(admin), host);
    const js = nc.jetstream();
    const base = { source: `ferry://receiver/${host}`, host, service, deploymentId: randomUUID() };
    const completed = (): FerryEvent => createEvent('deployment.completed', { ...base, data: { image: 'api:666', imageId: IMAGE_B, timings: {} } });
    const subject = eventSubject(host, service, 'deployment.completed');
    // Straight to NATS, as anyone who may publish there could: valid shape, no signature; signed by
    // a key of its own under the host's key id; signed by another enrolled host.
    const other = await enrolledHost(registry.url, signerOf(admin), `evo-${RUN}`);
    const forgeries = [
      new TextEncoder().encode(JSON.stringify(completed())),
      signedEventPayload(completed(), { keyId: hostKeyId(host), sign: (m) => signBytes(generateKeyPair().privateKey, m) }),
      signedEventPayload(completed(), eventSigner(other)),
    ];
    let last = 0;
    for (const payload of forgeries) last = (await js.publish(subject, payload)).seq;
    await until(() => (registry.registry.checkpoint >= last ? true : undefined));
    const history = async (): Promise<HistoryEntry[]> => (await read('GET', `/v1/services/${service}/history`)).body.history as HistoryEntry[];
    assert.deepEqual((await history()).filter((h) => h.host === host), [], 'no forged event in the history');
    assert.equal(((await read('GET', `/v1/services?host=${host}`)).body.services as ServiceState[]).length, 0, 'nor in the actual state');
    const dropped = ((await (await fetch(`${registry.url}/readyz`)).json()) as { checks: { projection: { dropped: Record<string, number> } } }).checks.projection.dropped;
    assert.ok((dropped.unsigned ?? 0) >= 1 && (dropped['bad-signature'] ?? 0) >= 2, JSON.stringify(dropped));

    // Signed by the host itself, dated in 2099: believed, at the time it reached the stream.
    const future = { ...completed(), time: '2099-01-01T00:00:00.000Z' } as FerryEvent;
    const before = Date.now();
    const publisher = await JetStreamPublisher.connect({ url: nats.url, logger: silent, signer: eventSigner(hostKey) });
    closers.push(() => publisher.close());
    publisher.publish(future);
    await publisher.flush();
    const entry = await until(async () => (await history()).find((h) => h.id === future.id));
    assert.ok(Date.parse(entry.time) >= before - 1000 && Date.parse(entry.time) <= Date.now(), entry.time);
    const state = ((await read('GET', `/v1/services?host=${host}&service=${service}`)).body.services as ServiceState[])[0];
    assert.equal(state?.actual?.imageId, IMAGE_B);
    assert.equal(state?.actual?.reportedAt, entry.time);
  });

  it('builds history and deployments from the stream, ignores a duplicate event, and a rebuild gives the identical state', async () => {
    const host = `proj-${RUN}`;
    const service = 'api';
    const hostKey = await enrolledHost(registry.url, signerOf(admin), host);
    const signer = eventSigner(hostKey);
    const publisher = await JetStreamPublisher.connect({ url: nats.url, logger: silent, signer });
    closers.push(() => publisher.close());
    const deploymentId = randomUUID();
    const base = { source: `ferry://receiver/${host}`, host, service, deploymentId };
    const events: FerryEvent[] = [
      createEvent('package.verified', { ...base, data: { image: 'api:2', digest: `blake3:${'0'.repeat(64)}`, bytes: 10, durationMs: 1 } }),
      createEvent('image.loaded', { ...base, data: { image: 'api:2', imageId: IMAGE_B, durationMs: 2 } }),
      createEvent('container.started', { ...base, data: { image: 'api:2', imageId: IMAGE_B, containerId: 'abc123', durationMs: 3 } }),
      createEvent('deployment.completed', { ...base, data: { image: 'api:2', imageId: IMAGE_B, timings: { receiveMs: 1, loadMs: 2, deployMs: 3, healthMs: 0, totalMs: 6 } as never } }),
    ];
    for (const event of events) publisher.publish(event);
    await publisher.flush();
    const deployed = await until(async () => {
      const list = (await read('GET', '/v1/deployments?limit=100')).body.deployments as { deploymentId: string; state: string }[];
      return list.find((d) => d.deploymentId === deploymentId && d.state === 'succeeded');
    });
    assert.equal((deployed as { containerId?: string }).containerId, 'abc123');
    const state = ((await read('GET', `/v1/services?host=${host}&service=${service}`)).body.services as ServiceState[])[0];
    assert.equal(state?.actual?.imageId, IMAGE_B);
    assert.equal(state?.actual?.source, 'events');
    assert.equal(state?.lastDeployment?.state, 'succeeded');

    // The same signed event once more (a resend beyond the duplicate window): a new stream message, same id.
    const js = nc.jetstream();
    const again = events[1];
    assert.ok(again);
    await js.publish(`ferry.events.${host}.${service}.image.loaded`, signedEventPayload(again, signer));
    const marker = createEvent('healthcheck.passed', { ...base, deploymentId: randomUUID(), data: { attempts: 1, durationMs: 1 } });
    publisher.publish(marker);
    await publisher.flush();
    await until(async () => {
      const history = (await read('GET', `/v1/services/${service}/history`)).body.history as { id: string }[];
      return history.some((h) => h.id === marker.id) ? true : undefined;
    });
    // Something that is not a Ferry event, last in the stream: skipped, and a rebuild still ends.
    const junk = await js.publish(`ferry.events.${host}.${service}.junk`, 'not an event');
    await until(() => (registry.registry.checkpoint >= junk.seq ? true : undefined));
    // The stream must be still for a snapshot to compare: once every host of the earlier tests is
    // lost (TTL 2 s) the registry publishes nothing more, and the projection has caught up with it.
    // A host turns lost before its host.lost event is in the stream: wait for the event of each.
    await until(async () => {
      const hosts = (await read('GET', '/v1/hosts')).body.hosts as { id: string; status: string; lastSeenAt: string }[];
      if (hosts.some((h) => h.status === 'online')) return undefined;
      const lost = ((await read('GET', '/v1/services/_host/history')).body.history as { type: string; host: string; data?: { lastSeenAt?: string } }[])
        .filter((h) => h.type === 'host.lost');
      return hosts.every((h) => lost.some((e) => e.host === h.id && e.data?.lastSeenAt === h.lastSeenAt)) ? true : undefined;
    });
    const lastSeq = (await (await nc.jetstreamManager()).streams.info('FERRY_EVENTS')).state.last_seq;
    await until(() => (registry.registry.checkpoint >= lastSeq ? true : undefined));
    const snapshot = async (): Promise<unknown> => ({
      services: (await read('GET', '/v1/services')).body.services,
      deployments: (await read('GET', '/v1/deployments?limit=1000')).body.deployments,
      history: (await read('GET', `/v1/services/${service}/history`)).body.history,
      hostHistory: (await read('GET', '/v1/services/_host/history')).body.history,
      projection: registry.registry.projectionData(),
    });
    const before = await snapshot();
    const history = (before as { history: { id: string }[] }).history;
    assert.equal(history.filter((h) => h.id === again.id).length, 1, 'the duplicate was not applied twice');
    assert.equal(history[0]?.id, marker.id, 'newest first');

    const refused = await api('POST', '/v1/projection/rebuild');
    assert.deepEqual([refused.status, code(refused)], [403, 'FERRY_ERR_NOT_GRANTED'], 'a rebuild takes an admin key');
    const rebuilt = await as(admin)('POST', '/v1/projection/rebuild');
    assert.equal(rebuilt.status, 200, JSON.stringify(rebuilt.body));
    assert.ok(typeof rebuilt.body.events === 'number' && rebuilt.body.events >= events.length + 1);
    assert.deepEqual(await snapshot(), before);
  });

  it('restarted with its Redis store, the projection resumes after its checkpoint and the enrolled keys are still known', async () => {
    // The stack's Redis, under this run's own key prefix (removed afterwards).
    const id = `registry3-${RUN}`;
    const redisUrl = stack().redisUrl;
    closers.push(async () => {
      const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
      for (const pattern of [`ferry:registry:${id}:*`, `ferry:nonce:${id}:*`]) {
        const keys = await client.keys(pattern);
        if (keys.length > 0) await client.del(...keys);
      }
      client.disconnect();
    });
    const settings = env({ FERRY_HOST_ID: id, FERRY_REDIS_URL: redisUrl, FERRY_HOST_TTL_SECONDS: '60' });
    const service = `svc${RUN}`;
    const hostId = `h-${RUN}`;
    let running = await startRegistry(settings, { logger: silent });
    const hostKey = await enrolledHost(running.url, signerOf(admin, id), hostId);
    const publisher = await JetStreamPublisher.connect({ url: nats.url, logger: silent, signer: eventSigner(hostKey) });
    closers.push(() => publisher.close());
    const publish = async (n: number): Promise<string[]> => {
      const ids: string[] = [];
      for (let i = 0; i < n; i++) {
        const event = createEvent('healthcheck.passed', { source: `ferry://receiver/${hostId}`, host: hostId, service, deploymentId: randomUUID(), data: { attempts: 1, durationMs: i } });
        ids.push(event.id);
        publisher.publish(event);
      }
      await publisher.flush();
      return ids;
    };
    const historyIds = async (r: RunningRegistry): Promise<string[]> =>
      ((await signedCall(r.url, signerOf(reader, id), 'GET', `/v1/services/${service}/history`)).body.history as { id: string }[]).map((h) => h.id);

    const first = await publish(3);
    await until(async () => ((await historyIds(running)).length === 3 ? true : undefined));
    await running.close();
    const second = await publish(2);
    running = await startRegistry(settings, { logger: silent });
    closers.push(() => running.close());
    const ids = await until(async () => {
      const list = await historyIds(running);
      return list.length >= 5 ? list : undefined;
    });
    assert.deepEqual([...ids].sort(), [...first, ...second].sort());
    // The host's key came back from Redis with the rest: it heartbeats as before.
    assert.equal((await signedCall(running.url, hostKey, 'POST', `/v1/hosts/${hostId}/heartbeat`, {})).status, 200);
    // What it resumed to is what a replay from the start gives.
    const resumed = running.registry.projectionData();
    assert.equal((await signedCall(running.url, signerOf(admin, id), 'POST', '/v1/projection/rebuild')).status, 200);
    assert.deepEqual(running.registry.projectionData(), resumed);
  });

  it('without Redis, enrolled keys outlive a restart (data directory), and FERRY_MAX_HOSTS bounds the hosts it takes', async () => {
    const id = `registry4-${RUN}`;
    const settings = env({ FERRY_HOST_ID: id, FERRY_MAX_HOSTS: '2', FERRY_HOST_TTL_SECONDS: '60' });
    let running = await startRegistry(settings, { logger: silent });
    const a = await enrolledHost(running.url, signerOf(admin, id), `ma-${RUN}`);
    await enrolledHost(running.url, signerOf(admin, id), `mb-${RUN}`);
    const token = await joinToken(running.url, signerOf(admin, id), `mc-${RUN}`);
    const full = await enroll(running.url, id, token, generateKeyPair().privateKey, hostRegistration(`mc-${RUN}`));
    assert.deepEqual([full.status, code(full)], [409, 'FERRY_ERR_REGISTRY_LIMIT']);
    await running.close();
    running = await startRegistry(settings, { logger: silent });
    closers.push(() => running.close());
    const host = (method: string, path: string, body?: unknown): Promise<Answer> => signedCall(running.url, { ...a, audience: id }, method, path, body);
    // The registry forgot the host (memory) but not its key: the receiver's answer to 404 works.
    assert.equal(code(await host('POST', `/v1/hosts/ma-${RUN}/heartbeat`, {})), 'FERRY_ERR_HOST_UNKNOWN');
    assert.equal((await host('POST', '/v1/hosts', hostRegistration(`ma-${RUN}`))).status, 200);
    assert.equal((await host('POST', `/v1/hosts/ma-${RUN}/heartbeat`, {})).status, 200);
  });

  it('correct mode asks the drifted host, at its own registered URL, to reconcile, signed with a read key; a desired record\'s URL is never dialled', async () => {
    const registryKey = testKey(`reg-self-${RUN}`);
    const hostId = `fix-${RUN}`;
    const hostKey = generateKeyPair().privateKey;
    // A real HTTP server standing in for the receiver (its contract: GET /v1/identity, POST
    // /v1/services/:name/reconcile); the whole loop with a real receiver is the end-to-end test.
    const verifier = new RequestVerifier({
      trust: new TrustStore({ data: trustDocument([{ key: registryKey, role: 'read' }]) }), nonces: new MemoryNonceStore(), audience: hostId, startedAt: 0, subject: { id: hostId, labels: {} },
    });
    const received: { path: string; verified: boolean }[] = [];
    let answer: { status: number; body: unknown } = { status: 200, body: { service: 'web', action: 'started', containerId: 'c1', deploymentId: 'd1' } };
    const receiver = await listen(closers, (req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/v1/identity') {
        const challenge = url.searchParams.get('challenge');
        if (!isChallenge(challenge)) return json(res, 400, {});
        return json(res, 200, { identity: signIdentity({ keyId: hostKeyId(hostId), privateKey: hostKey }, { host: hostId, version: 'test' }, challenge) });
      }
      void verifier.verify({ method: req.method ?? '', path: req.url ?? '', headers: req.headers }).then(() => true, () => false).then((verified) => {
        received.push({ path: url.pathname, verified });
        json(res, answer.status, answer.body);
      });
    });
    // Where the desired record says the deployment went: nobody may come here.
    const trap: string[] = [];
    const decoy = await listen(closers, (req, res) => {
      trap.push(`${req.method ?? ''} ${req.url ?? ''}`);
      json(res, 200, {});
    });
    const correcting = await startRegistry(env({
      FERRY_HOST_ID: `registry2-${RUN}`, FERRY_DRIFT_MODE: 'correct', FERRY_KEY_ID: registryKey.keyId, FERRY_KEY_FILE: registryKey.file,
      FERRY_HOST_TTL_SECONDS: '3', FERRY_DRIFT_IGNORE: 'configHash',
    }), { logger: silent });
    closers.push(() => correcting.close());
    const audience = `registry2-${RUN}`;
    const token = await joinToken(correcting.url, signerOf(admin, audience), hostId);
    assert.equal((await enroll(correcting.url, audience, token, hostKey, registration(hostId, {}, receiver.url))).status, 200);
    const beat = (body: unknown): Promise<Answer> => signedCall(correcting.url, { keyId: hostKeyId(hostId), privateKey: hostKey, audience }, 'POST', `/v1/hosts/${hostId}/heartbeat`, body);
    const ops2 = (method: string, path: string, body?: unknown): Promise<Answer> => signedCall(correcting.url, signerOf(ops, audience), method, path, body);
    assert.equal((await ops2('PUT', `/v1/desired/${hostId}/web`, desiredRecord(randomUUID(), decoy.url))).status, 200);
    // The config hash differs too, but FERRY_DRIFT_IGNORE leaves it out.
    const report = { services: [{ service: 'web', imageId: IMAGE_A, configHash: 'sha256:other', state: 'exited' }] };
    const corrected = await until(async () => {
      await beat(report);
      const s = ((await ops2('GET', '/v1/drift')).body.drift as ServiceState[]).find((d) => d.host === hostId);
      return s?.drift?.correction?.outcome === 'accepted' ? s : undefined;
    });
    assert.deepEqual(corrected.drift?.reasons.map((r) => r.field), ['state']);
    // More heartbeats of the same drift ask nothing more.
    for (let i = 0; i < 3; i++) await beat(report);
    assert.deepEqual(received, [{ path: '/v1/services/web/reconcile', verified: true }]);
    assert.deepEqual(corrected.drift?.correction?.response, answer.body);
    assert.deepEqual(trap, [], 'the desired record\'s targetUrl was never contacted');

    // A host that cannot reconcile says so; the drift stays, with the reason.
    answer = { status: 409, body: { error: { code: 'FERRY_ERR_NOT_RECONCILABLE', message: 'web: no container', details: { service: 'web' } } } };
    await beat({ services: [{ service: 'web', imageId: IMAGE_A, configHash: 'sha256:c1', state: 'running' }] });
    const failed = await until(async () => {
      await beat({ services: [] });
      const s = ((await ops2('GET', '/v1/drift')).body.drift as ServiceState[]).find((d) => d.host === hostId);
      return s?.drift?.correction?.outcome === 'failed' ? s : undefined;
    });
    assert.equal(failed.drift?.correction?.error?.code, 'FERRY_ERR_NOT_RECONCILABLE');
    assert.deepEqual(failed.drift?.reasons.map((r) => r.field), ['missing']);
    assert.deepEqual(trap, []);
  });

  it('bad input answers a typed 4xx, never a 500, and changes nothing', async () => {
    const host = `bad-${RUN}`;
    const hostKey = await enrolledHost(registry.url, signerOf(admin), host);
    const raw = async (signer: Signer, method: string, path: string, text: string, type = 'application/json'): Promise<Answer> => {
      const headers: Record<string, string> = { ...signRequest({ method, path, contentDigest: digestOf(text), keyId: signer.keyId, privateKey: signer.privateKey, audience: ID }), 'content-type': type };
      const response = await fetch(`${registry.url}${path}`, { method, headers, ...(method === 'GET' ? {} : { body: text }) });
      return { status: response.status, body: await response.json() as Record<string, unknown> };
    };
    const desired = desiredRecord(randomUUID(), 'http://127.0.0.1:1/x');
    // Hosts may go lost by their TTL meanwhile: what must not change is which hosts and services exist.
    const snapshot = async (): Promise<string[]> => [
      ...((await read('GET', '/v1/hosts')).body.hosts as { id: string; labels: Record<string, string> }[]).map((h) => `${h.id}:${JSON.stringify(h.labels)}`),
      ...((await read('GET', '/v1/services')).body.services as ServiceState[]).map((s) => `${s.host}/${s.service}`),
    ].sort();
    const unchanged = await snapshot();
    const manyLabels = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']));
    const O = signerOf(ops);
    const H = hostKey;
    const cases: [string, Signer, string, string, string, number, string][] = [
      ['malformed JSON', H, 'POST', '/v1/hosts', '{"id":', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['JSON null', H, 'POST', '/v1/hosts', 'null', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['wrong types', H, 'POST', '/v1/hosts', JSON.stringify({ ...hostRegistration(host), id: 5, labels: [] }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['bad host id', H, 'POST', '/v1/hosts', JSON.stringify(hostRegistration('../etc')), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['__proto__ host id', H, 'POST', '/v1/hosts', JSON.stringify(hostRegistration('__proto__')), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['65 labels', H, 'POST', '/v1/hosts', JSON.stringify(hostRegistration(host, manyLabels)), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['a long label key', H, 'POST', '/v1/hosts', JSON.stringify(hostRegistration(host, { ['k'.repeat(64)]: 'v' })), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['a long label value', H, 'POST', '/v1/hosts', JSON.stringify(hostRegistration(host, { k: 'v'.repeat(257) })), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['a __proto__ label key', H, 'POST', '/v1/hosts', `{"id":"${host}","url":"http://127.0.0.1:1/x","version":"1","engine":{"version":"1","storageDriver":"o","imageStore":"legacy"},"labels":{"__proto__":{"x":1}}}`, 400, 'FERRY_ERR_BAD_REQUEST'],
      ['oversize body', H, 'POST', '/v1/hosts', JSON.stringify({ pad: 'a'.repeat(300 * 1024) }), 413, 'FERRY_ERR_PAYLOAD_TOO_LARGE'],
      ['heartbeat wrong types', H, 'POST', `/v1/hosts/${host}/heartbeat`, JSON.stringify({ services: { web: 1 } }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['heartbeat bad service', H, 'POST', `/v1/hosts/${host}/heartbeat`, JSON.stringify({ services: [{ service: '../x', state: 'running' }] }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['heartbeat __proto__ service', H, 'POST', `/v1/hosts/${host}/heartbeat`, JSON.stringify({ services: [{ service: '__proto__', state: 'running' }] }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['heartbeat for another id', H, 'POST', '/v1/hosts/no%20such/heartbeat', '{}', 403, 'FERRY_ERR_NOT_GRANTED'],
      ['heartbeat undecodable id', H, 'POST', '/v1/hosts/%ZZ/heartbeat', '{}', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired bad host', O, 'PUT', '/v1/desired/a%20b/web', JSON.stringify(desired), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired __proto__ host', O, 'PUT', '/v1/desired/__proto__/web', JSON.stringify(desired), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired bad service', O, 'PUT', `/v1/desired/${host}/Web!`, JSON.stringify(desired), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired wrong types', O, 'PUT', `/v1/desired/${host}/web`, JSON.stringify({ ...desired, service: 'web' }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired env as a list', O, 'PUT', `/v1/desired/${host}/web`, JSON.stringify({ ...desired, service: { name: 'web', env: ['A=1'] } }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired not JSON', O, 'PUT', `/v1/desired/${host}/web`, 'web', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['wrong media type', O, 'PUT', `/v1/desired/${host}/web`, JSON.stringify(desired), 415, 'FERRY_ERR_UNSUPPORTED_MEDIA_TYPE'],
      ['selector without operator', O, 'GET', '/v1/hosts?selector=env', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['selector without key', O, 'GET', '/v1/hosts?selector=%3Dprod', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['selector unknown operator', O, 'GET', '/v1/hosts?selector=env~prod', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['selector twice', O, 'GET', '/v1/hosts?selector=a%3Db&selector=c%3Dd', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['unknown status', O, 'GET', '/v1/hosts?status=gone', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['services filter twice', O, 'GET', '/v1/services?host=a&host=b', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['__proto__ history', O, 'GET', '/v1/services/__proto__/history', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['join token for __proto__', signerOf(admin), 'POST', '/v1/join-tokens', JSON.stringify({ host: '__proto__' }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['join token with an unknown field', signerOf(admin), 'POST', '/v1/join-tokens', JSON.stringify({ host: 'x', role: 'admin' }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['rebuild with a body', signerOf(admin), 'POST', '/v1/projection/rebuild', '{}', 400, 'FERRY_ERR_BAD_REQUEST'],
    ];
    for (const [name, signer, method, path, text, status, errorCode] of cases) {
      const answer = await raw(signer, method, path, text, name === 'wrong media type' ? 'text/plain' : 'application/json');
      assert.equal(answer.status, status, `${name}: ${JSON.stringify(answer.body)}`);
      assert.equal(code(answer), errorCode, name);
    }
    // __proto__ is never a label key (protocol.md §2.3); other member names are ordinary keys.
    const selectorProto = await read('GET', '/v1/hosts?selector=__proto__%3Dx');
    assert.equal(selectorProto.status, 400);
    assert.equal(code(selectorProto), 'FERRY_ERR_BAD_REQUEST');
    const selectorMembers = await read('GET', '/v1/hosts?selector=constructor%3Dx,toString!%3Dy');
    assert.equal(selectorMembers.status, 200);
    const enrollJunk = await fetch(`${registry.url}/v1/enroll`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"token":1}' });
    assert.equal(enrollJunk.status, 400);
    assert.deepEqual(await snapshot(), unchanged);
  });
});

async function listen(closers: (() => Promise<unknown>)[], handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string; server: Server }> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => new Promise((resolve) => server.close(resolve)));
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, server };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(body));
}
