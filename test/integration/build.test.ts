/**
 * `ferry build` and `ferry push --build` against the stack's real build engine: FROM-scratch
 * contexts holding a static busybox (nothing is pulled), failures the engine reports in-band, the
 * size gate, and a build-then-push whose events share the deployment id.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NatsConnection } from 'nats';
import { ImageBuilder, createDockerClient } from '@ferry/docker';
import { FerryError } from '@ferry/protocol';
import type { EventWatcher } from '../helpers/events.ts';
import { freePort, runFerry, startWatchedReceiver, type ReceiverProcess } from '../helpers/ferry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const build = dockerodeFor(s.buildDockerHost);
const target = dockerodeFor(s.targetDockerHost);
const builder = new ImageBuilder(createDockerClient(s.buildDockerHost));
const repo = `ferry-build-${run}`;
const BUSYBOX = process.env.FERRY_BUSYBOX ?? '/bin/busybox';

describe('building images on the real build engine', { timeout: 300_000 }, () => {
  let root: string;
  const tags: string[] = [];
  const tag = (name: string): string => {
    const ref = `${repo}:${name}`;
    tags.push(ref);
    return ref;
  };

  /** A context directory with /bin/busybox in it and the given Dockerfile. */
  const context = async (name: string, dockerfile: string, files: Record<string, string> = {}): Promise<string> => {
    const dir = join(root, name);
    await mkdir(join(dir, 'bin'), { recursive: true });
    await copyFile(BUSYBOX, join(dir, 'bin/busybox'));
    await writeFile(join(dir, 'Dockerfile'), dockerfile);
    for (const [path, content] of Object.entries(files)) {
      await mkdir(join(dir, path, '..'), { recursive: true });
      await writeFile(join(dir, path), content);
    }
    return dir;
  };

  const refusal = async (promise: Promise<unknown>): Promise<FerryError> => {
    const error = await promise.then(() => undefined, (err: unknown) => err);
    assert.ok(error instanceof FerryError, `the build fails with a FerryError: ${String(error)}`);
    return error;
  };

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'ferry-build-'));
  });

  after(async () => {
    for (const ref of tags) await build.getImage(ref).remove({ force: true }).catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  });

  test('a FROM scratch build succeeds and returns the id the engine shows', async () => {
    const dir = await context('ok', [
      'FROM scratch', 'ARG GREETING=none', 'COPY bin/ /bin/', 'COPY www/ /www/',
      'SHELL ["/bin/busybox", "sh", "-c"]', 'RUN /bin/busybox echo "$GREETING" > /www/greeting', '',
    ].join('\n'), { 'www/index.html': `hello ${run}\n`, 'secret/key.txt': 'must not be sent\n', '.dockerignore': 'secret\n' });
    const ref = tag('ok');
    const lines: string[] = [];
    const id = await builder.build({ context: dir, tag: ref, buildArgs: { GREETING: `hi-${run}` } }, (text) => lines.push(text));
    assert.match(id, /^sha256:[0-9a-f]{64}$/);
    const info = await build.getImage(ref).inspect();
    assert.equal(info.Id, id);
    assert.ok(lines.some((text) => /Step \d+\/\d+ : COPY bin\/ \/bin\//.test(text)), `the log streams the steps: ${lines.join(' | ')}`);
    assert.ok(lines.every((text) => !text.includes('\n')), 'one line per call');
  });

  test('.dockerignore keeps a listed directory out of the context', async () => {
    const dir = await context('ignored', 'FROM scratch\nCOPY . /ctx/\n', { 'secret/key.txt': 'no\n', 'keep/a.txt': 'yes\n', '.dockerignore': '# comment\n/secret\n*.log\n' });
    await writeFile(join(dir, 'debug.log'), 'no\n');
    const ref = tag('ignored');
    await builder.build({ context: dir, tag: ref });
    const lines: string[] = [];
    // The scratch image has no shell of its own: list the copied tree with a container that only exists.
    const container = await build.createContainer({ Image: ref, Cmd: ['/ctx/bin/busybox', 'find', '/ctx'], HostConfig: { NetworkMode: 'none' } });
    try {
      await container.start();
      await container.wait();
      const raw = (await container.logs({ stdout: true, stderr: true })).toString('latin1');
      lines.push(...raw.split('\n'));
    } finally {
      await container.remove({ force: true });
    }
    const listing = lines.join('\n');
    assert.match(listing, /\/ctx\/keep\/a\.txt/);
    assert.doesNotMatch(listing, /\/ctx\/secret/);
    assert.doesNotMatch(listing, /debug\.log/);
  });

  test('a failing RUN step is FERRY_ERR_BUILD_FAILED with the engine\'s message', async () => {
    const dir = await context('fails', 'FROM scratch\nCOPY bin/ /bin/\nSHELL ["/bin/busybox", "sh", "-c"]\nRUN /bin/busybox false\n');
    const error = await refusal(builder.build({ context: dir, tag: tag('fails') }));
    assert.equal(error.code, 'FERRY_ERR_BUILD_FAILED');
    assert.match(error.message, /returned a non-zero code: 1/);
  });

  test('an unknown instruction is FERRY_ERR_BUILD_FAILED', async () => {
    const dir = await context('bad', 'FROM scratch\nFLY away\n');
    const error = await refusal(builder.build({ context: dir, tag: tag('bad') }));
    assert.equal(error.code, 'FERRY_ERR_BUILD_FAILED');
    assert.match(error.message, /unknown instruction: FLY/i);
  });

  test('ferry build refuses an image over --max-image-size with FERRY_ERR_IMAGE_TOO_LARGE', async () => {
    const dir = await context('big', 'FROM scratch\nCOPY bin/ /bin/\n');
    const ref = tag('big');
    const result = await runFerry(['build', dir, '-t', ref, '--max-image-size', '1000', '--json'], { DOCKER_HOST: s.buildDockerHost });
    assert.equal(result.code, 1, result.stderr);
    const body = JSON.parse(result.stdout.trim()) as { ok: boolean; error: { code: string; details: { size: number; limit: number } } };
    assert.equal(body.ok, false);
    assert.equal(body.error.code, 'FERRY_ERR_IMAGE_TOO_LARGE');
    assert.equal(body.error.details.limit, 1000);
    assert.ok(body.error.details.size > 1000);

    const ok = await runFerry(['build', dir, '-t', ref, '--json'], { DOCKER_HOST: s.buildDockerHost });
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    const built = JSON.parse(ok.stdout.trim()) as { ok: boolean; imageId: string };
    assert.equal(built.imageId, (await build.getImage(ref).inspect()).Id);
  });

  describe('ferry push --build', () => {
    const key = testKey(`bd-${run}`);
    const hostId = `bd-${run}`;
    const service = `bd-${run}`;
    let receiver: ReceiverProcess;
    let nc: NatsConnection;
    let watcher: EventWatcher;
    let pushedId: string | undefined;

    before(async () => {
      ({ receiver, watcher, nc } = await startWatchedReceiver(hostId, key));
    });

    after(async () => {
      await receiver?.stop();
      await target.getContainer(service).remove({ force: true }).catch(() => undefined);
      if (pushedId) await target.getImage(pushedId).remove({ force: true }).catch(() => undefined);
      await nc?.drain();
    });

    test('builds, deploys, and build events come first under the deployment id', async () => {
      const port = await freePort();
      const dir = await context('push', [
        'FROM scratch', 'COPY bin/ /bin/', 'COPY www/ /www/', 'ARG VARIANT=unset', 'ENV VARIANT=$VARIANT',
        `ENTRYPOINT ["/bin/busybox", "sh", "-c", "exec /bin/busybox httpd -f -p 127.0.0.1:${port} -h /www"]`, '',
      ].join('\n'), { 'www/index.html': `built ${run}\n` });
      const ref = tag('push');
      const result = await runFerry([
        'push', ref, '--build', dir, '--build-arg', `VARIANT=${run}`, '--to', receiver.url, '--name', service,
        '--network', 'host', '--health', `tcp://127.0.0.1:${port}`, '--json',
      ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), FERRY_NATS_URL: s.natsUrl });
      assert.equal(result.code, 0, result.stdout + result.stderr);
      const body = JSON.parse(result.stdout.trim()) as { deploymentId: string; imageId: string };
      pushedId = body.imageId;
      assert.equal(body.imageId, (await build.getImage(ref).inspect()).Id, 'the pushed image is the one just built');
      assert.match(await (await fetch(`http://127.0.0.1:${port}/`)).text(), new RegExp(`built ${run}`));

      await watcher.until(body.deploymentId, 'deployment.completed');
      const types = watcher.for(body.deploymentId).map((e) => e.type);
      const at = (type: string): number => types.indexOf(`ferry.${type}`);
      assert.ok(at('build.started') >= 0 && at('build.completed') > at('build.started'), types.join(' '));
      assert.ok(at('transfer.started') > at('build.completed'), types.join(' '));
      const completed = watcher.for(body.deploymentId).find((e) => e.type === 'ferry.build.completed');
      assert.equal(completed?.data.imageId, body.imageId);
      assert.equal(completed?.data.service, service);
    });
  });
});
