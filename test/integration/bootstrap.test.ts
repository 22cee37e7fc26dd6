/**
 * deploy/bootstrap.sh against a bare host made of real parts: a private sshd on a random loopback
 * port (generated keys, the current user) and a private dockerd standing for the host's engine.
 * The receiver image is built FROM scratch by deploy/image/build-receiver-image.sh on the stack's
 * build engine and copied over ssh. Then `ferry push` and deploy/ferry-push.sh both deploy
 * through the bootstrapped receiver, a second bootstrap upgrades it in place (new container, the
 * journal kept), and a host without zstd is refused with a clear message.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, stat, symlink } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { ROOT, buildTestImage, capture, freePort, runFerry, type RunResult } from '../helpers/ferry.ts';
import { removeImages } from '../helpers/cleanup.ts';
import { PrivateSshd, type SshLogin } from '../helpers/sshd.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const build = dockerodeFor(s.buildDockerHost);
const receiverImage = `ferry-receiver:bt-${run}`;
const upgradeImage = `ferry-receiver:bt2-${run}`;
const repo = `ferry-bt-${run}`;
const service = `bt-${run}`;
const hostId = `bt-${run}`;
let engine: PrivateDockerd;
let sshd: PrivateSshd;
let login: SshLogin;
let port: number;
let appPort: number;
let url: string;
let keyId: string;
let secret: string;

/** Child environment: this process's, minus FERRY_* and DOCKER_HOST, plus what the call names. */
function env(extra: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !name.startsWith('FERRY_') && name !== 'DOCKER_HOST') out[name] = value;
  }
  return { ...out, ...extra };
}

function bootstrap(image: string, as: SshLogin, extra: string[] = [], extraEnv: Record<string, string> = {}): Promise<RunResult> {
  return capture('bash', [
    join(ROOT, 'deploy/bootstrap.sh'), `${userInfo().username}@127.0.0.1`, ...as.args,
    '--remote-docker-host', engine.host, '--remote-dir', join(engine.dir, 'ferry'),
    '--listen', `127.0.0.1:${port}`, '--name', hostId, '--image', image, '--wait', '180', ...extra,
  ], env({ DOCKER_HOST: s.buildDockerHost, ...extraEnv }));
}

function printed(result: RunResult, field: string): string {
  return new RegExp(`^${field}\\s+(\\S+)`, 'm').exec(result.stdout)?.[1] ?? '';
}

async function receiverContainer(): Promise<{ Id: string; Image: string; State: { Running: boolean } }> {
  return dockerodeFor(engine.host).getContainer('ferry-receiver').inspect();
}

async function variant(): Promise<string> {
  return (await (await fetch(`http://127.0.0.1:${appPort}/variant`)).text()).trim();
}

describe('deploy/bootstrap.sh', { timeout: 1_800_000 }, () => {
  before(async () => {
    [engine, sshd] = await Promise.all([PrivateDockerd.start(), PrivateSshd.start()]);
    login = await sshd.login();
    port = await freePort();
    appPort = await freePort();
    url = `http://127.0.0.1:${port}`;
    const built = await capture('bash', [join(ROOT, 'deploy/image/build-receiver-image.sh'), '--docker-host', s.buildDockerHost, '--tag', receiverImage]);
    assert.equal(built.code, 0, built.stderr);
    // The upgrade: another image id over the same layers, as a rebuild with a new version label.
    const relabel = await capture('bash', ['-c', `printf 'FROM %s\\nLABEL io.ferry.test.upgrade=%s\\n' "$1" "$2" | DOCKER_BUILDKIT=0 docker -H "$3" build -q -t "$4" -`, '-', receiverImage, run, s.buildDockerHost, upgradeImage]);
    assert.equal(relabel.code, 0, relabel.stderr);
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    await buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`);
  });

  after(async () => {
    // Stopping the engine stops the receiver and the deployed service with it.
    await engine?.stop();
    // The engine can leave its network namespace mounted under its directory, which keeps it.
    if (engine) await capture('bash', ['-c', 'awk -v d="$1/" \'index($5, d) == 1 { print $5 }\' /proc/self/mountinfo | xargs -r -n 1 umount -l; rm -rf "$1"', '-', engine.dir]);
    await sshd?.stop();
    await removeImages(build, [receiverImage, upgradeImage, `${repo}:1`, `${repo}:2`]);
  });

  test('bootstrap installs a receiver that answers /healthz and prints its URL and a new key once', async () => {
    const result = await bootstrap(receiverImage, login, ['--env', 'FERRY_RETAIN_IMAGES=5']);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.equal(printed(result, 'url'), url);
    assert.equal(printed(result, 'host\\sid'), hostId);
    keyId = printed(result, 'key\\sid');
    secret = printed(result, 'secret');
    assert.match(keyId, /^ferry-\d{8}$/);
    assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
    assert.match(result.stderr, /shown this once/);

    const health = await (await fetch(`${url}/healthz`)).json() as { status: string; host: string };
    assert.deepEqual([health.status, health.host], ['ok', hostId]);
    const container = await receiverContainer();
    assert.equal(container.State.Running, true);
    assert.equal(container.Image, (await build.getImage(receiverImage).inspect()).Id);
  });

  let firstDeployment = '';

  test('ferry push and deploy/ferry-push.sh both deploy through the bootstrapped receiver', async () => {
    assert.ok(secret, 'needs the bootstrap of the previous test');
    const keyEnv = { FERRY_KEY_ID: keyId, FERRY_KEY: secret, DOCKER_HOST: s.buildDockerHost };
    const pushed = await runFerry([
      'push', `${repo}:1`, '--to', url, '--name', service, '--network', 'host', '--env', `PORT=${appPort}`,
      '--health', `http://127.0.0.1:${appPort}/healthz`, '--health-interval', '100', '--json',
    ], keyEnv);
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    firstDeployment = (JSON.parse(pushed.stdout) as { deploymentId: string }).deploymentId;
    assert.equal(await variant(), `v1-${run}`);
    // It runs on the bootstrapped host's engine, not on the stack's.
    assert.equal((await dockerodeFor(engine.host).getContainer(service).inspect()).State.Running, true);

    const shell = await capture('bash', [
      join(ROOT, 'deploy/ferry-push.sh'), `${repo}:2`, url, service, '--network', 'host', '--env', `PORT=${appPort}`,
      '--health', `http://127.0.0.1:${appPort}/healthz`, '--health-interval', '100', '--json',
    ], env(keyEnv));
    assert.equal(shell.code, 0, shell.stdout + shell.stderr);
    assert.equal((JSON.parse(shell.stdout) as { state: string }).state, 'COMPLETED');
    assert.equal(await variant(), `v2-${run}`);
  });

  test('bootstrap again upgrades in place: a new container on the new image, the same key and journal', async () => {
    assert.ok(firstDeployment, 'needs the deployments of the previous test');
    const before = await receiverContainer();
    const result = await bootstrap(upgradeImage, login);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.equal(printed(result, 'key\\sid'), keyId, 'the installed key is kept');
    assert.doesNotMatch(result.stdout, /^secret/m, 'a kept secret is not printed again');

    const after = await receiverContainer();
    assert.notEqual(after.Id, before.Id);
    // The settings file on the host kept the earlier --env and stays readable by its owner only.
    const settings = join(engine.dir, 'ferry', 'receiver.env');
    assert.match(await readFile(settings, 'utf8'), /^FERRY_RETAIN_IMAGES=5$/m);
    assert.equal((await stat(settings)).mode & 0o777, 0o600);
    assert.equal(after.Image, (await build.getImage(upgradeImage).inspect()).Id);
    const names = (await dockerodeFor(engine.host).listContainers({ all: true })).flatMap((c) => c.Names);
    assert.ok(!names.includes('/ferry-receiver.previous'), `the old container is removed: ${names.join(', ')}`);

    const status = await runFerry(['status', firstDeployment, '--to', url, '--json'], { FERRY_KEY_ID: keyId, FERRY_KEY: secret });
    assert.equal(status.code, 0, status.stdout + status.stderr);
    const record = JSON.parse(status.stdout) as { deploymentId: string; state: string };
    assert.deepEqual([record.deploymentId, record.state], [firstDeployment, 'COMPLETED']);
    assert.equal(await variant(), `v2-${run}`, 'the deployed service kept running through the upgrade');
  });

  test('bootstrap with --keys rotates the key ring and with --tls-dir switches the receiver to HTTPS', async () => {
    assert.ok(firstDeployment, 'needs the deployments of the previous tests');
    const tls = join(sshd.dir, 'tls');
    await mkdir(tls);
    const cert = await capture('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(tls, 'key.pem'), '-out', join(tls, 'cert.pem'),
    ]);
    assert.equal(cert.code, 0, cert.stderr);
    const rotated = { keyId: `rot-${run}`, secret: randomBytes(24).toString('base64url') };
    // The secrets go through the environment: an argument would show in ps.
    const ring = `${keyId}:${secret}:notAfter=2099-01-01T00:00:00Z,${rotated.keyId}:${rotated.secret}`;
    const result = await bootstrap(upgradeImage, login, ['--tls-dir', tls], { FERRY_BOOTSTRAP_KEYS: ring });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const https = `https://127.0.0.1:${port}`;
    assert.equal(printed(result, 'url'), https);
    assert.equal(printed(result, 'key\\sid'), rotated.keyId, 'senders are told the key without an expiry');
    assert.doesNotMatch(result.stdout, /^secret/m);

    for (const key of [rotated, { keyId, secret }]) {
      const status = await runFerry(['status', firstDeployment, '--to', https, '--json'], {
        FERRY_KEY_ID: key.keyId, FERRY_KEY: key.secret, NODE_EXTRA_CA_CERTS: join(tls, 'cert.pem'),
      });
      assert.equal(status.code, 0, `${key.keyId}: ${status.stdout}${status.stderr}`);
      assert.equal((JSON.parse(status.stdout) as { state: string }).state, 'COMPLETED');
    }
  });

  test('a host without zstd is refused with a message that says so', async () => {
    // A PATH holding everything on this machine except zstd, set for this key's ssh sessions.
    const bin = join(sshd.dir, 'bin-without-zstd');
    await mkdir(bin);
    for (const dir of ['/usr/local/bin', '/usr/bin', '/bin', '/usr/sbin', '/sbin']) {
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        if (/zstd/.test(name)) continue;
        await symlink(join(dir, name), join(bin, name)).catch(() => undefined);
      }
    }
    const result = await bootstrap(upgradeImage, await sshd.login({ PATH: bin }));
    assert.equal(result.code, 1, result.stdout + result.stderr);
    assert.match(result.stderr, /zstd is not installed/);
    assert.equal((await receiverContainer()).State.Running, true, 'the installed receiver is untouched');
  });
});
