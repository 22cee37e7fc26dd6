import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile, type TestKey } from '../helpers/keys.ts';
import { stack } from '../helpers/stack.ts';

const run = randomBytes(3).toString('hex');
const hostId = `scope-${run}`;
const dbKey = testKey(`db-ops-${run}`);
const webKey = testKey(`web-ci-${run}`);
const ID = `sha256:${'c'.repeat(64)}`;

async function call(url: string, key: TestKey, method: string, path: string, body = '', extra: Record<string, string> = {}): Promise<{ status: number; code: string | undefined; text: string }> {
  const headers = {
    ...signRequest({ method, path, contentDigest: digestOf(body), audience: hostId, keyId: key.keyId, privateKey: key.privateKey, ...(extra['upload-offset'] ? { offset: extra['upload-offset'] } : {}) }),
    ...(body === '' ? {} : { 'content-type': 'application/json' }),
    ...extra,
  };
  const response = await fetch(`${url}${path}`, { method, headers, ...(body === '' || method === 'HEAD' ? {} : { body }) });
  const text = method === 'HEAD' ? '' : await response.text();
  let code: string | undefined;
  try {
    code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
  } catch {
    code = undefined;
  }
  return { status: response.status, code, text };
}

describe('a session is reachable only by keys granted its service', { timeout: 120_000 }, () => {
  let receiver: ReceiverProcess;

  before(async () => {
    receiver = await startReceiverProcess({
      DOCKER_HOST: stack().targetDockerHost, FERRY_HOST_ID: hostId,
      FERRY_TRUST_FILE: trustFile([{ key: dbKey, services: ['db'] }, { key: webKey, services: ['web-*'] }]),
    });
  });
  after(async () => { await receiver.stop(); });

  test('a key granted web-* cannot create, probe, write or deploy an upload of db', async () => {
    const manifest = JSON.stringify({
      schema: 'ferry.manifest/v1', deploymentId: randomUUID(), createdAt: new Date().toISOString(),
      image: { ref: `scope-${run}:1`, id: ID, diffIds: [ID] },
      package: { format: 'docker-archive', compression: 'none', size: 4096, digest: digestOf(Buffer.alloc(4096)) },
      service: { name: 'db' },
    });
    const refused = await call(receiver.url, webKey, 'POST', '/v1/uploads', manifest);
    assert.equal(refused.code, 'FERRY_ERR_NOT_GRANTED', refused.text);
    assert.ok(!refused.text.includes(webKey.keyId), 'the answer does not echo the key id');

    const created = await call(receiver.url, dbKey, 'POST', '/v1/uploads', manifest);
    assert.equal(created.status, 201, created.text);
    const { uploadId } = JSON.parse(created.text) as { uploadId: string };
    const path = `/v1/uploads/${uploadId}`;

    assert.equal((await call(receiver.url, webKey, 'HEAD', path)).status, 403);
    const part = await call(receiver.url, webKey, 'PATCH', path, '', { 'upload-offset': '0', 'content-type': 'application/offset+octet-stream' });
    assert.equal(part.code, 'FERRY_ERR_NOT_GRANTED');
    assert.equal((await call(receiver.url, webKey, 'POST', `${path}/deploy`)).code, 'FERRY_ERR_NOT_GRANTED');
    // The session is untouched: its own key still sees it at offset 0.
    assert.equal((await call(receiver.url, dbKey, 'HEAD', path)).status, 200);
  });
});
