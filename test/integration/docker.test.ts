import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { createGunzip, gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import type Dockerode from 'dockerode';
import { isFerryError } from '@ferry/protocol';
import { ContainerRunner, ImageStore, createDockerClient, type ContainerSpec } from '@ferry/docker';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const ROOT = new URL('../..', import.meta.url).pathname;
const RUN = `ferry-it-${process.pid}-${randomBytes(3).toString('hex')}`;
const RUN_LABEL = 'ferry.test.run';
const TIMEOUT = 120_000;

const { buildDockerHost, targetDockerHost } = stack();
const buildDocker = dockerodeFor(buildDockerHost);
const targetDocker = dockerodeFor(targetDockerHost);
const buildImages = new ImageStore(createDockerClient(buildDockerHost));
const targetImages = new ImageStore(createDockerClient(targetDockerHost));
const runner = new ContainerRunner(createDockerClient(targetDockerHost));

/** Everything this run created, removed in `after` even when a test failed half-way. */
const created = { build: new Set<string>(), target: new Set<string>() };

function buildTestImage(host: string, tag: string, variant: string): string {
  const out = execFileSync('bash', [`${ROOT}deploy/lib/test-image.sh`, host, tag, variant], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const id = out.trim().split('\n').at(-1) ?? '';
  assert.match(id, /^sha256:[0-9a-f]{64}$/);
  return id;
}

async function bytesOf(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/**
 * The target engine is shared with other test runs, so "no new image" cannot be a plain before/after
 * comparison: images built by deploy/lib/test-image.sh (labelled with their variant) come and go.
 */
async function strayImages(docker: Dockerode, before: Set<string>): Promise<string[]> {
  const images = await docker.listImages({ all: true });
  return images.filter((image) => !before.has(image.Id) && !image.Labels?.['ferry.test.variant']).map((image) => image.Id);
}

async function imageIds(docker: Dockerode): Promise<Set<string>> {
  return new Set((await docker.listImages({ all: true })).map((image) => image.Id));
}

async function imagesOfVariant(docker: Dockerode, variant: string): Promise<string[]> {
  const images = await docker.listImages({ all: true, filters: { label: [`ferry.test.variant=${variant}`] } });
  return images.map((image) => image.Id);
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    assert.ok(isFerryError(err), `expected a FerryError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}, but it resolved`);
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  assert.ok(address && typeof address === 'object');
  return address.port;
}

/** Emits `bytes`, then fails with `error` a little later, as a broken upstream would. */
function failingAfter(bytes: Buffer, error: Error): Readable {
  let sent = false;
  return new Readable({
    highWaterMark: 64 * 1024,
    read() {
      if (!sent) {
        sent = true;
        this.push(bytes);
        return;
      }
      setTimeout(() => this.destroy(error), 50);
    },
  });
}

let v1Id = '';
let v2Id = '';
let v1Archive: Buffer = Buffer.alloc(0);
const v1Tag = `${RUN}:v1`;
const v2Tag = `${RUN}:v2`;

before(async () => {
  // Variants unique to this run give image ids no one else on the shared engines has, so that
  // "nothing was loaded" can be checked and cleanup cannot take anybody else's image.
  created.build.add(v1Tag).add(v2Tag);
  v1Id = buildTestImage(buildDockerHost, v1Tag, `${RUN}-a`);
  v2Id = buildTestImage(buildDockerHost, v2Tag, `${RUN}-b`);
  v1Archive = await bytesOf(await buildImages.save(v1Tag));
});

after(async () => {
  const problems: unknown[] = [];
  const attempt = (work: Promise<void>): Promise<void> => work.catch((err: unknown) => { problems.push(err); });
  for (const container of await targetDocker.listContainers({ all: true, filters: { label: [`${RUN_LABEL}=${RUN}`] } })) {
    await attempt(runner.remove(container.Id, { force: true }));
  }
  // Newest first: an image built on top of another has to go before its parent.
  for (const ref of [...created.target].reverse()) await attempt(targetImages.remove(ref, { force: true }));
  for (const ref of [...created.build].reverse()) await attempt(buildImages.remove(ref));
  if (problems.length > 0) throw new AggregateError(problems, 'cleanup failed');
});

describe('createDockerClient', () => {
  it('reaches an engine over a unix socket', async () => {
    assert.equal(typeof (await createDockerClient(targetDockerHost).version()).Version, 'string');
  });

  it('maps a missing socket and a refused port to FERRY_ERR_DOCKER_UNAVAILABLE', async () => {
    const port = await freePort();
    for (const host of ['unix:///tmp/ferry-no-such-dir/docker.sock', `tcp://127.0.0.1:${port}`]) {
      await rejectsWith(new ImageStore(createDockerClient(host)).inspect('anything'), 'FERRY_ERR_DOCKER_UNAVAILABLE');
    }
  });

  it('rejects addresses it does not understand', () => {
    for (const host of ['ssh://user@host', 'unix://relative.sock', '/var/run/docker.sock', 'tcp://']) {
      assert.throws(() => createDockerClient(host), (err) => isFerryError(err, 'FERRY_ERR_CONFIG'), host);
    }
  });
});

describe('ImageStore', { timeout: TIMEOUT }, () => {
  it('inspects an image and answers undefined for an absent one', async () => {
    const info = await buildImages.inspect(v1Tag);
    assert.ok(info);
    assert.equal(info.id, v1Id);
    assert.ok(info.diffIds.length >= 3);
    assert.ok(info.repoTags.includes(v1Tag));
    assert.ok(info.size > 0);
    assert.equal(await buildImages.inspect(`${RUN}:absent`), undefined);
  });

  it('refuses to save an absent image with FERRY_ERR_IMAGE_NOT_FOUND', async () => {
    await rejectsWith(buildImages.save(`${RUN}:absent`), 'FERRY_ERR_IMAGE_NOT_FOUND');
  });

  it('streams save from the build engine into load on the target: same id, same layers', async () => {
    created.target.add(v1Id);
    const result = await targetImages.load(await buildImages.save(v1Tag));
    assert.deepEqual(result, { imageIds: [v1Id], tags: [] });
    const [source, loaded] = await Promise.all([buildImages.inspect(v1Id), targetImages.inspect(v1Id)]);
    assert.ok(source && loaded);
    assert.equal(loaded.id, source.id);
    assert.deepEqual(loaded.diffIds, source.diffIds);
    assert.deepEqual(loaded.repoTags, [], 'an archive saved by id carries no tags');
  });

  it('loading the same archive again is harmless', async () => {
    assert.deepEqual(await targetImages.load(Readable.from([v1Archive])), { imageIds: [v1Id], tags: [] });
  });

  it('tags, including a registry name with a port, and removes tags', async () => {
    const withPort = `localhost:5000/${RUN}:1`;
    const bare = `${RUN}-bare`;
    created.target.add(withPort).add(`${bare}:latest`);
    await targetImages.tag(v1Id, withPort);
    await targetImages.tag(v1Id, bare);
    let info = await targetImages.inspect(v1Id);
    assert.deepEqual(info?.repoTags.sort(), [`${bare}:latest`, withPort].sort());
    assert.equal((await targetImages.inspect(withPort))?.id, v1Id);

    await targetImages.remove(`${bare}:latest`);
    info = await targetImages.inspect(v1Id);
    assert.deepEqual(info?.repoTags, [withPort]);
    await targetImages.remove(`${bare}:latest`); // already gone: not an error
  });

  it('refuses to tag an absent image or with an empty tag', async () => {
    await rejectsWith(targetImages.tag(`sha256:${'0'.repeat(64)}`, `${RUN}:x`), 'FERRY_ERR_IMAGE_NOT_FOUND');
    await rejectsWith(targetImages.tag(v1Id, `${RUN}:`), 'FERRY_ERR_DOCKER');
  });

  it('reports the tags of an archive that names them ("Loaded image:" lines)', async () => {
    created.target.add(v1Tag);
    const named = (await buildDocker.getImage(v1Tag).get()) as Readable;
    assert.deepEqual(await targetImages.load(named), { imageIds: [], tags: [v1Tag] });
    assert.equal((await targetImages.inspect(v1Tag))?.id, v1Id);
  });

  it('fails a truncated archive with FERRY_ERR_LOAD_FAILED and loads nothing', async () => {
    const archive = await bytesOf(await buildImages.save(v2Tag));
    const before = await imageIds(targetDocker);
    // Cuts inside entries: a cut that only drops the end-of-archive blocks is accepted by dockerd.
    for (const cut of [700, Math.floor(archive.length / 2), Math.floor(archive.length * 0.9)]) {
      await rejectsWith(targetImages.load(Readable.from([archive.subarray(0, cut)])), 'FERRY_ERR_LOAD_FAILED');
    }
    assert.equal(await targetImages.inspect(v2Id), undefined);
    assert.deepEqual(await imagesOfVariant(targetDocker, `${RUN}-b`), []);
    assert.deepEqual(await strayImages(targetDocker, before), []);
  });

  it('fails a byte stream that is not a tar with FERRY_ERR_LOAD_FAILED and loads nothing', async () => {
    const before = await imageIds(targetDocker);
    for (const bytes of [Buffer.from('this is not a tar archive\n'), randomBytes(4 * 1024 * 1024), Buffer.alloc(0), Buffer.alloc(10240)]) {
      const err = await rejectsWith(targetImages.load(Readable.from([bytes])), 'FERRY_ERR_LOAD_FAILED');
      assert.ok(err instanceof Error && err.message.length > 0);
    }
    assert.deepEqual(await strayImages(targetDocker, before), []);
  });

  it('rejects, without hanging, when the input stream errors mid-way', async () => {
    const archive = await bytesOf(await buildImages.save(v2Tag));
    const boom = new Error('upstream broke');
    const input = failingAfter(archive.subarray(0, Math.floor(archive.length / 2)), boom);
    const err = await rejectsWith(targetImages.load(input), 'FERRY_ERR_LOAD_FAILED');
    assert.equal((err as Error).cause, boom);
    assert.ok(input.destroyed);
    assert.equal(await targetImages.inspect(v2Id), undefined);
  });

  it('rejects with the decompressor error when the compressed package is corrupt', async () => {
    const archive = await bytesOf(await buildImages.save(v2Tag));
    const gz = gzipSync(archive);
    gz.fill(0x5a, Math.floor(gz.length / 2), Math.floor(gz.length / 2) + 64);
    const gunzip = createGunzip();
    Readable.from([gz]).pipe(gunzip);
    const err = await rejectsWith(targetImages.load(gunzip), 'FERRY_ERR_LOAD_FAILED');
    assert.equal(((err as Error).cause as NodeJS.ErrnoException).code, 'Z_DATA_ERROR');
    assert.equal(await targetImages.inspect(v2Id), undefined);
  });

  it('rejects when the caller aborts, whether before or during the upload', async () => {
    const aborted = AbortSignal.abort(new Error('gave up'));
    await rejectsWith(targetImages.load(Readable.from([v1Archive]), aborted), 'FERRY_ERR_LOAD_FAILED');

    const controller = new AbortController();
    const stalled = new Readable({ read() { /* never more data: only the abort can end this */ } });
    stalled.push(v1Archive.subarray(0, 4096));
    const pending = targetImages.load(stalled, controller.signal);
    await delay(200);
    controller.abort(new Error('deadline'));
    const err = await rejectsWith(pending, 'FERRY_ERR_LOAD_FAILED');
    assert.match((err as Error).message, /aborted/);
  });
});

describe('ContainerRunner', { timeout: TIMEOUT }, () => {
  const name = `${RUN}-app`;
  const renamed = `${RUN}-app-old`;
  let loggerImage = '';
  let port = 0;

  before(async () => {
    // The test image logs nothing; this one adds a line on stdout, one on stderr, and httpd's
    // per-request log (stderr), all from the image's own command since a spec has no Cmd.
    loggerImage = `${RUN}-logger:1`;
    const dockerfile = [
      `FROM ${v1Id}`,
      `ENTRYPOINT ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM INT; echo \\"listening on $PORT\\"; echo 'to stderr' >&2; /bin/busybox httpd -f -v -p 127.0.0.1:$PORT -h /www & wait"]`,
    ].join('\n');
    created.target.add(v1Id);
    if (!(await targetImages.inspect(v1Id))) await targetImages.load(Readable.from([v1Archive]));
    execFileSync('docker', ['-H', targetDockerHost, 'build', '-q', '-t', loggerImage, '-'], {
      input: dockerfile,
      env: { ...process.env, DOCKER_BUILDKIT: '0' },
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    created.target.add(loggerImage);
    port = await freePort();
  });

  const spec = (): ContainerSpec => ({
    name,
    image: loggerImage,
    env: { PORT: String(port), GREETING: 'a=b c' },
    network: 'host',
    labels: { [RUN_LABEL]: RUN, 'ferry.service': 'app' },
  });

  it('runs the full lifecycle: create, start, inspect, logs, stop, rename, remove', async () => {
    const id = await runner.create(spec());
    let info = await runner.inspect(name);
    assert.ok(info);
    assert.equal(info.id, id);
    assert.equal(info.name, name);
    assert.equal(info.running, false);
    assert.equal(info.status, 'created');
    assert.equal(info.image, loggerImage);
    assert.equal(info.imageId, (await targetImages.inspect(loggerImage))?.id);
    assert.deepEqual(info.labels, {
      [RUN_LABEL]: RUN,
      'ferry.service': 'app',
      'org.opencontainers.image.title': 'ferry-test',
      'ferry.test.variant': `${RUN}-a`,
    });

    await runner.start(id);
    await runner.start(id); // already running: not an error
    let body = '';
    for (let attempt = 0; attempt < 100 && body !== 'ok\n'; attempt++) {
      body = await fetch(`http://127.0.0.1:${port}/healthz`).then((res) => res.text(), () => '');
      if (body !== 'ok\n') await delay(100);
    }
    assert.equal(body, 'ok\n', 'httpd answers on the host network');
    info = await runner.inspect(id);
    assert.equal(info?.running, true);
    assert.equal(info?.status, 'running');

    // httpd -v logs each answered request on stderr.
    let lines: string[] = [];
    for (let attempt = 0; attempt < 50 && !lines.some((line) => line.includes('response:200')); attempt++) {
      lines = await runner.logs(id);
      if (!lines.some((line) => line.includes('response:200'))) await delay(100);
    }
    // stdout and stderr are copied to the log by separate goroutines, so their relative order is not fixed.
    assert.ok(lines.includes(`listening on ${port}`), lines.join('\n'));
    assert.ok(lines.includes('to stderr'), lines.join('\n'));
    assert.ok(lines.some((line) => line.includes('response:200')), lines.join('\n'));
    assert.deepEqual(await runner.logs(id, 1), lines.slice(-1));

    await runner.stop(id, 5);
    await runner.stop(id); // already stopped: not an error
    info = await runner.inspect(id);
    assert.equal(info?.running, false);
    assert.equal(info?.status, 'exited');
    assert.equal(info?.exitCode, 0);

    await runner.rename(id, renamed);
    assert.equal((await runner.inspect(id))?.name, renamed);
    assert.equal(await runner.inspect(name), undefined);

    await runner.remove(id);
    assert.equal(await runner.inspect(id), undefined);
    await runner.remove(id); // already gone: not an error
  });

  it('creates from the allowlisted fields only, with the default restart policy', async () => {
    const smuggled = { ...spec(), name: `${RUN}-allow`, HostConfig: { Privileged: true }, Cmd: ['true'], Privileged: true, Binds: ['/:/host'] } as ContainerSpec;
    const id = await runner.create(smuggled);
    const raw = await targetDocker.getContainer(id).inspect();
    assert.equal(raw.HostConfig.Privileged, false);
    assert.equal(raw.HostConfig.Binds, null);
    assert.equal(raw.HostConfig.NetworkMode, 'host');
    assert.equal(raw.HostConfig.RestartPolicy?.Name, 'unless-stopped');
    assert.deepEqual(raw.Config.Cmd, null);
    assert.ok(raw.Config.Env.includes(`PORT=${port}`));
    assert.ok(raw.Config.Env.includes('GREETING=a=b c'));
    await runner.remove(id, { force: true });

    const noRestart = await runner.create({ ...spec(), name: `${RUN}-norestart`, restart: 'no', network: 'none' });
    const raw2 = await targetDocker.getContainer(noRestart).inspect();
    assert.equal(raw2.HostConfig.RestartPolicy?.Name, 'no');
    assert.equal(raw2.HostConfig.NetworkMode, 'none');
    await runner.remove(noRestart);
  });

  it('fails create with FERRY_ERR_CONTAINER_FAILED for a bad spec, a missing image or a taken name', async () => {
    await rejectsWith(runner.create({ ...spec(), name: `${RUN}-badenv`, env: { 'A=B': 'x' } }), 'FERRY_ERR_CONTAINER_FAILED');
    await rejectsWith(runner.create({ ...spec(), name: `${RUN}-noimage`, image: `${RUN}-absent:1` }), 'FERRY_ERR_CONTAINER_FAILED');
    const id = await runner.create({ ...spec(), name: `${RUN}-taken` });
    await rejectsWith(runner.create({ ...spec(), name: `${RUN}-taken` }), 'FERRY_ERR_CONTAINER_FAILED');
    await runner.remove(id);
  });

  it('maps operations on an absent container to typed errors', async () => {
    assert.equal(await runner.inspect(`${RUN}-ghost`), undefined);
    await rejectsWith(runner.start(`${RUN}-ghost`), 'FERRY_ERR_CONTAINER_FAILED');
    await rejectsWith(runner.stop(`${RUN}-ghost`), 'FERRY_ERR_DOCKER');
    await rejectsWith(runner.rename(`${RUN}-ghost`, `${RUN}-ghost2`), 'FERRY_ERR_DOCKER');
    await rejectsWith(runner.logs(`${RUN}-ghost`), 'FERRY_ERR_DOCKER');
    await runner.remove(`${RUN}-ghost`);
  });
});
