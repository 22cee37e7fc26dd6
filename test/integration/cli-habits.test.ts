/**
 * What a docker user types, against the real parts: a receiver whose engine cannot be reached
 * does not start (and one whose engine comes up while it starts does); a health check of
 * 127.0.0.1 for a container on the bridge network that publishes no such port is refused by
 * `ferry push` before anything is sent, and explained by the receiver when a client without that
 * check (the shell client) sends it anyway; `-e KEY`, `--env-file` and durations with units reach
 * a real engine's container through `ferry push` and `ferry deploy`. The bridge tests run on an
 * engine of their own with a Linux bridge (the stack's engines have none).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import type Dockerode from 'dockerode';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { ROOT, buildTestImage, capture, freePort, runFerry, startReceiverProcess, terminate, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const s = stack();
const run = randomBytes(3).toString('hex');
const key = testKey(`habits-${run}`);
const repo = `ferry-habits-${run}`;
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
const build = dockerodeFor(s.buildDockerHost);

/** The test process's environment minus FERRY_* and DOCKER_HOST, as the helpers give children. */
function childEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !name.startsWith('FERRY_') && name !== 'DOCKER_HOST') env[name] = value;
  }
  return { ...env, ...extra };
}

describe('a receiver and its Docker engine at start', { timeout: 120_000 }, () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-habits-rx-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  test('no engine at DOCKER_HOST: exit 3 with FERRY_ERR_DOCKER_UNAVAILABLE naming it and the cause, never "listening"', async () => {
    const result = await runFerry(['receiver'], {
      DOCKER_HOST: 'unix:///nonexistent.sock', FERRY_TRUST_FILE: trustFile(key), FERRY_DATA_DIR: join(dir, 'none'),
      FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: `habits-none-${run}`,
    });
    assert.equal(result.code, 3, result.stdout + result.stderr);
    assert.match(result.stderr, /The Docker engine at DOCKER_HOST=unix:\/\/\/nonexistent\.sock cannot be reached \(ENOENT; tried for 10 s\)/);
    assert.match(result.stderr, /\[FERRY_ERR_DOCKER_UNAVAILABLE\]/);
    assert.match(result.stdout, /"msg":"waiting for the Docker engine"/);
    assert.doesNotMatch(result.stdout, /receiver listening/);
  });

  test('an engine that appears while the receiver waits for it: the receiver starts and serves', async () => {
    // The socket path exists only once the test links it to the stack's target engine, after
    // the receiver said it waits: a real engine coming up late, as one started with the host does.
    const socket = join(dir, 'late.sock');
    const child = spawn(process.execPath, [join(ROOT, 'bin/ferry.js'), 'receiver'], {
      env: childEnv({
        DOCKER_HOST: `unix://${socket}`, FERRY_TRUST_FILE: trustFile(key), FERRY_DATA_DIR: join(dir, 'late'),
        FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: `habits-late-${run}`,
      }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout }).on('line', (text) => {
          const entry = JSON.parse(text) as { msg?: string; url?: string };
          if (entry.msg === 'waiting for the Docker engine') {
            symlink(s.targetDockerHost.replace(/^unix:\/\//, ''), socket).catch(reject);
          }
          if (entry.msg === 'receiver listening' && typeof entry.url === 'string') resolve(entry.url);
        });
        child.once('exit', (code) => reject(new Error(`the receiver exited with ${code}: ${stderr}`)));
      });
      const ready = await fetch(`${url}/readyz`);
      const body = await ready.json() as { checks: { docker: { status: string } } };
      assert.equal(body.checks.docker.status, 'up');
    } finally {
      await terminate(child);
    }
  });
});

describe('ferry push and deploy on an engine with a bridge network', { timeout: 420_000 }, () => {
  let engine: PrivateDockerd;
  let rx: ReceiverProcess;
  let docker: Dockerode;
  let dir: string;
  const services: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-habits-'));
    [engine] = await Promise.all([PrivateDockerd.start({ bridge: true }), buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`)]);
    docker = dockerodeFor(engine.host);
    rx = await startReceiverProcess({ DOCKER_HOST: engine.host, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `habits-${run}` });
  });

  after(async () => {
    await rx?.stop();
    for (const service of services) await removeService(docker, service).catch(() => undefined);
    await engine?.stop();
    await removeImages(build, [`${repo}:1`]);
    await rm(dir, { recursive: true, force: true });
  });

  function serviceName(label: string): string {
    const name = `habits-${label}-${run}`;
    services.push(name);
    return name;
  }

  test('push: a loopback check of an unpublished port is refused before anything is sent; published, the same push deploys with -e KEY, --env-file and durations in units', async () => {
    const service = serviceName('push');
    const port = await freePort();
    const health = `http://127.0.0.1:${port}/healthz`;
    const refused = await runFerry(['push', `${repo}:1`, '--to', rx.url, '--name', service, '-e', 'PORT=8080', '--health', health], senderEnv);
    assert.equal(refused.code, 2, refused.stdout + refused.stderr);
    assert.match(refused.stderr, new RegExp(`--health ${health}: the container runs on the bridge network and publishes no port ${port}: add -p ${port}:${port} or --network host \\[FERRY_ERR_USAGE\\]`));
    await assert.rejects(docker.getContainer(service).inspect(), (err: { statusCode?: number }) => err.statusCode === 404, 'nothing reached the engine');

    const envFile = join(dir, 'push.env');
    await writeFile(envFile, '# as docker run --env-file reads it\nPORT=8080\nQUOTED="kept as written"\n\nFROM_FILE_KEY\nUNSET_IN_FILE\n');
    const pushed = await runFerry([
      'push', `${repo}:1`, '--to', rx.url, '--name', service, '-p', `127.0.0.1:${port}:8080`,
      '--env-file', envFile, '-e', 'FROM_FLAG_KEY', '-e', 'UNSET_ON_FLAG', '-e', 'QUOTED=flag wins',
      '--health', health, '--health-interval', '100ms', '--health-timeout', '1s', '--health-retries', '300', '--json',
    ], { ...senderEnv, FROM_FILE_KEY: 'from the environment (file)', FROM_FLAG_KEY: 'from the environment (flag)' });
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    const info = await docker.getContainer(service).inspect();
    assert.equal(info.State.Running, true);
    const env = info.Config.Env.filter((entry) => /^(PORT|QUOTED|FROM_|UNSET_)/.test(entry)).sort();
    assert.deepEqual(env, ['FROM_FILE_KEY=from the environment (file)', 'FROM_FLAG_KEY=from the environment (flag)', 'PORT=8080', 'QUOTED=flag wins']);
    assert.equal(await (await fetch(health)).text(), 'ok\n');
  });

  test('a client without that check (the shell client): the receiver\'s failure says what to add', async () => {
    const service = serviceName('shell');
    const port = await freePort();
    const result = await capture('bash', [
      join(ROOT, 'deploy/ferry-push.sh'), `${repo}:1`, rx.url, service, '--network', 'bridge', '--env', 'PORT=8080',
      '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', '100', '--health-retries', '3', '--json',
    ], childEnv({ DOCKER_HOST: s.buildDockerHost, FERRY_KEY_ID: key.keyId, FERRY_KEY_FILE: key.file }));
    assert.equal(result.code, 1, result.stdout + result.stderr);
    assert.match(result.stdout, /"code":"FERRY_ERR_HEALTHCHECK_FAILED"/);
    assert.match(result.stdout, new RegExp(`\\(last: ECONNREFUSED\\); the container runs on the bridge network and publishes no port ${port}: add -p ${port}:${port} or --network host`));
  });

  test('deploy: -e and --env-file reach every service\'s container over the file\'s env', async () => {
    const service = serviceName('deploy');
    const file = join(dir, 'ferry.yaml');
    await writeFile(file, `version: 1\nservices:\n  ${service}:\n    image: ${repo}:1\n    targets: [${rx.url}]\n    network: none\n    env: {MODE: file, KEEP: file}\n`);
    const envFile = join(dir, 'deploy.env');
    await writeFile(envFile, 'EXTRA=from the env file\nMODE=env file\n');
    const result = await runFerry(['deploy', '-f', file, '--env-file', envFile, '-e', 'MODE=flag', '-e', 'PASSED', '-e', 'NOT_SET', '--json'], { ...senderEnv, PASSED: 'from the environment' });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const info = await docker.getContainer(service).inspect();
    const env = info.Config.Env.filter((entry) => /^(MODE|KEEP|EXTRA|PASSED|NOT_SET)=/.test(entry)).sort();
    assert.deepEqual(env, ['EXTRA=from the env file', 'KEEP=file', 'MODE=flag', 'PASSED=from the environment']);
  });
});
