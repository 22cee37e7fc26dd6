import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '@ferry/log';
import { startRegistry, type RunningRegistry } from '@ferry/registry';
import { Redis } from 'ioredis';
import { hostRegistration, signedCall, until, type Answer } from '../helpers/registry.ts';
import { RedisServer } from '../helpers/servers.ts';

const SUITE = { timeout: 120_000 };
const KEY_ID = 'reg-redis';
const SECRET = randomBytes(32).toString('base64url');
const RUN = randomBytes(3).toString('hex');
const ID = `registry-${RUN}`;
const silent = createLogger({ level: 'silent' });

async function call(base: string, method: string, path: string, body?: unknown): Promise<Answer> {
  return signedCall(base, { keyId: KEY_ID, secret: SECRET, audience: ID }, method, path, body);
}

function registration(id: string): Record<string, unknown> {
  return hostRegistration(id, { env: 'test' });
}

describe('registry with Redis (row 31)', SUITE, () => {
  let redis: RedisServer;
  let dataDir: string;
  let registry: RunningRegistry | undefined;

  const start = async (): Promise<RunningRegistry> => startRegistry({
    FERRY_KEYS: `${KEY_ID}:${SECRET}`, FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: ID, FERRY_REDIS_URL: redis.url,
    FERRY_DATA_DIR: dataDir, FERRY_HOST_TTL_SECONDS: '3', FERRY_LOG_LEVEL: 'error',
  }, { logger: silent });
  const readyz = async (): Promise<{ status: number; body: { status: string; checks: { store: { status: string } } } }> => {
    const response = await fetch(`${registry?.url}/readyz`);
    return { status: response.status, body: await response.json() as { status: string; checks: { store: { status: string } } } };
  };
  /** The hosts Redis holds for this registry, read with a client of the test's own. */
  const storedHosts = async (): Promise<string[]> => {
    const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      return Object.keys(await client.hgetall(`ferry:registry:${ID}:hosts`)).sort();
    } finally {
      client.disconnect();
    }
  };

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
    assert.equal((await call(url, 'POST', '/v1/hosts', registration(a))).status, 200);
    await until(async () => ((await storedHosts()).includes(a) ? true : undefined));
    assert.equal((await readyz()).status, 200);

    await redis.stop();
    const degraded = await until(async () => {
      const r = await readyz();
      return r.body.status === 'degraded' ? r : undefined;
    });
    assert.equal(degraded.status, 503);
    assert.equal(degraded.body.checks.store.status, 'down');
    assert.equal((await call(url, 'POST', `/v1/hosts/${a}/heartbeat`, {})).status, 200);
    assert.equal((await call(url, 'POST', '/v1/hosts', registration(b))).status, 200);
    const listed = (await call(url, 'GET', '/v1/hosts?selector=env=test')).body.hosts as { id: string }[];
    assert.deepEqual(listed.map((h) => h.id).sort(), [a, b].sort());
    // The TTL timer does not need Redis: b, never heartbeating, is lost meanwhile.
    await until(async () => {
      await call(url, 'POST', `/v1/hosts/${a}/heartbeat`, {});
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

  it('a registry restarted with Redis up knows its hosts; restarted with Redis down it does not, and hosts re-register', async () => {
    const a = `a-${RUN}`;
    await registry?.close();
    registry = await start();
    assert.equal((await call(registry.url, 'POST', `/v1/hosts/${a}/heartbeat`, {})).status, 200, 'known from Redis');

    await registry.close();
    await redis.stop();
    registry = await start();
    assert.equal((await readyz()).body.status, 'degraded');
    const unknown = await call(registry.url, 'POST', `/v1/hosts/${a}/heartbeat`, {});
    assert.equal(unknown.status, 404);
    assert.equal((unknown.body.error as { code: string }).code, 'FERRY_ERR_HOST_UNKNOWN');
    // What a receiver does on that 404:
    assert.equal((await call(registry.url, 'POST', '/v1/hosts', registration(a))).status, 200);
    assert.equal((await call(registry.url, 'POST', `/v1/hosts/${a}/heartbeat`, {})).status, 200);

    await redis.start();
    await until(async () => ((await readyz()).status === 200 ? true : undefined));
    await until(async () => ((await storedHosts()).includes(a) ? true : undefined));
  });
});
