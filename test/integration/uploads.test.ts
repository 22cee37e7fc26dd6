/**
 * The resumable upload against a real `ferry receiver` process on real sockets, deploying to the
 * stack's target engine: bad offsets, oversized and corrupted parts, cut connections, concurrent
 * writers, a SIGKILLed receiver, a full disk, expiry, and a package whose whole-file digest lies.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readdir, rm, stat, statfs } from 'node:fs/promises';
import { request, type IncomingHttpHeaders } from 'node:http';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { signRequest } from '@ferry/auth';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { digestFile, digestOf } from '@ferry/integrity';
import { UPLOAD_MAX_PART_BYTES, type DeploymentResult, type ManifestInput } from '@ferry/protocol';
import { ResumableClient, buildPackage, inspectImage, uploadResumable, type BuiltPackage } from '@ferry/sender';
import { buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { removeService } from '../helpers/cleanup.ts';
import { lines, rawRequestWriteFirst, signed } from '../helpers/raw-http.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { testKey, trustFile, keyEnv } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`up-${run}`);
const hostId = `up-${run}`;
const repo = `ferry-up-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const services: string[] = [];

interface Answer { status: number; headers: IncomingHttpHeaders; code: string | undefined }

/** One signed request with full control of headers and body; `offset` is what gets signed. */
function call(url: string, method: string, path: string, options: {
  body?: Buffer; digest?: string; offset?: string; headers?: Record<string, string | string[]>; headersOnly?: boolean;
} = {}): Promise<Answer> {
  const body = options.body ?? Buffer.alloc(0);
  const headers = {
    ...signRequest({
      method, path, contentDigest: options.digest ?? digestOf(body), audience: hostId, ...key,
      ...(options.offset === undefined ? {} : { offset: options.offset }),
    }),
    'content-length': String(body.length),
    ...(options.offset === undefined ? {} : { 'upload-offset': options.offset }),
    ...options.headers,
  };
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path, method, headers });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let code: string | undefined;
        try {
          code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
        } catch {
          code = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, code });
        req.destroy();
      });
    });
    // The receiver may answer and close before the body is all written; the answer is what counts.
    req.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err); });
    if (options.headersOnly) req.flushHeaders();
    else req.end(body);
  });
}

/**
 * A PATCH on a raw socket that sends the head and the first `sendBytes` of `part`, then waits for
 * `until` and destroys the socket (or, with `finish`, sends the rest and reads the answer).
 */
function openPatch(url: string, uploadId: string, offset: number, part: Buffer, sendBytes: number) {
  const { hostname, port } = new URL(url);
  const path = `/v1/uploads/${uploadId}`;
  const headers = {
    ...signRequest({ method: 'PATCH', path, contentDigest: digestOf(part), audience: hostId, offset, ...key }),
    'content-type': 'application/offset+octet-stream', 'content-length': String(part.length), 'upload-offset': String(offset),
  };
  const socket = connect(Number(port), hostname);
  let received = '';
  socket.setEncoding('latin1').on('data', (c: string) => { received += c; });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.write([`PATCH ${path} HTTP/1.1`, `Host: ${hostname}:${port}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', ''].join('\r\n'));
  socket.write(part.subarray(0, sendBytes));
  return {
    cut: async () => { socket.resetAndDestroy(); await closed; },
    finish: async (): Promise<number> => {
      socket.write(part.subarray(sendBytes));
      await until(() => received.includes('\r\n\r\n') || socket.destroyed);
      socket.destroy();
      return Number(received.split(' ')[1]);
    },
  };
}

/**
 * A loopback TCP proxy that drops the client's connection once it has carried a random number of
 * bytes, `cuts` times in all: a link that fails mid-request, below HTTP.
 */
async function droppingProxy(targetUrl: string, cuts: number): Promise<{ url: string; cutsDone: () => number; close: () => Promise<void> }> {
  const { hostname, port } = new URL(targetUrl);
  let done = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(port), hostname);
    sockets.add(client).add(upstream);
    const limit = randomInt(2000, 300_000);
    let seen = 0;
    client.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > limit && done < cuts) {
        done += 1;
        client.resetAndDestroy();
        upstream.destroy();
        return;
      }
      upstream.write(chunk);
    });
    upstream.pipe(client);
    client.on('error', () => upstream.destroy()).on('close', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${address.port}`,
    cutsDone: () => done,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const spoolPath = (receiver: ReceiverProcess, uploadId: string): string => join(receiver.dataDir, 'uploads', `${uploadId}.bin`);
const sizeOf = async (path: string): Promise<number> => (await stat(path)).size;

/**
 * A receiver without a persistent nonce store refuses requests signed (in whole seconds) before
 * it started; the first request waits for the next second.
 */
async function startFresh(env: Record<string, string>): Promise<ReceiverProcess> {
  const receiver = await startReceiverProcess(env);
  const started = Math.floor(Date.now() / 1000);
  await until(() => Math.floor(Date.now() / 1000) > started);
  return receiver;
}

async function until(check: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await check())) await new Promise((r) => setTimeout(r, 50));
}

async function readRange(path: string, offset: number, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, offset);
    return buffer;
  } finally {
    await handle.close();
  }
}

describe('resumable uploads on a real receiver', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  let client: ResumableClient;
  let pkg: BuiltPackage;
  let liar: BuiltPackage;
  let bytes: Buffer;
  const extraReceivers: ReceiverProcess[] = [];
  const mounts: string[] = [];
  const dirs: string[] = [];
  const receiverEnv = (extra: Record<string, string> = {}): Record<string, string> => ({
    DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, ...extra,
  });

  /** A manifest for the test package, deployed as its own service on its own port. */
  const manifestFor = async (built: BuiltPackage, overrides: Partial<ManifestInput['package']> = {}): Promise<{ json: string; service: string; port: number }> => {
    const service = `up-${run}-${services.length}`;
    services.push(service);
    const port = await freePort();
    const manifest: ManifestInput = {
      schema: 'ferry.manifest/v1', deploymentId: crypto.randomUUID(), createdAt: new Date().toISOString(),
      image: { ref: built.image.ref, id: built.image.id, diffIds: built.image.diffIds },
      package: { format: 'docker-archive', compression: built.compression, size: built.size, digest: built.digest, ...overrides },
      service: { name: service, env: { PORT: String(port) }, network: 'host', health: { type: 'http', url: `http://127.0.0.1:${port}/healthz`, retries: 60, intervalMs: 100 } },
    };
    return { json: JSON.stringify(manifest), service, port };
  };

  /** Sends the package from `from` to the end in one PATCH, waiting out a writer still busy. */
  const finishUpload = async (c: ResumableClient, uploadId: string, from: number): Promise<number> => {
    for (;;) {
      try {
        return (await c.patchFile(uploadId, pkg.path, from, pkg.size - from)).offset;
      } catch (err) {
        if ((err as { code?: string }).code !== 'FERRY_ERR_UPLOAD_BUSY') throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };

  const assertServes = async (port: number): Promise<void> => {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(res.status, 200);
  };

  before(async () => {
    await Promise.all([
      buildTestImage(s.buildDockerHost, `${repo}:ok`, `ok-${run}`),
      buildTestImage(s.buildDockerHost, `${repo}:liar`, `liar-${run}`),
    ]);
    const images = new ImageStore(createDockerClient(s.buildDockerHost));
    pkg = await buildPackage(images, await inspectImage(images, `${repo}:ok`), 'zstd');
    liar = await buildPackage(images, await inspectImage(images, `${repo}:liar`), 'zstd');
    bytes = await readRange(pkg.path, 0, pkg.size);
    receiver = await startFresh(receiverEnv());
    client = new ResumableClient({ url: receiver.url, credentials: key, audience: hostId });
  });

  after(async () => {
    await receiver?.stop();
    // A SIGKILLed receiver has exited already; stop() would wait for an exit that has happened.
    for (const r of extraReceivers) if (r.child.signalCode === null) await r.stop().catch(() => undefined);
    for (const dir of mounts) {
      try {
        execFileSync('umount', [dir]);
      } catch {
        // already unmounted
      }
      await rm(dir, { recursive: true, force: true });
    }
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
    for (const service of services) {
      await removeService(target, service);
    }
    for (const ref of [`${repo}:ok`, `${repo}:liar`]) {
      await target.getImage(ref).remove({ force: true }).catch(() => undefined);
      await dockerodeFor(s.buildDockerHost).getImage(ref).remove({ force: true }).catch(() => undefined);
    }
    await pkg?.remove();
    await liar?.remove();
  });

  test('bad Upload-Offset values get 400 and change nothing; a wrong offset gets 409 with the right one and writes nothing', async () => {
    const { json } = await manifestFor(pkg);
    const { uploadId } = await client.create(json);
    const first = Math.floor(pkg.size / 4);
    assert.equal((await client.patchFile(uploadId, pkg.path, 0, first)).offset, first);
    const path = `/v1/uploads/${uploadId}`;
    const part = bytes.subarray(first, first + 100);
    const partHeaders = { 'content-type': 'application/offset+octet-stream' };

    for (const bad of ['-1', 'abc', '99999999999999999999', '1.5', '0x10', '+7', '01', '1e3']) {
      const answer = await call(receiver.url, 'PATCH', path, { body: part, offset: bad, headers: partHeaders });
      assert.deepEqual([answer.status, answer.code], [400, 'FERRY_ERR_BAD_OFFSET'], `Upload-Offset: ${bad}`);
    }
    // A repeated header is refused too; the signature check sees it first and says so.
    const duplicated = await call(receiver.url, 'PATCH', path, { body: part, offset: String(first), headers: { ...partHeaders, 'upload-offset': [String(first), String(first)] } });
    assert.ok([400, 401].includes(duplicated.status), `duplicated Upload-Offset: ${duplicated.status} ${duplicated.code}`);
    const missing = await call(receiver.url, 'PATCH', path, { body: part, headers: partHeaders });
    assert.deepEqual([missing.status, missing.code], [400, 'FERRY_ERR_BAD_OFFSET']);

    assert.equal((await client.head(uploadId)).offset, first);
    assert.equal(await sizeOf(spoolPath(receiver, uploadId)), first);

    for (const wrong of [first - 1, first + 100, 0]) {
      const answer = await call(receiver.url, 'PATCH', path, { body: part, offset: String(wrong), headers: partHeaders });
      assert.deepEqual([answer.status, answer.code, answer.headers['upload-offset']], [409, 'FERRY_ERR_OFFSET_MISMATCH', String(first)], `offset ${wrong}`);
    }
    assert.equal((await client.head(uploadId)).offset, first);
    assert.equal(await sizeOf(spoolPath(receiver, uploadId)), first);
    assert.equal(digestOf(await readRange(spoolPath(receiver, uploadId), 0, first)), digestOf(bytes.subarray(0, first)));
  });

  test('a part past Upload-Length or over the per-request limit gets 413 and invalidates the upload', async () => {
    const partHeaders = { 'content-type': 'application/offset+octet-stream' };
    const { json } = await manifestFor(pkg);
    const { uploadId } = await client.create(json);
    await client.patchFile(uploadId, pkg.path, 0, 1000);
    const tooLong = Buffer.concat([bytes.subarray(1000), Buffer.from('x')]);
    const answer = await call(receiver.url, 'PATCH', `/v1/uploads/${uploadId}`, { body: tooLong, offset: '1000', headers: partHeaders });
    assert.deepEqual([answer.status, answer.code], [413, 'FERRY_ERR_PAYLOAD_TOO_LARGE']);
    assert.equal(existsSync(spoolPath(receiver, uploadId)), false, 'the spool is deleted');
    const later = await call(receiver.url, 'PATCH', `/v1/uploads/${uploadId}`, { body: bytes.subarray(1000, 2000), offset: '1000', headers: partHeaders });
    assert.deepEqual([later.status, later.code], [410, 'FERRY_ERR_UPLOAD_INVALIDATED']);
    assert.equal((await call(receiver.url, 'HEAD', `/v1/uploads/${uploadId}`)).status, 410);

    // A declared 600 MiB package: the part limit, not the upload's length, is what refuses it.
    const big = await manifestFor(pkg, { size: 600 * 1024 ** 2 });
    const second = await client.create(big.json);
    const huge = await call(receiver.url, 'PATCH', `/v1/uploads/${second.uploadId}`, {
      digest: digestOf('x'), offset: '0', headersOnly: true,
      headers: { ...partHeaders, 'content-length': String(UPLOAD_MAX_PART_BYTES + 1) },
    });
    assert.deepEqual([huge.status, huge.code], [413, 'FERRY_ERR_PAYLOAD_TOO_LARGE']);
    assert.equal((await call(receiver.url, 'HEAD', `/v1/uploads/${second.uploadId}`)).status, 410);
  });

  test('a part refused from its headers while its body is still being sent gets its answer (409, 413)', async () => {
    const partHeaders = { 'content-type': 'application/offset+octet-stream' };
    const oversized = Buffer.alloc(16 * 1024 ** 2 + 1);
    assert.ok(oversized.length > pkg.size, 'the part is longer than the package');
    const { json } = await manifestFor(pkg);
    const { uploadId } = await client.create(json);
    await client.patchFile(uploadId, pkg.path, 0, 1000);
    // The answer must not be lost to the connection's close (a client that never reads it waits
    // until the suite's timeout). It was a race, so a few tries: a 409 leaves the upload as it was.
    for (let i = 0; i < 3; i += 1) {
      const misplaced = await call(receiver.url, 'PATCH', `/v1/uploads/${uploadId}`, { body: oversized, offset: '0', headers: partHeaders });
      assert.deepEqual([misplaced.status, misplaced.code, misplaced.headers['upload-offset']], [409, 'FERRY_ERR_OFFSET_MISMATCH', '1000']);
    }
    const tooLong = await call(receiver.url, 'PATCH', `/v1/uploads/${uploadId}`, { body: oversized, offset: '1000', headers: partHeaders });
    assert.deepEqual([tooLong.status, tooLong.code], [413, 'FERRY_ERR_PAYLOAD_TOO_LARGE']);
    assert.equal((await call(receiver.url, 'HEAD', `/v1/uploads/${uploadId}`)).status, 410);
  });

  test('a manifest far over its limit gets its 413 while the client is still sending it', async () => {
    // Sixteen MiB the client writes whole before it reads anything: a reset would drop the answer
    // waiting in its socket, so the receiver has to read the rest and close gracefully.
    const huge = Buffer.alloc(16 * 1024 ** 2, 0x20);
    const answer = await rawRequestWriteFirst(receiver.url, {
      head: ['POST /v1/uploads HTTP/1.1', 'Host: receiver', ...lines({ ...signed(key, hostId, { method: 'POST', path: '/v1/uploads', digest: digestOf(huge) }), 'content-type': 'application/json', 'content-length': String(huge.length) })],
      body: huge,
    });
    assert.equal(answer.written, undefined, 'the whole body was taken');
    assert.deepEqual([answer.status, answer.code], [413, 'FERRY_ERR_PAYLOAD_TOO_LARGE']);
  });

  test('a connection cut at a random byte keeps only acknowledged bytes; resuming gives the identical BLAKE3 and deploys', async () => {
    const { json, port } = await manifestFor(pkg);
    const { uploadId } = await client.create(json);
    const acknowledged = randomInt(1, Math.floor(pkg.size / 2));
    await client.patchFile(uploadId, pkg.path, 0, acknowledged);
    const cutAt = randomInt(1, pkg.size - acknowledged);
    const patch = openPatch(receiver.url, uploadId, acknowledged, bytes.subarray(acknowledged), cutAt);
    // The cut comes once the receiver has written some of those bytes: they must not count.
    await until(async () => (await sizeOf(spoolPath(receiver, uploadId))) > acknowledged);
    await patch.cut();

    const position = await client.head(uploadId);
    assert.equal(position.offset, acknowledged);
    assert.ok(position.offset <= acknowledged + cutAt);
    await until(async () => (await sizeOf(spoolPath(receiver, uploadId))) === acknowledged);

    assert.equal(await finishUpload(client, uploadId, acknowledged), pkg.size);
    assert.equal((await digestFile(spoolPath(receiver, uploadId))).digest, pkg.digest, 'the assembled file is the package');
    const result = await client.deploy(uploadId);
    assert.equal(result.state, 'COMPLETED');
    await assertServes(port);
    // A retried deploy (a lost answer) gets the stored outcome, not a second deployment.
    const again: DeploymentResult = await client.deploy(uploadId);
    assert.deepEqual([again.deploymentId, again.containerId], [result.deploymentId, result.containerId]);
    // A PATCH after completion is refused.
    const late = await call(receiver.url, 'PATCH', `/v1/uploads/${uploadId}`, { body: Buffer.from('x'), offset: String(pkg.size), headers: { 'content-type': 'application/offset+octet-stream' } });
    assert.deepEqual([late.status, late.code], [410, 'FERRY_ERR_UPLOAD_COMPLETE']);
  });

  test('a part whose bytes do not match its signed digest is discarded and the offset stays', async () => {
    const { json } = await manifestFor(pkg);
    const { uploadId } = await client.create(json);
    const half = Math.floor(pkg.size / 2);
    const part = bytes.subarray(0, half);
    const corrupted = Buffer.from(part);
    corrupted[randomInt(0, half)] ^= 0x01;
    const answer = await call(receiver.url, 'PATCH', `/v1/uploads/${uploadId}`, {
      body: corrupted, digest: digestOf(part), offset: '0', headers: { 'content-type': 'application/offset+octet-stream' },
    });
    assert.deepEqual([answer.status, answer.code, answer.headers['upload-offset']], [422, 'FERRY_ERR_CHECKSUM_MISMATCH', '0']);
    assert.equal((await client.head(uploadId)).offset, 0);
    assert.equal(await sizeOf(spoolPath(receiver, uploadId)), 0);
    assert.equal((await client.patchFile(uploadId, pkg.path, 0, half)).offset, half);
  });

  test('two concurrent PATCHes on one upload never interleave: the second gets 409', async () => {
    const { json } = await manifestFor(pkg);
    const { uploadId } = await client.create(json);
    const part = bytes.subarray(0, Math.floor(pkg.size / 2));
    const first = openPatch(receiver.url, uploadId, 0, part, Math.floor(part.length / 2));
    await until(async () => (await sizeOf(spoolPath(receiver, uploadId))) > 0);

    const rival = Buffer.alloc(part.length, 0x5a);
    const second = await call(receiver.url, 'PATCH', `/v1/uploads/${uploadId}`, { body: rival, offset: '0', headers: { 'content-type': 'application/offset+octet-stream' } });
    assert.deepEqual([second.status, second.code, second.headers['upload-offset']], [409, 'FERRY_ERR_UPLOAD_BUSY', '0']);

    assert.equal(await first.finish(), 204);
    assert.equal((await client.head(uploadId)).offset, part.length);
    assert.equal(digestOf(await readRange(spoolPath(receiver, uploadId), 0, part.length)), digestOf(part), 'only the first writer\'s bytes');
    const retry = await call(receiver.url, 'PATCH', `/v1/uploads/${uploadId}`, { body: rival, offset: '0', headers: { 'content-type': 'application/offset+octet-stream' } });
    assert.deepEqual([retry.status, retry.code, retry.headers['upload-offset']], [409, 'FERRY_ERR_OFFSET_MISMATCH', String(part.length)]);
  });

  test('a receiver SIGKILLed mid-PATCH keeps every acknowledged offset; the upload resumes and deploys', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-up-kill-'));
    dirs.push(dataDir);
    const first = await startFresh(receiverEnv({ FERRY_DATA_DIR: dataDir }));
    extraReceivers.push(first);
    const c1 = new ResumableClient({ url: first.url, credentials: key, audience: hostId });
    const { json, port } = await manifestFor(pkg);
    const { uploadId } = await c1.create(json);
    const acknowledged = randomInt(1, Math.floor(pkg.size / 2));
    await c1.patchFile(uploadId, pkg.path, 0, acknowledged);
    const patch = openPatch(first.url, uploadId, acknowledged, bytes.subarray(acknowledged), Math.floor((pkg.size - acknowledged) / 2));
    await until(async () => (await sizeOf(spoolPath(first, uploadId))) > acknowledged);
    // Had it exited on its own, 'exit' would never come again and the test would wait forever.
    assert.equal(first.child.exitCode ?? first.child.signalCode, null, `the receiver exited by itself: ${JSON.stringify(first.logs.slice(-5))}`);
    const exited = new Promise((r) => first.child.once('exit', r));
    first.child.kill('SIGKILL');
    await exited;
    await patch.cut();
    assert.ok((await sizeOf(spoolPath(first, uploadId))) > acknowledged, 'unacknowledged bytes were on disk at the kill');

    const second = await startFresh(receiverEnv({ FERRY_DATA_DIR: dataDir }));
    extraReceivers.push(second);
    const c2 = new ResumableClient({ url: second.url, credentials: key, audience: hostId });
    assert.equal((await c2.head(uploadId)).offset, acknowledged);
    assert.equal(await sizeOf(spoolPath(second, uploadId)), acknowledged, 'the spool is cut back to the acknowledged offset');
    assert.equal(await finishUpload(c2, uploadId, acknowledged), pkg.size);
    assert.equal((await c2.deploy(uploadId)).state, 'COMPLETED');
    await assertServes(port);
  });

  test('a full disk mid-upload answers 507, keeps the offset consistent, and the upload resumes once space returns', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-up-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=80m', 'tmpfs', dataDir]);
    mounts.push(dataDir);
    const full = await startFresh(receiverEnv({ FERRY_DATA_DIR: dataDir, FERRY_MIN_FREE_BYTES: '0' }));
    extraReceivers.push(full);
    const c = new ResumableClient({ url: full.url, credentials: key, audience: hostId });
    const { json, port } = await manifestFor(pkg);
    const { uploadId } = await c.create(json);
    const first = Math.floor(pkg.size / 4);
    await c.patchFile(uploadId, pkg.path, 0, first);
    // A second upload that says its package is 32 MiB, opened while there is room: a 16 MiB part
    // sent to it is still mostly on the wire when the disk fills.
    const big = await c.create((await manifestFor(pkg, { size: 32 * 1024 ** 2 })).json);

    // Leave less room than the rest of the package needs.
    const fs = await statfs(dataDir);
    const filler = join(dataDir, 'filler');
    const fillBytes = fs.bavail * fs.bsize - Math.floor((pkg.size - first) / 2);
    const handle = await open(filler, 'w');
    await handle.write(Buffer.alloc(fillBytes));
    await handle.close();

    const refused = await c.patchFile(uploadId, pkg.path, first, pkg.size - first).then(() => undefined, (err: unknown) => err as { code: string; details?: Record<string, unknown> });
    assert.equal(refused?.code, 'FERRY_ERR_DISK_FULL');
    assert.equal(refused?.details?.uploadOffset, first);
    // From a client that writes its whole part before it reads the answer: the 507 comes while
    // most of the part is still on its way, and must not be lost to a reset.
    const part = Buffer.alloc(16 * 1024 ** 2, 0x5a);
    const path = `/v1/uploads/${big.uploadId}`;
    const raw = await rawRequestWriteFirst(full.url, {
      head: [`PATCH ${path} HTTP/1.1`, 'Host: receiver', ...lines({
        ...signed(key, hostId, { method: 'PATCH', path, digest: digestOf(part), offset: 0 }),
        'content-type': 'application/offset+octet-stream', 'content-length': String(part.length), 'upload-offset': '0',
      })],
      body: part,
    });
    assert.equal(raw.written, undefined, 'the whole part was taken');
    assert.deepEqual([raw.status, raw.code], [507, 'FERRY_ERR_DISK_FULL']);
    assert.equal((await c.head(big.uploadId)).offset, 0);
    assert.equal(await sizeOf(spoolPath(full, big.uploadId)), 0);
    assert.equal((await c.head(uploadId)).offset, first);
    assert.equal(await sizeOf(spoolPath(full, uploadId)), first);

    await rm(filler);
    assert.equal(await finishUpload(c, uploadId, first), pkg.size);
    assert.equal((await c.deploy(uploadId)).state, 'COMPLETED');
    await assertServes(port);
    await full.stop();
  });

  test('unknown and expired uploads get 404/410 and an expired spool is deleted', async () => {
    for (const id of ['0123456789abcdef0123456789abcdef', 'not-an-id']) {
      const head = await call(receiver.url, 'HEAD', `/v1/uploads/${id}`);
      assert.equal(head.status, 404);
      const patch = await call(receiver.url, 'PATCH', `/v1/uploads/${id}`, { body: Buffer.from('x'), offset: '0', headers: { 'content-type': 'application/offset+octet-stream' } });
      assert.deepEqual([patch.status, patch.code], [404, 'FERRY_ERR_UPLOAD_NOT_FOUND']);
    }

    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-up-ttl-'));
    dirs.push(dataDir);
    const short = await startFresh(receiverEnv({ FERRY_DATA_DIR: dataDir, FERRY_UPLOAD_TTL_SECONDS: '1' }));
    extraReceivers.push(short);
    const c = new ResumableClient({ url: short.url, credentials: key, audience: hostId });
    const { json } = await manifestFor(pkg);
    const { uploadId } = await c.create(json);
    await c.patchFile(uploadId, pkg.path, 0, 1000).catch(() => undefined);
    const uploads = join(dataDir, 'uploads');
    await until(async () => (await readdir(uploads)).length === 0);
    const patch = await call(short.url, 'PATCH', `/v1/uploads/${uploadId}`, { body: Buffer.from('x'), offset: '0', headers: { 'content-type': 'application/offset+octet-stream' } });
    assert.ok(['FERRY_ERR_UPLOAD_EXPIRED', 'FERRY_ERR_UPLOAD_NOT_FOUND'].includes(patch.code ?? ''), `${patch.status} ${patch.code}`);
    assert.ok([404, 410].includes(patch.status));
    await short.stop();
  });

  test('a finished file whose BLAKE3 differs from the signed manifest is refused, deleted, and never loaded', async () => {
    const { json } = await manifestFor(liar, { digest: digestOf(randomBytes(32)) });
    const { uploadId } = await client.create(json);
    const half = Math.floor(liar.size / 2);
    assert.equal((await client.patchFile(uploadId, liar.path, 0, half)).offset, half);
    const refused = await client.patchFile(uploadId, liar.path, half, liar.size - half).then(() => undefined, (err: unknown) => err as { code: string });
    assert.equal(refused?.code, 'FERRY_ERR_CHECKSUM_MISMATCH');
    assert.equal(existsSync(spoolPath(receiver, uploadId)), false, 'the spool is deleted');
    const deploy = await call(receiver.url, 'POST', `/v1/uploads/${uploadId}/deploy`);
    assert.deepEqual([deploy.status, deploy.code], [410, 'FERRY_ERR_UPLOAD_INVALIDATED']);
    await assert.rejects(target.getImage(liar.image.id).inspect(), (err: { statusCode?: number }) => err.statusCode === 404, 'no image was loaded');
  });

  test('the sender resumes over a link that drops twice mid-upload and deploys', async () => {
    const proxy = await droppingProxy(receiver.url, 2);
    try {
      const { json, port } = await manifestFor(pkg);
      const outcome = await uploadResumable({
        url: proxy.url, credentials: key, audience: hostId, manifestJson: json,
        packagePath: pkg.path, packageSize: pkg.size, partBytes: 128 * 1024,
        // Short pauses: the schedule itself is test/unit/retry.test.ts's.
        clock: { random: () => 0.5, sleep: () => new Promise((resolve) => setTimeout(resolve, 20)) },
      });
      assert.equal(proxy.cutsDone(), 2);
      assert.ok(outcome.retries >= 2, `retries: ${outcome.retries}`);
      assert.equal(outcome.result.state, 'COMPLETED');
      await assertServes(port);
    } finally {
      await proxy.close();
    }
  });

  test('ferry push --resumable-threshold 1 goes through the resumable upload and deploys', async () => {
    const service = `up-${run}-push`;
    services.push(service);
    const port = await freePort();
    const result = await runFerry([
      'push', `${repo}:ok`, '--to', receiver.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
      // One target is streamed by default; the spooled package is what takes the resumable path.
      '--health', `http://127.0.0.1:${port}/healthz`, '--resumable-threshold', '1', '--no-stream', '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) });
    assert.equal(result.code, 0, result.stderr + result.stdout);
    const summary = JSON.parse(result.stdout) as { deploymentId: string; deployment: { state: string } };
    assert.equal(summary.deployment.state, 'COMPLETED');
    await assertServes(port);
    assert.ok(receiver.logs.some((l) => l.msg === 'upload created' && l.deploymentId === summary.deploymentId), 'the receiver saw a resumable upload');
  });
});
