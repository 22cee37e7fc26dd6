/**
 * The streamed upload (docs/protocol.md §10.6) against a real `ferry receiver` process and the
 * stack's target engine: parts are loaded as they arrive, and whatever goes wrong before the
 * signed seal matches — a wrong seal, an abandoned stream, a receiver killed mid-way, a part
 * that is not the signed one, an archive that is not an image — leaves no image on the engine.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import { signRequest } from '@ferry/auth';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { digestOf } from '@ferry/integrity';
import { STREAM_MAX_PART_BYTES, type DeferredManifestInput, type DeploymentResult } from '@ferry/protocol';
import { buildTestImage, freePort, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`st-${run}`);
const hostId = `st-${run}`;
const repo = `ferry-st-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = new ImageStore(createDockerClient(s.buildDockerHost));
const PART = 256 * 1024;

interface Answer { status: number; code: string | undefined; json: unknown; offset: string | undefined }

function call(url: string, method: string, path: string, body: Buffer = Buffer.alloc(0), options: { offset?: number; digest?: string; type?: string } = {}): Promise<Answer> {
  const offset = options.offset === undefined ? undefined : String(options.offset);
  const headers = {
    ...signRequest({ method, path, contentDigest: options.digest ?? digestOf(body), audience: hostId, ...key, ...(offset === undefined ? {} : { offset }) }),
    'content-length': String(body.length),
    ...(offset === undefined ? {} : { 'upload-offset': offset, 'content-type': 'application/offset+octet-stream' }),
    ...(options.type ? { 'content-type': options.type } : {}),
  };
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let json: unknown;
        try {
          json = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          json = undefined;
        }
        const offsetHeader = res.headers['upload-offset'];
        resolve({ status: res.statusCode ?? 0, code: (json as { error?: { code?: string } } | undefined)?.error?.code, json, offset: Array.isArray(offsetHeader) ? offsetHeader[0] : offsetHeader });
      });
    });
    // The receiver may answer (413) and close before the body is all written; the answer is what counts.
    req.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err); });
    req.end(body);
  });
}

async function saved(ref: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await build.save(ref)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const present = async (id: string): Promise<boolean> => target.getImage(id).inspect().then(() => true, () => false);

describe('streamed upload', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  const images = new Map<string, { id: string; diffIds: string[]; tar: Buffer }>();
  const services: string[] = [];

  const opening = async (variant: string, compression: 'none' | 'zstd' = 'none'): Promise<{ manifest: DeferredManifestInput; service: string }> => {
    const image = images.get(variant);
    assert.ok(image);
    const service = `st-${run}-${services.length}`;
    services.push(service);
    const port = await freePort();
    return {
      service,
      manifest: {
        schema: 'ferry.manifest/v1', deploymentId: crypto.randomUUID(), createdAt: new Date().toISOString(),
        image: { ref: `${repo}:${variant}`, id: image.id, diffIds: image.diffIds },
        package: { format: 'docker-archive', compression },
        service: { name: service, env: { PORT: String(port) }, network: 'host', health: { type: 'http', url: `http://127.0.0.1:${port}/healthz`, retries: 60, intervalMs: 100 } },
      },
    };
  };

  const open = async (manifest: unknown): Promise<string> => {
    const answer = await call(receiver.url, 'POST', '/v1/streams', Buffer.from(JSON.stringify(manifest)), { type: 'application/json' });
    assert.equal(answer.status, 201, JSON.stringify(answer.json));
    return (answer.json as { streamId: string }).streamId;
  };

  /** PATCHes `bytes` in parts from `from` up to `to`; answers the offset the receiver reports. */
  const send = async (id: string, bytes: Buffer, from = 0, to = bytes.length): Promise<number> => {
    let offset = from;
    while (offset < to) {
      const part = bytes.subarray(offset, Math.min(offset + PART, to));
      const answer = await call(receiver.url, 'PATCH', `/v1/streams/${id}`, part, { offset });
      assert.equal(answer.status, 204, JSON.stringify(answer.json));
      offset = Number(answer.offset);
    }
    return offset;
  };

  const seal = (id: string, body: unknown): Promise<Answer> =>
    call(receiver.url, 'POST', `/v1/streams/${id}/deploy`, Buffer.from(JSON.stringify(body)), { type: 'application/json' });

  before(async () => {
    for (const variant of ['ok', 'zstd', 'liar', 'gone', 'bad-part', 'killed']) {
      const id = await buildTestImage(s.buildDockerHost, `${repo}:${variant}`, `${variant}-${run}`);
      const info = await build.inspect(id);
      assert.ok(info);
      images.set(variant, { id, diffIds: info.diffIds, tar: await saved(id) });
    }
    receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId });
  });

  after(async () => {
    await receiver?.stop();
    for (const service of services) await removeService(target, service);
    await removeImages(target, [...images.values()].map((image) => image.id));
    for (const variant of images.keys()) await build.remove(`${repo}:${variant}`, { force: true }).catch(() => undefined);
  });

  test('parts are loaded as they come and the seal deploys the image', async () => {
    const image = images.get('ok');
    assert.ok(image);
    const { manifest } = await opening('ok');
    const id = await open(manifest);
    assert.equal(await send(id, image.tar), image.tar.length);
    const answer = await seal(id, { size: image.tar.length, digest: digestOf(image.tar) });
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
    const result = answer.json as DeploymentResult;
    assert.equal(result.state, 'COMPLETED');
    assert.ok(await present(image.id));
    // A repeated deploy call (a lost answer) is answered from the journal, with no second deployment.
    const again = await seal(id, { size: image.tar.length, digest: digestOf(image.tar) });
    assert.equal(again.status, 200);
    assert.equal((again.json as DeploymentResult).deploymentId, result.deploymentId);
  });

  test('a zstd stream is decompressed on its way into the load', async () => {
    const image = images.get('zstd');
    assert.ok(image);
    const packed = zstdCompressSync(image.tar);
    const { manifest } = await opening('zstd', 'zstd');
    const id = await open(manifest);
    await send(id, packed);
    const answer = await seal(id, { size: packed.length, digest: digestOf(packed) });
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
    assert.ok(await present(image.id));
  });

  test('a seal that does not match what arrived loads nothing', async () => {
    const image = images.get('liar');
    assert.ok(image);
    const { manifest } = await opening('liar');
    const id = await open(manifest);
    await send(id, image.tar);
    const incomplete = await seal(id, { size: image.tar.length + 1, digest: digestOf(image.tar) });
    assert.equal(incomplete.status, 409);
    assert.equal(incomplete.code, 'FERRY_ERR_UPLOAD_INCOMPLETE');
    const wrong = await seal(id, { size: image.tar.length, digest: digestOf(Buffer.from('another package')) });
    assert.equal(wrong.status, 422);
    assert.equal(wrong.code, 'FERRY_ERR_CHECKSUM_MISMATCH');
    const after = await call(receiver.url, 'PATCH', `/v1/streams/${id}`, Buffer.from('x'), { offset: image.tar.length });
    assert.equal(after.status, 410);
    assert.equal(after.code, 'FERRY_ERR_UPLOAD_INVALIDATED');
    assert.equal(await present(image.id), false);
  });

  test('a part that is not the signed one is refused and may be sent again', async () => {
    const image = images.get('bad-part');
    assert.ok(image);
    const { manifest } = await opening('bad-part');
    const id = await open(manifest);
    const first = image.tar.subarray(0, PART);
    const forged = Buffer.from(first);
    forged[100] = (forged[100] ?? 0) ^ 0xff;
    const refused = await call(receiver.url, 'PATCH', `/v1/streams/${id}`, forged, { offset: 0, digest: digestOf(first) });
    assert.equal(refused.status, 422);
    assert.equal(refused.code, 'FERRY_ERR_CHECKSUM_MISMATCH');
    assert.equal(refused.offset, '0');
    const misplaced = await call(receiver.url, 'PATCH', `/v1/streams/${id}`, first, { offset: 5 });
    assert.equal(misplaced.status, 409);
    assert.equal(misplaced.offset, '0');
    await send(id, image.tar);
    const answer = await seal(id, { size: image.tar.length, digest: digestOf(image.tar) });
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
  });

  test('a part over 16 MiB sent whole gets its 413 while still being sent, and the stream goes on from where it was', async () => {
    const image = images.get('ok');
    assert.ok(image);
    const { manifest } = await opening('ok');
    const id = await open(manifest);
    const first = await send(id, image.tar, 0, PART);
    const oversized = Buffer.alloc(STREAM_MAX_PART_BYTES + 1);
    // Refused from its headers while the client still writes it: the answer must not be lost to
    // the connection's close (a client that never reads it waits until the suite's timeout).
    // It was a race, so a few tries.
    for (let i = 0; i < 3; i += 1) {
      const refused = await call(receiver.url, 'PATCH', `/v1/streams/${id}`, oversized, { offset: first });
      assert.equal(refused.status, 413, JSON.stringify(refused.json));
      assert.equal(refused.code, 'FERRY_ERR_PAYLOAD_TOO_LARGE');
      assert.equal(refused.offset, String(first));
    }
    // None of it was taken: the next part at the same offset is, and the stream deploys.
    assert.equal(await send(id, image.tar, first), image.tar.length);
    const answer = await seal(id, { size: image.tar.length, digest: digestOf(image.tar) });
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
    assert.equal((answer.json as DeploymentResult).state, 'COMPLETED');
  });

  test('an abandoned stream loads nothing', async () => {
    const image = images.get('gone');
    assert.ok(image);
    const { manifest } = await opening('gone');
    const id = await open(manifest);
    await send(id, image.tar, 0, image.tar.length - 512);
    const deleted = await call(receiver.url, 'DELETE', `/v1/streams/${id}`);
    assert.equal(deleted.status, 204);
    const later = await seal(id, { size: image.tar.length, digest: digestOf(image.tar) });
    assert.equal(later.status, 410);
    assert.equal(await present(image.id), false);
  });

  test('a stream deleted as soon as it is opened is dropped, and the receiver goes on', async () => {
    // The delete can come before the load has taken the stream's input (one engine call away):
    // the dropped input's error must reach nobody but the load, never the process.
    for (let i = 0; i < 5; i++) {
      const { manifest } = await opening('gone');
      const id = await open(manifest);
      const deleted = await call(receiver.url, 'DELETE', `/v1/streams/${id}`);
      assert.equal(deleted.status, 204);
    }
    const health = await fetch(`${receiver.url}/healthz`);
    assert.equal(health.status, 200);
  });

  test('an archive that is not an image is refused while it streams', async () => {
    const { manifest } = await opening('ok');
    const id = await open(manifest);
    const junk = Buffer.alloc(4096, 7);
    const answer = await call(receiver.url, 'PATCH', `/v1/streams/${id}`, junk, { offset: 0 });
    // The inspector refuses the first header; the refusal reaches this part or the next request.
    const next = answer.status === 204 ? await seal(id, { size: junk.length, digest: digestOf(junk) }) : answer;
    assert.ok(next.code === 'FERRY_ERR_BAD_ARCHIVE' || next.code === 'FERRY_ERR_UPLOAD_INVALIDATED', JSON.stringify(next.json));
  });

  test('a malformed seal and an unknown stream are refused with typed errors and change nothing', async () => {
    const image = images.get('ok');
    assert.ok(image);
    const { manifest } = await opening('ok');
    const id = await open(manifest);
    const half = await send(id, image.tar, 0, PART);
    for (const body of [{ size: 'all' }, { size: image.tar.length }, { size: 1, digest: 'sha256:x', extra: true }]) {
      const answer = await seal(id, body);
      assert.equal(answer.status, 400, JSON.stringify(answer.json));
      assert.equal(answer.code, 'FERRY_ERR_BAD_REQUEST');
    }
    const unknown = await call(receiver.url, 'PATCH', '/v1/streams/not-a-stream', Buffer.from('x'), { offset: 0 });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.code, 'FERRY_ERR_UPLOAD_NOT_FOUND');
    // The stream took none of it: it still finishes and deploys.
    await send(id, image.tar, half);
    const answer = await seal(id, { size: image.tar.length, digest: digestOf(image.tar) });
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
  });

  test('an opening manifest that carries a size or digest is refused', async () => {
    const { manifest } = await opening('ok');
    const answer = await call(receiver.url, 'POST', '/v1/streams', Buffer.from(JSON.stringify({ ...manifest, package: { ...manifest.package, size: 10 } })), { type: 'application/json' });
    assert.equal(answer.status, 400);
    assert.equal(answer.code, 'FERRY_ERR_BAD_MANIFEST');
  });

  test('a receiver killed mid-stream carries the stream over: HEAD and PATCH answer the offset it held, and the stream deploys', async () => {
    const image = images.get('killed');
    assert.ok(image);
    const { manifest } = await opening('killed');
    const id = await open(manifest);
    const half = await send(id, image.tar, 0, Math.floor(image.tar.length / 2));
    const dataDir = receiver.dataDir;
    const exited = new Promise((r) => receiver.child.once('exit', r));
    receiver.child.kill('SIGKILL');
    await exited;
    receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_DATA_DIR: dataDir });
    const head = await call(receiver.url, 'HEAD', `/v1/streams/${id}`);
    assert.equal(head.status, 204);
    assert.equal(Number(head.offset), half);
    // A part sent again from an offset already held is refused with the offset the receiver holds.
    const behind = await call(receiver.url, 'PATCH', `/v1/streams/${id}`, image.tar.subarray(0, PART), { offset: 0 });
    assert.equal(behind.status, 409);
    assert.equal(Number(behind.offset), half);
    // The same opening manifest again (an answer lost at open) names the same stream and its offset.
    const again = await call(receiver.url, 'POST', '/v1/streams', Buffer.from(JSON.stringify(manifest)), { type: 'application/json' });
    assert.equal(again.status, 200, JSON.stringify(again.json));
    assert.deepEqual(again.json, { streamId: id, offset: half });
    assert.equal(await present(image.id), false);
    await send(id, image.tar, half);
    const answer = await seal(id, { size: image.tar.length, digest: digestOf(image.tar) });
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
    assert.equal((answer.json as DeploymentResult).state, 'COMPLETED');
    assert.equal(await present(image.id), true);
  });

  test('a stream the sender abandons leaves no files in the data directory', async () => {
    const image = images.get('gone');
    assert.ok(image);
    const { manifest } = await opening('gone');
    const id = await open(manifest);
    await send(id, image.tar, 0, PART * 2);
    assert.equal((await call(receiver.url, 'DELETE', `/v1/streams/${id}`)).status, 204);
    const streamsDir = join(receiver.dataDir, 'streams');
    for (;;) {
      const left = (await readdir(streamsDir)).filter((name) => name.startsWith(id));
      if (left.length === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  });
});
