import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '@ferry/log';
import { startRegistry, type RunningRegistry } from '@ferry/registry';
import { Redis } from 'ioredis';
import { testKey, trustFile } from '../helpers/keys.ts';
import { enrolledHost, hostRegistration, signedCall, until, type Answer, type Signer } from '../helpers/registry.ts';
import { RedisServer } from '../helpers/servers.ts';

const SUITE = { timeout: 120_000 };
const RUN = randomBytes(3).toString('hex');
const ID = `registry-${RUN}`;
const silent = createLogger({ level: 'silent' });
const admin = { ...testKey(`reg-redis-${RUN}`), audience: ID };
const TRUST = trustFile([{ key: admin, role: 'admin' }]);
/** The host keys the hosts of this test enrolled, by host id. */
const hostKeys = new Map<string, Signer>();

async function call(base: string, method: string, path: string, body?: unknown, signer: Signer = admin): Promise<Answer> {
  return signedCall(base, signer, method, path, body);
}

/** A host's own call, signed with its enrolled key. */
async function asHost(id: string, base: string, method: string, path: string, body?: unknown): Promise<Answer> {
  const key = hostKeys.get(id);
  assert.ok(key, `${id} is not enrolled`);
  return call(base, method, path, body, key);
}

function registration(id: string): Record<string, unknown> {
  return hostRegistration(id, { env: 'test' });
}

describe('registry with Redis (row 31)', SUITE, () => {
  let redis: RedisServer;
  let dataDir: string;
  let registry: RunningRegistry | undefined;

  const start = async (): Promise<RunningRegistry> => startRegistry({
    FERRY_TRUST_FILE: TRUST, FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: ID, FERRY_REDIS_URL: redis.url,
    FERRY_DATA_DIR: dataDir, FERRY_HOST_TTL_SECONDS: '3', FERRY_LOG_LEVEL: 'error',
  }, { logger: silent });
  const readyz = async (): Promise<{ status: number; body: { status: string; checks: { store: { status: string } } } }> => {
    const response = await fetch(`${registry?.url}/readyz`);
    return { status: response.status, body: await response.json() as { status: string; checks: { store: { status: string } } } };
  };
  /** The keys of one collection Redis holds for this registry, read with a client of the test's own. */
  const stored = async (kind: string): Promise<string[]> => {
    const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      return Object.keys(await client.hgetall(`ferry:registry:${ID}:${kind}`)).sort();
    } finally {
      client.disconnect();
    }
  };
  const storedHosts = (): Promise<string[]> => stored('hosts');

  before(async () => {
    // A private redis-server: this test stops and restarts it.
    redis = await RedisServer.create();
    await redis.start();
    dataDir = mkdtempSync(join(tmpdir(), 'fx-registry-redis-'));
  });

  after(async () => {
    await registry?.close();
    await redis?.dispose();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('Redis down: /readyz says degraded, heartbeats and registrations go on from memory, and Redis gets everything back when it returns', async () => {
    registry = await start();
    const url = registry.url;
    const a = `a-${RUN}`;
    const b = `b-${RUN}`;
    hostKeys.set(a, await enrolledHost(url, admin, a, { env: 'test' }));
    hostKeys.set(b, await enrolledHost(url, admin, b, { env: 'test' }));
    await until(async () => ((await storedHosts()).includes(a) ? true : undefined));
    assert.equal((await readyz()).status, 200);

    await redis.stop();
    const degraded = await until(async () => {
      const r = await readyz();
      return r.body.status === 'degraded' ? r : undefined;
    });
    assert.equal(degraded.status, 503);
    assert.equal(degraded.body.checks.store.status, 'down');
    assert.equal((await asHost(a, url, 'POST', `/v1/hosts/${a}/heartbeat`, {})).status, 200);
    assert.equal((await asHost(b, url, 'POST', '/v1/hosts', registration(b))).status, 200);
    const listed = (await call(url, 'GET', '/v1/hosts?selector=env=test')).body.hosts as { id: string }[];
    assert.deepEqual(listed.map((h) => h.id).sort(), [a, b].sort());
    // The TTL timer does not need Redis: b, never heartbeating, is lost meanwhile.
    await until(async () => {
      await asHost(a, url, 'POST', `/v1/hosts/${a}/heartbeat`, {});
      const lost = (await call(url, 'GET', '/v1/hosts?status=lost')).body.hosts as { id: string }[];
      return lost.some((h) => h.id === b) ? true : undefined;
    });

    // This Redis keeps nothing across a restart: what it holds afterwards is the registry's resync.
    await redis.start();
    await until(async () => ((await readyz()).status === 200 ? true : undefined));
    assert.deepEqual(await until(async () => {
      const hosts = await storedHosts();
      return hosts.length === 2 ? hosts : undefined;
    }), [a, b].sort());
  });

  it('a registry restarted with Redis up knows its hosts; restarted with Redis down it knows their keys (key file) but not the hosts, which re-register', async () => {
    const a = `a-${RUN}`;
    await registry?.close();
    registry = await start();
    assert.equal((await asHost(a, registry.url, 'POST', `/v1/hosts/${a}/heartbeat`, {})).status, 200, 'host and key known from Redis');

    await registry.close();
    await redis.stop();
    registry = await start();
    assert.equal((await readyz()).body.status, 'degraded');
    // The enrolled key is in the data directory too: the host proves itself, and is told to register.
    const unknown = await asHost(a, registry.url, 'POST', `/v1/hosts/${a}/heartbeat`, {});
    assert.deepEqual([unknown.status, (unknown.body.error as { code: string }).code], [404, 'FERRY_ERR_HOST_UNKNOWN']);
    // What a receiver does on that 404:
    assert.equal((await asHost(a, registry.url, 'POST', '/v1/hosts', registration(a))).status, 200);
    assert.equal((await asHost(a, registry.url, 'POST', `/v1/hosts/${a}/heartbeat`, {})).status, 200);

    // This Redis comes back empty: the registry writes the hosts and the enrolled keys back.
    await redis.start();
    await until(async () => ((await readyz()).status === 200 ? true : undefined));
    await until(async () => ((await storedHosts()).includes(a) ? true : undefined));
    await until(async () => ((await stored('enrollments')).includes(a) ? true : undefined));
  });
});
