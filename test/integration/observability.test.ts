/**
 * What an operator sees (RELIABILITY rows 3, 9, 30, 31): /healthz, /readyz naming the dependency
 * that is down, /metrics after real pushes and refusals, and log lines free of secrets. A real
 * `ferry receiver` runs against the stack's target engine, with a private nats-server and a private
 * redis-server that the tests stop and start.
 */
import assert from 'node:assert/strict';
import { randomBytes, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { HOST_KEY_FILE, privateKeyPem, signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { STREAM_PART_BYTES } from '@ferry/protocol';
import { buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { NatsServer, RedisServer } from '../helpers/servers.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`obs-${run}`);
const metricsToken = randomBytes(24).toString('base64url');
const envSecret = `env-${randomBytes(16).toString('hex')}`;
const hostId = `obs-${run}`;
const service = `obs-${run}`;
const repo = `ferry-obs-${run}`;
const target = dockerodeFor(s.targetDockerHost);

interface Check { status: string; reason?: string; outbox?: number; reconnectAttempts?: number; freeBytes?: number }
interface Ready { status: string; checks: Record<string, Check | undefined> }

/** The value of one series in the text exposition format, or undefined when it is absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('health, readiness, metrics and logs of a receiver', { timeout: 300_000 }, () => {
  let nats: NatsServer;
  let redis: RedisServer;
  let receiver: ReceiverProcess;
  let port: number;
  const refusedSignatures: string[] = [];

  const readyz = async (): Promise<{ code: number; body: Ready }> => {
    const res = await fetch(`${receiver.url}/readyz`);
    return { code: res.status, body: await res.json() as Ready };
  };
  const untilReady = async (accept: (r: Ready) => boolean): Promise<Ready> => {
    for (;;) {
      const { body } = await readyz();
      if (accept(body)) return body;
      await sleep(100);
    }
  };
  const metrics = async (): Promise<string> => {
    const res = await fetch(`${receiver.url}/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    return res.text();
  };
  /** What the last push sent, by its own count, and in how many requests carrying package bytes. */
  let pushedBytes = 0;
  let uploadRequests = 0;
  const push = async (): Promise<void> => {
    const result = await runFerry([
      'push', `${repo}:1`, '--to', receiver.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
      '--env', `SECRET=${envSecret}`, '--health', `http://127.0.0.1:${port}/healthz`, '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) });
    assert.equal(result.code, 0, result.stderr + result.stdout);
    const answer = JSON.parse(result.stdout) as { deployment: { state: string }; bytes: { sent: number }; streamed: boolean };
    assert.equal(answer.deployment.state, 'COMPLETED');
    pushedBytes = answer.bytes.sent;
    // Each PATCH of a streamed upload is an upload request of its own.
    uploadRequests = answer.streamed ? Math.ceil(pushedBytes / STREAM_PART_BYTES) : 1;
  };
  /** A signed one-shot upload head that authentication refuses; returns the error code. */
  const refused = async (overrides: { now?: number; privateKey?: KeyObject }): Promise<string> => {
    const headers = signRequest({
      method: 'POST', path: '/v1/packages', contentDigest: digestOf(''), keyId: key.keyId, privateKey: key.privateKey, audience: hostId, ...overrides,
    });
    refusedSignatures.push(headers['x-ferry-signature'] ?? '');
    const res = await fetch(`${receiver.url}/v1/packages`, { method: 'POST', headers: { ...headers, 'content-type': 'multipart/form-data; boundary=x' }, body: '' });
    assert.equal(res.status, 401);
    return ((await res.json()) as { error: { code: string } }).error.code;
  };

  before(async () => {
    port = await freePort();
    [nats, redis] = await Promise.all([NatsServer.create(), RedisServer.create()]);
    await Promise.all([nats.start(), redis.start(), buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`)]);
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId,
      FERRY_NATS_URL: nats.url, FERRY_REDIS_URL: redis.url, FERRY_METRICS_TOKEN: metricsToken, FERRY_LOG_LEVEL: 'debug',
    });
  });

  after(async () => {
    await receiver?.stop();
    await nats?.dispose();
    await redis?.dispose();
    await removeService(target, service);
    await removeImages(target, [`${repo}:1`]);
    await removeImages(dockerodeFor(s.buildDockerHost), [`${repo}:1`]);
  });

  test('/healthz answers without a key; /readyz is ready once Docker, NATS, Redis and the disk answer', async () => {
    const health = await fetch(`${receiver.url}/healthz`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: 'ok', host: hostId, version: '0.1.0' });

    await untilReady((r) => r.status === 'ready');
    const { code, body } = await readyz();
    assert.equal(code, 200);
    assert.equal(body.status, 'ready');
    for (const name of ['docker', 'nats', 'redis', 'disk']) assert.equal(body.checks[name]?.status, 'up', name);
    assert.ok((body.checks.disk?.freeBytes ?? 0) > 0);
  });

  test('NATS down past ten reconnect attempts: the client keeps trying, /readyz says degraded and names nats; back: ready', async () => {
    await nats.stop();
    // nats.js gives up after 10 attempts by default; the receiver must not.
    const down = await untilReady((r) => (r.checks.nats?.reconnectAttempts ?? 0) > 10);
    assert.equal(down.status, 'degraded');
    assert.equal(down.checks.nats?.status, 'down');
    for (const name of ['docker', 'redis', 'disk']) assert.equal(down.checks[name]?.status, 'up', name);
    assert.equal((await readyz()).code, 503);
    assert.equal(sample(await metrics(), 'ferry_nats_connected'), 0);

    await nats.start();
    await untilReady((r) => r.status === 'ready');
    assert.equal((await readyz()).code, 200);
    assert.equal(sample(await metrics(), 'ferry_nats_connected'), 1);
  });

  test('Redis down: /readyz says degraded and names redis, and a push still deploys; Redis back: ready', async () => {
    await redis.stop();
    const down = await untilReady((r) => r.checks.redis?.status === 'down');
    assert.equal(down.status, 'degraded');
    assert.ok(down.checks.redis?.reason, 'the check says why');
    assert.equal((await readyz()).code, 503);

    await push();

    await redis.start();
    await untilReady((r) => r.status === 'ready');
    assert.equal((await readyz()).code, 200);
  });

  test('/metrics counts the upload, its stages, the deployment and refusals by code, a stale timestamp included', async () => {
    assert.equal(await refused({ now: Math.floor(Date.now() / 1000) - 1000 }), 'FERRY_ERR_STALE_TIMESTAMP');
    // The same key id, another key pair: the signature does not verify.
    assert.equal(await refused({ privateKey: testKey(key.keyId).privateKey }), 'FERRY_ERR_BAD_SIGNATURE');
    assert.equal((await fetch(`${receiver.url}/metrics`)).status, 401, 'FERRY_METRICS_TOKEN guards /metrics');

    const text = await metrics();
    assert.equal(sample(text, 'ferry_auth_rejections_total{code="FERRY_ERR_STALE_TIMESTAMP"}'), 1);
    assert.equal(sample(text, 'ferry_auth_rejections_total{code="FERRY_ERR_BAD_SIGNATURE"}'), 1);
    assert.ok(uploadRequests > 0);
    assert.equal(sample(text, 'ferry_uploads_total{outcome="ok"}'), uploadRequests, 'one per request that carried package bytes');
    assert.equal(sample(text, 'ferry_uploads_total{outcome="refused"}'), 2);
    assert.ok(pushedBytes > 0 && (sample(text, 'ferry_received_bytes_total') ?? 0) >= pushedBytes, 'the package bytes were counted');
    assert.equal(sample(text, 'ferry_deployments_total{outcome="completed"}'), 1);
    for (const stage of ['receive', 'load', 'deploy', 'health', 'total']) {
      assert.equal(sample(text, `ferry_stage_duration_seconds_count{stage="${stage}"}`), 1, stage);
    }
    assert.ok((sample(text, 'ferry_events_published_total') ?? 0) >= 5);
    assert.notEqual(sample(text, 'ferry_outbox_depth'), undefined);
    assert.notEqual(sample(text, 'process_cpu_user_seconds_total'), undefined, 'prom-client default metrics');
    assert.match(text, /^nodejs_heap_size_used_bytes /m);
  });

  test('behind a source allowlist, probes still reach /healthz and /readyz but /metrics is refused', async () => {
    const fenced = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `${hostId}-fenced`, FERRY_ALLOW_CIDRS: '192.0.2.0/24',
    });
    try {
      assert.equal((await fetch(`${fenced.url}/healthz`)).status, 200);
      const ready = await fetch(`${fenced.url}/readyz`);
      assert.equal(ready.status, 200);
      assert.deepEqual(Object.fromEntries(Object.entries((await ready.json() as Ready).checks).map(([k, v]) => [k, v?.status])), {
        docker: 'up', nats: 'disabled', redis: 'disabled', disk: 'up',
      });
      const scraped = await fetch(`${fenced.url}/metrics`);
      assert.equal(scraped.status, 403);
      assert.equal(((await scraped.json()) as { error: { code: string } }).error.code, 'FERRY_ERR_FORBIDDEN_SOURCE');
    } finally {
      await fenced.stop();
    }
  });

  test("no receiver log line holds its host key, the sender's key, a signature or an environment value", async () => {
    const logs = receiver.logs.map((entry) => JSON.stringify(entry)).join('\n');
    assert.ok(receiver.logs.length > 10, 'the receiver logged');
    assert.ok(logs.includes('deployment completed'), 'the push is in the log');
    // A PEM's base64 body, without its armour lines: what a leak of the key would contain.
    const pemBody = (pem: string): string => pem.split('\n').filter((line) => line !== '' && !line.startsWith('-----')).join('');
    const hostKey = pemBody(await readFile(join(receiver.dataDir, HOST_KEY_FILE), 'utf8'));
    assert.ok(hostKey.length > 40 && !logs.includes(hostKey), 'host key');
    assert.ok(!logs.includes(pemBody(privateKeyPem(key.privateKey))), "sender's private key");
    assert.ok(!logs.includes(envSecret), 'environment value');
    assert.ok(!logs.includes(metricsToken), 'metrics token');
    for (const signature of refusedSignatures) assert.ok(signature && !logs.includes(signature), 'signature');
  });
});
