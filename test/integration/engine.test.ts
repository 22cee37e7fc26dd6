/**
 * The Engine API client (libs/docker/src/engine.ts) against the stack's real engines: JSON calls,
 * an engine's refusal, a streamed save into a streamed load, aborts of streamed calls, and the
 * socket errors of an engine that is not there.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { EngineError, createDockerClient, readProgress, toFerryError } from '@ferry/docker';
import { isFerryError } from '@ferry/protocol';
import { removeImages } from '../helpers/cleanup.ts';
import { buildTestImage, freePort } from '../helpers/ferry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const build = createDockerClient(s.buildDockerHost);
const target = createDockerClient(s.targetDockerHost);
const repo = `ferry-engine-${run}`;

describe('engine client', { timeout: 120_000 }, () => {
  let imageId = '';

  before(async () => {
    imageId = await buildTestImage(s.buildDockerHost, `${repo}:1`, `engine-${run}`);
  });

  after(async () => {
    await removeImages(dockerodeFor(s.targetDockerHost), [imageId]);
    await removeImages(dockerodeFor(s.buildDockerHost), [`${repo}:1`]);
  });

  it('pings the engine and reads its info and version', async () => {
    assert.equal(await target.ping(), 'OK');
    const info = await target.info();
    assert.equal(typeof info.ServerVersion, 'string');
    assert.equal(typeof info.Driver, 'string');
    assert.equal(typeof (await target.version()).ApiVersion, 'string');
    assert.equal(target.socketPath, s.targetDockerHost.replace(/^unix:\/\//, ''));
  });

  it('answers a missing image with a 404 EngineError carrying the engine words', async () => {
    const missing = `ferry-engine-missing-${run}:1`;
    const err: unknown = await target.inspectImage(missing).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof EngineError, String(err));
    assert.equal(err.statusCode, 404);
    assert.match((err.json as { message: string }).message, /No such image/i);
    const ferry = toFerryError(err, 'FERRY_ERR_DOCKER', `inspect image ${missing}`);
    assert.ok(isFerryError(ferry, 'FERRY_ERR_DOCKER'));
    assert.deepEqual(ferry.details, { dockerStatus: 404 });
  });

  it('lists with JSON filters and inspects by id', async () => {
    const listed = await build.listImages({ filters: { reference: [`${repo}:1`] } });
    assert.deepEqual(listed.map((image) => image.Id), [imageId]);
    const inspected = await build.inspectImage(`${repo}:1`);
    assert.equal(inspected.Id, imageId);
    assert.equal(inspected.RootFS?.Layers?.length, 3);
  });

  it('streams a save from one engine straight into a load on the other', async () => {
    const saved = await build.stream({ path: `/images/${imageId}/get` });
    const answer = await target.stream({ method: 'POST', path: '/images/load', query: { quiet: true }, body: saved });
    const lines: string[] = [];
    for await (const event of readProgress(answer)) {
      assert.equal(event.type, 'message', JSON.stringify(event));
      if (event.type === 'message') lines.push(event.message.stream ?? '');
    }
    assert.ok(lines.some((line) => line.includes(`Loaded image ID: ${imageId}`)), lines.join(''));
    assert.equal((await dockerodeFor(s.targetDockerHost).getImage(imageId).inspect()).Id, imageId);
  });

  it('an abort during a streamed answer destroys it', async () => {
    const controller = new AbortController();
    const saved = await build.stream({ path: `/images/${imageId}/get`, signal: controller.signal });
    let bytes = 0;
    await assert.rejects(async () => {
      for await (const chunk of saved as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        controller.abort();
      }
    }, { name: 'AbortError' });
    assert.ok(bytes > 0);
    assert.equal(saved.destroyed, true);
  });

  it('an abort while the request body is still being sent rejects the call', async () => {
    const controller = new AbortController();
    // A body that never ends: the engine waits for the rest of the archive until the abort.
    const body = new Readable({ read() {} });
    body.push(Buffer.alloc(512));
    const pending = target.stream({ method: 'POST', path: '/images/load', query: { quiet: true }, body, signal: controller.signal });
    setImmediate(() => controller.abort());
    await assert.rejects(pending, { name: 'AbortError' });
    assert.equal(body.destroyed, true);
  });

  it('a JSON call whose engine answered 304 (start of a running container) resolves', async () => {
    const docker = dockerodeFor(s.targetDockerHost);
    const name = `ferry-engine-${run}`;
    const created = await target.json<{ Id: string }>({ method: 'POST', path: '/containers/create', query: { name }, body: {
      Image: imageId, Entrypoint: ['/bin/busybox', 'sleep', '600'], Labels: {}, Env: [], HostConfig: { NetworkMode: 'none', RestartPolicy: { Name: 'no' } },
    } });
    try {
      assert.ok(created?.Id);
      await target.json({ method: 'POST', path: `/containers/${created.Id}/start` });
      assert.equal(await target.json({ method: 'POST', path: `/containers/${created.Id}/start` }), undefined);
      assert.equal((await target.inspectContainer(name)).State.Running, true);
      await target.json({ method: 'POST', path: `/containers/${created.Id}/stop`, query: { t: 0 } });
      assert.equal(await target.json({ method: 'POST', path: `/containers/${created.Id}/stop`, query: { t: 0 } }), undefined);
    } finally {
      await docker.getContainer(name).remove({ force: true }).catch(() => undefined);
    }
  });

  it('an engine that is not there gives the socket error code, FERRY_ERR_DOCKER_UNAVAILABLE once mapped', async () => {
    const port = await freePort();
    const cases = [
      { host: `unix:///tmp/fx-${run}-none/d.sock`, code: 'ENOENT' },
      { host: `tcp://127.0.0.1:${port}`, code: 'ECONNREFUSED' },
    ];
    for (const { host, code } of cases) {
      const err: unknown = await createDockerClient(host).ping().then(() => undefined, (e: unknown) => e);
      assert.equal((err as { code?: unknown } | undefined)?.code, code, host);
      assert.ok(isFerryError(toFerryError(err, 'FERRY_ERR_DOCKER', 'ping the engine'), 'FERRY_ERR_DOCKER_UNAVAILABLE'), host);
    }
  });
});
