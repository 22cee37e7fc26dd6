import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { KeyRing, MemoryNonceStore, RequestVerifier, signRequest } from '@ferry/auth';
import { createEvent, JetStreamPublisher, type FerryEvent } from '@ferry/events';
import { digestOf } from '@ferry/integrity';
import { createLogger } from '@ferry/log';
import { startRegistry, type RunningRegistry, type ServiceState } from '@ferry/registry';
import { Redis } from 'ioredis';
import { connect, type NatsConnection } from 'nats';
import { NatsServer } from '../helpers/servers.ts';
import { stack } from '../helpers/stack.ts';

const SUITE = { timeout: 120_000 };
const KEY_ID = 'reg-test';
const SECRET = randomBytes(32).toString('base64url');
const RUN = randomBytes(3).toString('hex');
const IMAGE_A = `sha256:${'a'.repeat(64)}`;
const IMAGE_B = `sha256:${'b'.repeat(64)}`;
const silent = createLogger({ level: 'silent' });

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

/** A signed JSON request to a Ferry service, as any client of docs/protocol.md makes it. */
async function call(base: string, audience: string, method: string, path: string, body?: unknown): Promise<Answer> {
  const text = body === undefined ? '' : JSON.stringify(body);
  const headers: Record<string, string> = signRequest({ method, path, contentDigest: digestOf(text), keyId: KEY_ID, secret: SECRET, audience });
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${base}${path}`, { method, headers, ...(method === 'GET' ? {} : { body: text }) });
  return { status: response.status, body: await response.json() as Record<string, unknown> };
}

/** Polls until `check` returns something; a hang fails by the suite's timeout, never by a clock here. */
async function until<T>(check: () => T | undefined | Promise<T | undefined>): Promise<T> {
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    await sleep(100);
  }
}

function registration(id: string, labels: Record<string, string>): Record<string, unknown> {
  return {
    id, url: `http://127.0.0.1:1/${id}`, labels, capabilities: ['resumable'], version: '0.1.0',
    engine: { version: '28.0.0', storageDriver: 'overlay2', imageStore: 'legacy' },
  };
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
    FERRY_KEYS: `${KEY_ID}:${SECRET}`, FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: `registry-${RUN}`,
    FERRY_NATS_URL: nats.url, FERRY_DATA_DIR: mkdtempSync(join(dataDir, 'r-')), FERRY_HOST_TTL_SECONDS: '2', FERRY_LOG_LEVEL: 'error', ...extra,
  });
  const api = (method: string, path: string, body?: unknown): Promise<Answer> => call(registry.url, `registry-${RUN}`, method, path, body);

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

  it('registers hosts, takes heartbeats and lists them by label selector', async () => {
    const web = `web-${RUN}`;
    const db = `db-${RUN}`;
    const first = await api('POST', '/v1/hosts', registration(web, { env: 'prod', role: 'web' }));
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.equal((first.body.host as { status: string }).status, 'online');
    assert.equal(first.body.ttlSeconds, 2);
    assert.ok(typeof first.body.heartbeatSeconds === 'number' && first.body.heartbeatSeconds >= 1);
    assert.equal((await api('POST', '/v1/hosts', registration(db, { env: 'prod', role: 'db' }))).status, 200);
    assert.deepEqual((await api('POST', `/v1/hosts/${web}/heartbeat`, {})).body, { ok: true });

    const selected = await api('GET', '/v1/hosts?selector=env=prod,role=web&status=online');
    assert.deepEqual((selected.body.hosts as { id: string }[]).map((h) => h.id), [web]);
    const notWeb = await api('GET', '/v1/hosts?selector=role!=web');
    assert.ok((notWeb.body.hosts as { id: string }[]).some((h) => h.id === db));
    assert.ok(!(notWeb.body.hosts as { id: string }[]).some((h) => h.id === web));
    await until(() => (watcher.of('host.registered', web).length > 0 ? true : undefined));
    const event = watcher.of('host.registered', web)[0];
    assert.equal(event?.subject, '_host');
  });

  it('refuses unsigned and wrongly signed requests', async () => {
    const unsigned = await fetch(`${registry.url}/v1/hosts`);
    assert.equal(unsigned.status, 401);
    const wrongAudience = await call(registry.url, 'someone-else', 'GET', '/v1/hosts');
    assert.equal(wrongAudience.status, 401);
    const health = await (await fetch(`${registry.url}/healthz`)).json() as { host: string };
    assert.equal(health.host, `registry-${RUN}`);
  });

  it('row 31: a host that stops heartbeating is lost after its TTL (once), its heartbeat gets 404, and it comes back by registering', async () => {
    const id = `quiet-${RUN}`;
    assert.equal((await api('POST', '/v1/hosts', registration(id, { env: 'test' }))).status, 200);
    // No more heartbeats: the registry's timer marks it lost.
    await until(async () => {
      const hosts = (await api('GET', '/v1/hosts?status=lost')).body.hosts as { id: string }[];
      return hosts.some((h) => h.id === id) ? true : undefined;
    });
    await until(() => (watcher.of('host.lost', id).length > 0 ? true : undefined));
    const refused = await api('POST', `/v1/hosts/${id}/heartbeat`, { services: [] });
    assert.equal(refused.status, 404);
    assert.equal((refused.body.error as { code: string }).code, 'FERRY_ERR_HOST_UNKNOWN');
    assert.equal((await api('POST', '/v1/hosts/never-seen/heartbeat', {})).status, 404);

    const back = await api('POST', '/v1/hosts', registration(id, { env: 'test' }));
    assert.equal((back.body.host as { status: string }).status, 'online');
    assert.equal((await api('POST', `/v1/hosts/${id}/heartbeat`, {})).status, 200);
    await until(() => (watcher.of('host.registered', id).length >= 2 ? true : undefined));
    // Lost once: the sweeps that ran while it was lost published nothing more.
    assert.equal(watcher.of('host.lost', id).length, 1);
  });

  it('desired and reported actual differ: one drift.detected per episode, shown in /v1/services and /v1/drift', async () => {
    const host = `drift-${RUN}`;
    const service = 'web';
    await api('POST', '/v1/hosts', registration(host, {}));
    const deploymentId = randomUUID();
    const put = await api('PUT', `/v1/desired/${host}/${service}`, {
      deploymentId, image: 'demo:1', imageId: IMAGE_A, configHash: 'sha256:c1', targetUrl: `http://127.0.0.1:1/${host}`, service: { name: service, env: {} },
    });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    const running = (imageId: string, configHash = 'sha256:c1'): Record<string, unknown> => ({
      services: [{ service, containerId: 'c0ffee', imageId, image: 'demo:1', configHash, deploymentId, state: 'running' }],
    });
    assert.equal((await api('POST', `/v1/hosts/${host}/heartbeat`, running(IMAGE_A))).status, 200);
    assert.equal((await api('GET', '/v1/drift')).body.drift instanceof Array, true);
    assert.ok(!((await api('GET', '/v1/drift')).body.drift as ServiceState[]).some((s) => s.host === host));

    // Someone replaced the container by hand: another image, and later another config too.
    await api('POST', `/v1/hosts/${host}/heartbeat`, running(IMAGE_B));
    await api('POST', `/v1/hosts/${host}/heartbeat`, running(IMAGE_B, 'sha256:c2'));
    const detected = await until(() => watcher.of('drift.detected', host)[0]);
    assert.equal(detected.deploymentid, deploymentId);
    assert.equal(detected.subject, service);
    const drifted = ((await api('GET', '/v1/drift')).body.drift as ServiceState[]).find((s) => s.host === host);
    assert.ok(drifted?.drift);
    assert.equal(drifted.drift.mode, 'warn');
    assert.deepEqual(drifted.drift.reasons.map((r) => r.field), ['imageId', 'configHash']);
    const listed = ((await api('GET', `/v1/services?host=${host}`)).body.services as ServiceState[])[0];
    assert.equal(listed?.actual?.imageId, IMAGE_B);
    assert.equal(listed?.desired?.imageId, IMAGE_A);

    // Back to the desired state ends the episode; a new difference is a new episode and a new event.
    await api('POST', `/v1/hosts/${host}/heartbeat`, running(IMAGE_A));
    assert.ok(!((await api('GET', '/v1/drift')).body.drift as ServiceState[]).some((s) => s.host === host));
    await api('POST', `/v1/hosts/${host}/heartbeat`, { services: [] });
    const second = await until(() => watcher.of('drift.detected', host)[1]);
    assert.deepEqual((second.data as unknown as { reasons: { field: string }[] }).reasons.map((r) => r.field), ['missing']);
    // Both are in the stream: each episode was published once.
    await sleep(200);
    assert.equal(watcher.of('drift.detected', host).length, 2);
  });

  it('builds history and deployments from the stream, ignores a duplicate event, and a rebuild gives the identical state', async () => {
    const host = `proj-${RUN}`;
    const service = 'api';
    const publisher = await JetStreamPublisher.connect({ url: nats.url, logger: silent });
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
      const list = (await api('GET', '/v1/deployments?limit=100')).body.deployments as { deploymentId: string; state: string }[];
      return list.find((d) => d.deploymentId === deploymentId && d.state === 'succeeded');
    });
    assert.equal((deployed as { containerId?: string }).containerId, 'abc123');
    const state = ((await api('GET', `/v1/services?host=${host}&service=${service}`)).body.services as ServiceState[])[0];
    assert.equal(state?.actual?.imageId, IMAGE_B);
    assert.equal(state?.actual?.source, 'events');
    assert.equal(state?.lastDeployment?.state, 'succeeded');

    // The same event once more (a resend beyond the duplicate window): a new stream message, same id.
    const js = nc.jetstream();
    const again = events[1];
    assert.ok(again);
    await js.publish(`ferry.events.${host}.${service}.image.loaded`, JSON.stringify(again));
    const marker = createEvent('healthcheck.passed', { ...base, deploymentId: randomUUID(), data: { attempts: 1, durationMs: 1 } });
    publisher.publish(marker);
    await publisher.flush();
    await until(async () => {
      const history = (await api('GET', `/v1/services/${service}/history`)).body.history as { id: string }[];
      return history.some((h) => h.id === marker.id) ? true : undefined;
    });
    // Something that is not a Ferry event, last in the stream: skipped, and a rebuild still ends.
    const junk = await js.publish(`ferry.events.${host}.${service}.junk`, 'not an event');
    await until(() => (registry.registry.checkpoint >= junk.seq ? true : undefined));
    // The stream must be still for a snapshot to compare: once every host of the earlier tests is
    // lost (TTL 2 s) the registry publishes nothing more, and the projection has caught up with it.
    // A host turns lost before its host.lost event is in the stream: wait for the event of each.
    await until(async () => {
      const hosts = (await api('GET', '/v1/hosts')).body.hosts as { id: string; status: string; lastSeenAt: string }[];
      if (hosts.some((h) => h.status === 'online')) return undefined;
      const lost = ((await api('GET', '/v1/services/_host/history')).body.history as { type: string; host: string; data?: { lastSeenAt?: string } }[])
        .filter((h) => h.type === 'host.lost');
      return hosts.every((h) => lost.some((e) => e.host === h.id && e.data?.lastSeenAt === h.lastSeenAt)) ? true : undefined;
    });
    const lastSeq = (await (await nc.jetstreamManager()).streams.info('FERRY_EVENTS')).state.last_seq;
    await until(() => (registry.registry.checkpoint >= lastSeq ? true : undefined));
    const read = async (): Promise<unknown> => ({
      services: (await api('GET', '/v1/services')).body.services,
      deployments: (await api('GET', '/v1/deployments?limit=1000')).body.deployments,
      history: (await api('GET', `/v1/services/${service}/history`)).body.history,
      hostHistory: (await api('GET', '/v1/services/_host/history')).body.history,
      projection: registry.registry.projectionData(),
    });
    const before = await read();
    const history = (before as { history: { id: string }[] }).history;
    assert.equal(history.filter((h) => h.id === again.id).length, 1, 'the duplicate was not applied twice');
    assert.equal(history[0]?.id, marker.id, 'newest first');

    const rebuilt = await api('POST', '/v1/projection/rebuild');
    assert.equal(rebuilt.status, 200, JSON.stringify(rebuilt.body));
    assert.ok(typeof rebuilt.body.events === 'number' && rebuilt.body.events >= events.length + 1);
    assert.deepEqual(await read(), before);
  });

  it('restarted with its Redis store, the projection resumes after its checkpoint: nothing applied twice, nothing missed', async () => {
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
    const settings = env({ FERRY_HOST_ID: id, FERRY_REDIS_URL: redisUrl });
    const service = `svc${RUN}`;
    const publisher = await JetStreamPublisher.connect({ url: nats.url, logger: silent });
    closers.push(() => publisher.close());
    const publish = async (n: number): Promise<string[]> => {
      const ids: string[] = [];
      for (let i = 0; i < n; i++) {
        const event = createEvent('healthcheck.passed', { source: 'ferry://receiver/x', host: `h-${RUN}`, service, deploymentId: randomUUID(), data: { attempts: 1, durationMs: i } });
        ids.push(event.id);
        publisher.publish(event);
      }
      await publisher.flush();
      return ids;
    };
    const historyIds = async (running: RunningRegistry): Promise<string[]> =>
      ((await call(running.url, id, 'GET', `/v1/services/${service}/history`)).body.history as { id: string }[]).map((h) => h.id);

    let running = await startRegistry(settings, { logger: silent });
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
    // What it resumed to is what a replay from the start gives.
    const resumed = running.registry.projectionData();
    assert.equal((await call(running.url, id, 'POST', '/v1/projection/rebuild')).status, 200);
    assert.deepEqual(running.registry.projectionData(), resumed);
  });

  it('correct mode asks the sender service, signed, once per drift episode, and records its answer', async () => {
    // A real HTTP server standing in for the sender service (its own contract: POST /v1/deployments);
    // the whole loop with the real sender belongs to the end-to-end tests.
    const senderId = `sender-${RUN}`;
    const verifier = new RequestVerifier({ keys: KeyRing.parse(`${KEY_ID}:${SECRET}`), nonces: new MemoryNonceStore(), audience: senderId, startedAt: 0 });
    const received: { body: Record<string, unknown>; verified: boolean }[] = [];
    const sender: Server = createServer((req, res) => {
      if (req.url === '/healthz') {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ status: 'ok', host: senderId, version: 'test' }));
        return;
      }
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const raw = Buffer.concat(chunks);
        void verifier.verify({ method: req.method ?? '', path: req.url ?? '', headers: req.headers }).then(
          (v) => v.contentDigest === digestOf(raw),
          () => false,
        ).then((verified) => {
          const body = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
          received.push({ body, verified });
          res.statusCode = 202;
          res.setHeader('content-type', 'application/json');
          res.end(JSON.stringify({ id: body.id, state: 'queued', links: { self: `/v1/deployments/${String(body.id)}` } }));
        });
      });
    });
    await new Promise<void>((resolve) => sender.listen(0, '127.0.0.1', resolve));
    closers.push(() => new Promise((resolve) => sender.close(resolve)));
    const port = (sender.address() as { port: number }).port;

    const correcting = await startRegistry(env({
      FERRY_HOST_ID: `registry2-${RUN}`, FERRY_DRIFT_MODE: 'correct', FERRY_SENDER_URL: `http://127.0.0.1:${port}`,
      FERRY_KEY_ID: KEY_ID, FERRY_KEY: SECRET, FERRY_HOST_TTL_SECONDS: '3', FERRY_DRIFT_IGNORE: 'configHash',
    }), { logger: silent });
    closers.push(() => correcting.close());
    const api2 = (method: string, path: string, body?: unknown): Promise<Answer> => call(correcting.url, `registry2-${RUN}`, method, path, body);
    const host = `fix-${RUN}`;
    const targetUrl = `http://127.0.0.1:1/${host}`;
    await api2('POST', '/v1/hosts', registration(host, {}));
    await api2('PUT', `/v1/desired/${host}/web`, {
      deploymentId: randomUUID(), image: 'demo:1', imageId: IMAGE_A, configHash: 'sha256:c1', targetUrl,
      service: { name: 'web', env: { A: '1' }, ports: ['8080:80'] },
    });
    // The config hash differs too, but FERRY_DRIFT_IGNORE leaves it out.
    const report = { services: [{ service: 'web', imageId: IMAGE_B, configHash: 'sha256:other', state: 'running' }] };
    const corrected = await until(async () => {
      await api2('POST', `/v1/hosts/${host}/heartbeat`, report);
      const s = ((await api2('GET', '/v1/drift')).body.drift as ServiceState[]).find((d) => d.host === host);
      return s?.drift?.correction?.outcome === 'accepted' ? s : undefined;
    });
    assert.deepEqual(corrected.drift?.reasons.map((r) => r.field), ['imageId']);
    // More heartbeats of the same drift ask nothing more.
    for (let i = 0; i < 3; i++) await api2('POST', `/v1/hosts/${host}/heartbeat`, report);
    assert.equal(received.length, 1);
    const request = received[0];
    assert.ok(request?.verified, 'the request is signed for the sender service');
    assert.equal(request.body.id, corrected.drift?.correction?.requestId);
    assert.deepEqual(request.body.services, { web: { env: { A: '1' }, ports: ['8080:80'], image: 'demo:1', targets: [targetUrl] } });
    assert.equal((corrected.drift?.correction?.response as { state: string }).state, 'queued');
  });

  it('bad input answers a typed 4xx and changes nothing', async () => {
    const audience = `registry-${RUN}`;
    const raw = async (method: string, path: string, text: string, type = 'application/json'): Promise<Answer> => {
      const headers: Record<string, string> = { ...signRequest({ method, path, contentDigest: digestOf(text), keyId: KEY_ID, secret: SECRET, audience }), 'content-type': type };
      const response = await fetch(`${registry.url}${path}`, { method, headers, ...(method === 'GET' ? {} : { body: text }) });
      return { status: response.status, body: await response.json() as Record<string, unknown> };
    };
    const host = `bad-${RUN}`;
    assert.equal((await api('POST', '/v1/hosts', registration(host, {}))).status, 200);
    const desired = { deploymentId: randomUUID(), image: 'demo:1', imageId: IMAGE_A, configHash: 'sha256:c1', targetUrl: 'http://127.0.0.1:1/x', service: { name: 'web' } };
    // Hosts may go lost by their TTL meanwhile: what must not change is which hosts and services exist.
    const snapshot = async (): Promise<string[]> => [
      ...((await api('GET', '/v1/hosts')).body.hosts as { id: string }[]).map((h) => h.id),
      ...((await api('GET', '/v1/services')).body.services as ServiceState[]).map((s) => `${s.host}/${s.service}`),
    ].sort();
    const unchanged = await snapshot();
    const cases: [string, string, string, string, number, string][] = [
      ['malformed JSON', 'POST', '/v1/hosts', '{"id":', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['JSON null', 'POST', '/v1/hosts', 'null', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['wrong types', 'POST', '/v1/hosts', JSON.stringify({ ...registration(`x-${RUN}`, {}), id: 5, labels: [] }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['bad host id', 'POST', '/v1/hosts', JSON.stringify(registration('../etc', {})), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['oversize body', 'POST', '/v1/hosts', JSON.stringify({ pad: 'a'.repeat(300 * 1024) }), 413, 'FERRY_ERR_PAYLOAD_TOO_LARGE'],
      ['heartbeat wrong types', 'POST', `/v1/hosts/${host}/heartbeat`, JSON.stringify({ services: { web: 1 } }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['heartbeat bad service', 'POST', `/v1/hosts/${host}/heartbeat`, JSON.stringify({ services: [{ service: '../x', state: 'running' }] }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['heartbeat bad id', 'POST', '/v1/hosts/no%20such/heartbeat', '{}', 404, 'FERRY_ERR_HOST_UNKNOWN'],
      ['heartbeat undecodable id', 'POST', '/v1/hosts/%ZZ/heartbeat', '{}', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired bad host', 'PUT', '/v1/desired/a%20b/web', JSON.stringify(desired), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired bad service', 'PUT', `/v1/desired/${host}/Web!`, JSON.stringify(desired), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired wrong types', 'PUT', `/v1/desired/${host}/web`, JSON.stringify({ ...desired, service: 'web' }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['desired not JSON', 'PUT', `/v1/desired/${host}/web`, 'web', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['wrong media type', 'PUT', `/v1/desired/${host}/web`, JSON.stringify(desired), 415, 'FERRY_ERR_UNSUPPORTED_MEDIA_TYPE'],
      ['selector without operator', 'GET', '/v1/hosts?selector=env', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['selector without key', 'GET', '/v1/hosts?selector=%3Dprod', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['selector unknown operator', 'GET', '/v1/hosts?selector=env~prod', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['selector twice', 'GET', '/v1/hosts?selector=a%3Db&selector=c%3Dd', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['unknown status', 'GET', '/v1/hosts?status=gone', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['services filter twice', 'GET', '/v1/services?host=a&host=b', '', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['rebuild with a body', 'POST', '/v1/projection/rebuild', '{}', 400, 'FERRY_ERR_BAD_REQUEST'],
    ];
    for (const [name, method, path, text, status, code] of cases) {
      const answer = await raw(method, path, text, name === 'wrong media type' ? 'text/plain' : 'application/json');
      assert.equal(answer.status, status, `${name}: ${JSON.stringify(answer.body)}`);
      assert.equal((answer.body.error as { code: string }).code, code, name);
    }
    assert.deepEqual(await snapshot(), unchanged);
  });
});
