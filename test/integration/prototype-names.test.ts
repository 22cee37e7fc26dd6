/**
 * Names that are members of Object.prototype, sent where a name becomes a key, to a real receiver
 * process and a real registry: a 4xx or the right answer, never a 500. `__proto__`, which no
 * JavaScript object can keep as an ordinary key, is refused with 400 rather than dropped.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { createLogger } from '@ferry/log';
import { startRegistry, type RunningRegistry } from '@ferry/registry';
import { startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile, type TestKey } from '../helpers/keys.ts';
import { stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const MEMBERS = ['constructor', 'hasOwnProperty', 'toString', 'valueOf', '__proto__'];

interface Answer {
  status: number;
  code: string | undefined;
  body: Record<string, unknown>;
}

/** One signed request, as any client of docs/protocol.md makes it; the body is sent as given. */
async function call(base: string, key: TestKey, audience: string, method: string, path: string, body?: { type: string; bytes: Buffer }): Promise<Answer> {
  const bytes = body?.bytes ?? Buffer.alloc(0);
  const headers: Record<string, string> = signRequest({ method, path, contentDigest: digestOf(bytes), keyId: key.keyId, privateKey: key.privateKey, audience });
  if (body) headers['content-type'] = body.type;
  const response = await fetch(`${base}${path}`, { method, headers, ...(body ? { body: bytes } : {}) });
  const text = await response.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON: the status says enough
  }
  return { status: response.status, code: (parsed.error as { code?: string } | undefined)?.code, body: parsed };
}

const json = (text: string): { type: string; bytes: Buffer } => ({ type: 'application/json', bytes: Buffer.from(text) });

function assertNo500(answer: Answer, label: string): void {
  assert.ok(answer.status >= 200 && answer.status < 500, `${label} → ${answer.status} ${JSON.stringify(answer.body)}`);
}

/** A manifest text whose `service` has these fields, spelled as given (so `__proto__` stays a key). */
function manifestText(serviceFields: string, pkg: Buffer): string {
  return `{"schema":"ferry.manifest/v1","deploymentId":"${randomUUID()}","createdAt":"${new Date().toISOString()}",`
    + `"image":{"ref":"ferry-proto-${run}:1","id":"sha256:${'a'.repeat(64)}","diffIds":["sha256:${'b'.repeat(64)}"]},`
    + `"package":{"format":"docker-archive","compression":"none","size":${pkg.length},"digest":"${digestOf(pkg)}"},`
    + `"service":{"name":"proto-${run}","network":"none"${serviceFields}}}`;
}

describe('receiver: names of Object.prototype members', { timeout: 120_000 }, () => {
  const key = testKey('proto');
  const hostId = `proto-${run}`;
  let receiver: ReceiverProcess;
  before(async () => {
    receiver = await startReceiverProcess({ DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId });
  });
  after(async () => receiver?.stop());

  const upload = async (manifest: string, pkg: Buffer): Promise<Answer> => {
    const boundary = `x${randomBytes(8).toString('hex')}`;
    const bytes = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="manifest"\r\nContent-Type: application/json\r\n\r\n${manifest}\r\n`
        + `--${boundary}\r\nContent-Disposition: form-data; name="package"; filename="package"\r\nContent-Type: application/octet-stream\r\n\r\n`),
      pkg, Buffer.from(`\r\n--${boundary}--\r\n`),
    ]);
    const headers: Record<string, string> = signRequest({ method: 'POST', path: '/v1/packages', contentDigest: digestOf(manifest), keyId: key.keyId, privateKey: key.privateKey, audience: hostId });
    const response = await fetch(`${receiver.url}/v1/packages`, { method: 'POST', headers: { ...headers, 'content-type': `multipart/form-data; boundary=${boundary}` }, body: bytes });
    const body = await response.json() as Record<string, unknown>;
    return { status: response.status, code: (body.error as { code?: string } | undefined)?.code, body };
  };

  test('"__proto__" as an env name or label key in an uploaded manifest → 400 FERRY_ERR_BAD_MANIFEST', async () => {
    const pkg = randomBytes(512);
    for (const fields of [',"env":{"__proto__":"x"}', ',"labels":{"__proto__":"x"}', ',"env":{"A":"1","__proto__":{"polluted":"yes"}}']) {
      const answer = await upload(manifestText(fields, pkg), pkg);
      assert.equal(answer.status, 400, `${fields}: ${JSON.stringify(answer.body)}`);
      assert.equal(answer.code, 'FERRY_ERR_BAD_MANIFEST');
      assert.match(JSON.stringify(answer.body), /__proto__/);
    }
  });

  test('env names and labels like "constructor" pass the manifest; the package is then judged as any other', async () => {
    const pkg = randomBytes(512);
    const answer = await upload(manifestText(',"env":{"constructor":"1","hasOwnProperty":"2","toString":"3"},"labels":{"constructor":"x","valueOf":"y"}', pkg), pkg);
    assertNo500(answer, 'prototype member names');
    assert.notEqual(answer.code, 'FERRY_ERR_BAD_MANIFEST', JSON.stringify(answer.body));
  });

  test('the streamed upload\'s JSON manifest with "__proto__" → 400', async () => {
    const answer = await call(receiver.url, key, hostId, 'POST', '/v1/streams', json(manifestText(',"env":{"__proto__":"x"}', Buffer.alloc(1)).replace(/,"size":1,"digest":"[^"]+"/, '')));
    assert.equal(answer.status, 400, JSON.stringify(answer.body));
  });

  test('deployments and rollback asked for services so named', async () => {
    for (const name of MEMBERS) {
      const list = await call(receiver.url, key, hostId, 'GET', `/v1/deployments?service=${encodeURIComponent(name)}`);
      assertNo500(list, `GET /v1/deployments?service=${name}`);
      if (list.status === 200) assert.deepEqual(list.body.deployments, [], name);
      assertNo500(await call(receiver.url, key, hostId, 'GET', `/v1/deployments/${encodeURIComponent(name)}`), `GET /v1/deployments/${name}`);
      assertNo500(await call(receiver.url, key, hostId, 'POST', `/v1/services/${encodeURIComponent(name)}/rollback`), `rollback ${name}`);
    }
  });
});

describe('registry: names of Object.prototype members', { timeout: 120_000 }, () => {
  const admin = testKey('proto-admin');
  const deployer = testKey('proto-deploy');
  const registryId = `registry-proto-${run}`;
  let registry: RunningRegistry;
  let dataDir: string;
  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-reg-proto-'));
    registry = await startRegistry({
      FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: registryId, FERRY_DATA_DIR: dataDir, FERRY_LOG_LEVEL: 'error',
      FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }, { key: deployer, role: 'deploy' }]),
    }, { logger: createLogger({ level: 'silent' }) });
  });
  after(async () => {
    await registry?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test('queries and paths naming services and hosts so', async () => {
    for (const name of MEMBERS) {
      const q = encodeURIComponent(name);
      for (const path of [`/v1/services?service=${q}`, `/v1/services?host=${q}`, `/v1/services/${q}/history`, `/v1/hosts?selector=${q}=x`, `/v1/hosts?${q}=x`, `/v1/deployments?${q}=1`]) {
        const answer = await call(registry.url, admin, registryId, 'GET', path);
        assertNo500(answer, `GET ${path}`);
      }
      const history = await call(registry.url, admin, registryId, 'GET', `/v1/services/${q}/history`);
      if (history.status === 200) assert.deepEqual(history.body.history, [], name);
    }
  });

  test('"__proto__" in a JSON body → 400; other member names as label keys are not a 500', async () => {
    const token = (labels: string): Promise<Answer> => call(registry.url, admin, registryId, 'POST', '/v1/join-tokens', json(`{"host":"h-${run}","labels":${labels}}`));
    const refused = await token('{"__proto__":"x"}');
    assert.equal(refused.status, 400, JSON.stringify(refused.body));
    assert.equal(refused.code, 'FERRY_ERR_BAD_REQUEST');
    assertNo500(await token('{"constructor":"x","hasOwnProperty":"y","toString":"z"}'), 'labels named like members');
    const desired = await call(registry.url, deployer, registryId, 'PUT', `/v1/desired/h-${run}/constructor`, json('{"deploymentId":"d","__proto__":{"polluted":true}}'));
    assert.equal(desired.status, 400, JSON.stringify(desired.body));
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    // The enrollment is read before any signature or token is checked: the same rule holds there.
    const enroll = await fetch(`${registry.url}/v1/enroll`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: `{"token":"${'t'.repeat(32)}","publicKey":"x","registration":{"id":"h-${run}","labels":{"__proto__":{"polluted":true}}}}`,
    });
    const enrollBody = await enroll.json() as { error?: { code?: string } };
    assert.equal(enroll.status, 400, JSON.stringify(enrollBody));
    assert.equal(enrollBody.error?.code, 'FERRY_ERR_BAD_REQUEST');
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });
});
