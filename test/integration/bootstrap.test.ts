/**
 * deploy/bootstrap.sh against a bare host made of real parts: a private sshd on a random loopback
 * port (generated keys, the current user) and a private dockerd standing for the host's engine.
 * The receiver image is built FROM scratch by deploy/image/build-receiver-image.sh on the stack's
 * build engine from the release (npm run pack, then installed by npm; both with no network but
 * loopback's, from npm's cache), labelled with that tarball's digest, and copied over ssh. The receiver is given public keys only (--trust-key, then
 * --trust-file); it makes its own host key, whose fingerprint bootstrap prints from the signed
 * identity. Then `ferry push` and deploy/ferry-push.sh (pinning that host key) both deploy
 * through it, a second bootstrap upgrades it in place (new container; the host key, trust file
 * and journal kept), a third replaces the trust file and switches to HTTPS, settings directories
 * someone else could have written to are refused, the receiver enrolls with a real registry with
 * a join token, and a host without zstd is refused with a clear message.
 */
import assert from 'node:assert/strict';
import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { RegistryClient, checkIdentity, newChallenge, type HostRecord } from '@ferry/auth';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { ROOT, buildTestImage, capture, freePort, runFerry, startFerryProcess, warmReleaseCache, type FerryProcess, type RunResult } from '../helpers/ferry.ts';
import { removeImages } from '../helpers/cleanup.ts';
import { grantFor, keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { until } from '../helpers/registry.ts';
import { PrivateSshd, type SshLogin } from '../helpers/sshd.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const { version } = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
const s = stack();
const build = dockerodeFor(s.buildDockerHost);
const receiverImage = `ferry-receiver:bt-${run}`;
const upgradeImage = `ferry-receiver:bt2-${run}`;
const repo = `ferry-bt-${run}`;
const service = `bt-${run}`;
const hostId = `bt-${run}`;
/** Deploys; trusted from the first bootstrap on, kept through the rotation with an end date. */
const deployer = testKey(`deploy-${run}`);
/** Reads; trusted by the first bootstrap only, gone after the trust file is replaced. */
const retired = testKey(`retired-${run}`);
/** Signs grants; trusted as admin throughout. */
const admin = testKey(`admin-${run}`);
/** The key the rotation brings in. */
const rotated = testKey(`rot-${run}`);
let engine: PrivateDockerd;
let sshd: PrivateSshd;
let login: SshLogin;
let keysDir: string;
let port: number;
let appPort: number;
let url: string;
let hostKey = '';

/** Child environment: this process's, minus FERRY_* and DOCKER_HOST, plus what the call names. */
function env(extra: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !name.startsWith('FERRY_') && name !== 'DOCKER_HOST') out[name] = value;
  }
  return { ...out, ...extra };
}

function bootstrap(image: string, as: SshLogin, extra: string[] = [], extraEnv: Record<string, string> = {}, remoteDir = join(engine.dir, 'ferry')): Promise<RunResult> {
  return capture('bash', [
    join(ROOT, 'deploy/bootstrap.sh'), `${userInfo().username}@127.0.0.1`, ...as.args,
    '--remote-docker-host', engine.host, '--remote-dir', remoteDir,
    '--listen', `127.0.0.1:${port}`, '--name', hostId, '--image', image, '--wait', '180', ...extra,
  ], env({ DOCKER_HOST: s.buildDockerHost, ...extraEnv }));
}

function printed(result: RunResult, field: string): string {
  return new RegExp(`^${field}\\s+(\\S+)`, 'm').exec(result.stdout)?.[1] ?? '';
}

/** The `trusts` lines bootstrap printed, as "keyId role". */
function trusted(result: RunResult): string[] {
  return [...result.stdout.matchAll(/^trusts\s+(\S+) (\S+) SHA256:/gm)].map((m) => `${m[1] ?? ''} ${m[2] ?? ''}`).sort();
}

async function receiverContainer(): Promise<{ Id: string; Image: string; State: { Running: boolean } }> {
  return dockerodeFor(engine.host).getContainer('ferry-receiver').inspect();
}

async function variant(): Promise<string> {
  return (await (await fetch(`http://127.0.0.1:${appPort}/variant`)).text()).trim();
}

/** The host key the receiver at `base` proves, checked as every sender checks it. */
async function provenHostKey(base: string): Promise<string> {
  const challenge = newChallenge();
  const answer = await (await fetch(`${base}/v1/identity?challenge=${challenge}`)).json() as { identity: unknown };
  const identity = checkIdentity(answer.identity, challenge);
  assert.equal(identity.host, hostId);
  return identity.fingerprint;
}

/** Mode and owner of a file in the receiver's volume, read from inside its container. */
async function inVolume(file: string): Promise<{ mode: number; uid: number }> {
  const js = 'const s = require("node:fs").statSync(process.argv[1]); console.log(JSON.stringify({ mode: s.mode & 0o777, uid: s.uid }))';
  const result = await capture('docker', ['-H', engine.host, 'exec', 'ferry-receiver', '/usr/local/bin/node', '-e', js, file]);
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as { mode: number; uid: number };
}

describe('deploy/bootstrap.sh', { timeout: 1_800_000 }, () => {
  before(async () => {
    [engine, sshd] = await Promise.all([PrivateDockerd.start(), PrivateSshd.start()]);
    login = await sshd.login();
    keysDir = await mkdtemp(join(sshd.dir, 'keys-'));
    port = await freePort();
    appPort = await freePort();
    url = `http://127.0.0.1:${port}`;
    // The release, packed and installed into the image with no network but loopback's: npm's cache
    // holds what the release needs (the checkout's install fetched its packages, and one install of
    // the release with the network, as on a build host, the registry's documents of their
    // versions); a lookup that cannot succeed is not retried.
    const offline = { ...process.env, npm_config_fetch_retries: '0' };
    const releaseDir = await mkdtemp(join(sshd.dir, 'release-'));
    const packed = await capture('unshare', ['--net', process.execPath, join(ROOT, 'scripts/pack.ts'), '--out', releaseDir], offline);
    assert.equal(packed.code, 0, packed.stderr);
    const release = packed.stdout.trim().split('\n').at(-1) ?? '';
    await warmReleaseCache(release, releaseDir);
    const built = await capture('unshare', ['--net', 'bash', join(ROOT, 'deploy/image/build-receiver-image.sh'), '--docker-host', s.buildDockerHost, '--tag', receiverImage, '--artifact', release], offline);
    assert.equal(built.code, 0, built.stderr);
    const labels = (await build.getImage(receiverImage).inspect()).Config.Labels;
    assert.equal(labels['io.ferry.release'], `${basename(release)} sha256:${createHash('sha256').update(await readFile(release)).digest('hex')}`);
    assert.equal(labels['org.opencontainers.image.version'], version);
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

  test('without a key to trust a first bootstrap is refused, and so is a private key given as one', async () => {
    const none = await bootstrap(receiverImage, login);
    assert.equal(none.code, 2, none.stdout + none.stderr);
    assert.match(none.stderr, /no trust file yet.*--trust-key/);

    const privateFile = join(keysDir, 'private.pem');
    await writeFile(privateFile, await readFile(deployer.file), { mode: 0o600 });
    const leaked = await bootstrap(receiverImage, login, ['--trust-key', `${deployer.keyId}=${privateFile}`]);
    assert.equal(leaked.code, 2, leaked.stdout + leaked.stderr);
    assert.match(leaked.stderr, /is a private key; give its public half/);
    await assert.rejects(receiverContainer(), 'nothing was started');
  });

  test('bootstrap installs a receiver that trusts the given public keys and prints its proven host key, and no secret', async () => {
    // One key as base64 (as "ferry key new" prints it), one as a PEM public key file.
    const adminPem = join(keysDir, 'admin.pub');
    await writeFile(adminPem, createPublicKey(admin.privateKey).export({ type: 'spki', format: 'pem' }));
    const result = await bootstrap(receiverImage, login, [
      '--env', 'FERRY_RETAIN_IMAGES=5', '--trust-key', `${deployer.keyId}=${deployer.publicKey}`,
      '--trust-key', `${retired.keyId}=${retired.publicKey}:read`, '--trust-key', `${admin.keyId}=${adminPem}:admin`,
    ]);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.equal(printed(result, 'url'), url);
    assert.equal(printed(result, 'host\\sid'), hostId);
    hostKey = printed(result, 'host\\skey');
    assert.match(hostKey, /^SHA256:[A-Za-z0-9+/]{43}$/);
    assert.equal(await provenHostKey(url), hostKey, 'the printed fingerprint is the key the receiver proves');
    assert.equal(printed(result, 'version'), version, 'the release\'s version, as the signed identity names it');
    assert.deepEqual(trusted(result), [`${admin.keyId} admin`, `${deployer.keyId} deploy`, `${retired.keyId} read`]);
    assert.doesNotMatch(result.stdout + result.stderr, /secret|PRIVATE KEY|key id\s/i);

    const health = await (await fetch(`${url}/healthz`)).json() as { status: string; host: string };
    assert.deepEqual([health.status, health.host], ['ok', hostId]);
    const container = await receiverContainer();
    assert.equal(container.State.Running, true);
    assert.equal(container.Image, (await build.getImage(receiverImage).inspect()).Id);
    // The trust file and the host key: root's, 0600, in the receiver's volume.
    assert.deepEqual(await inVolume('/var/lib/ferry/trust.json'), { mode: 0o600, uid: 0 });
    assert.deepEqual(await inVolume('/var/lib/ferry/host.key'), { mode: 0o600, uid: 0 });
    const settings = await readFile(join(engine.dir, 'ferry', 'receiver.env'), 'utf8');
    assert.match(settings, /^FERRY_TRUST_FILE=\/var\/lib\/ferry\/trust\.json$/m);
    assert.doesNotMatch(settings, /FERRY_KEY/);
    assert.equal((await stat(join(engine.dir, 'ferry'))).mode & 0o777, 0o700);
  });

  let firstDeployment = '';

  test('ferry push and deploy/ferry-push.sh (pinning the host key) both deploy through the bootstrapped receiver', async () => {
    assert.ok(hostKey, 'needs the bootstrap of the previous test');
    const signer = { ...keyEnv(deployer), DOCKER_HOST: s.buildDockerHost };
    const pushed = await runFerry([
      'push', `${repo}:1`, '--to', url, '--name', service, '--network', 'host', '--env', `PORT=${appPort}`,
      '--health', `http://127.0.0.1:${appPort}/healthz`, '--health-interval', '100', '--json',
    ], signer);
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    firstDeployment = (JSON.parse(pushed.stdout) as { deploymentId: string }).deploymentId;
    assert.equal(await variant(), `v1-${run}`);
    // It runs on the bootstrapped host's engine, not on the stack's.
    assert.equal((await dockerodeFor(engine.host).getContainer(service).inspect()).State.Running, true);

    const shell = await capture('bash', [
      join(ROOT, 'deploy/ferry-push.sh'), `${repo}:2`, url, service, '--network', 'host', '--env', `PORT=${appPort}`,
      '--health', `http://127.0.0.1:${appPort}/healthz`, '--health-interval', '100', '--host-key', hostKey, '--json',
    ], env(signer));
    assert.equal(shell.code, 0, shell.stdout + shell.stderr);
    assert.equal((JSON.parse(shell.stdout) as { state: string }).state, 'COMPLETED');
    assert.equal(await variant(), `v2-${run}`);
  });

  test('bootstrap again upgrades in place: a new container on the new image, the same host key, trust and journal', async () => {
    assert.ok(firstDeployment, 'needs the deployments of the previous test');
    const before = await receiverContainer();
    const result = await bootstrap(upgradeImage, login);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stderr, /keeping the installed trust file/);
    assert.equal(printed(result, 'host\\skey'), hostKey, 'the host key is kept');
    assert.deepEqual(trusted(result), [`${admin.keyId} admin`, `${deployer.keyId} deploy`, `${retired.keyId} read`]);

    const after = await receiverContainer();
    assert.notEqual(after.Id, before.Id);
    // The settings file on the host kept the earlier --env and stays readable by its owner only.
    const settings = join(engine.dir, 'ferry', 'receiver.env');
    assert.match(await readFile(settings, 'utf8'), /^FERRY_RETAIN_IMAGES=5$/m);
    assert.equal((await stat(settings)).mode & 0o777, 0o600);
    assert.deepEqual((await readdir(join(engine.dir, 'ferry'))).filter((name) => name.startsWith('.stage')), [], 'no staging directory is left');
    assert.equal(after.Image, (await build.getImage(upgradeImage).inspect()).Id);
    const names = (await dockerodeFor(engine.host).listContainers({ all: true })).flatMap((c) => c.Names);
    assert.ok(!names.includes('/ferry-receiver.previous'), `the old container is removed: ${names.join(', ')}`);

    const status = await runFerry(['status', firstDeployment, '--to', url, '--json'], keyEnv(deployer));
    assert.equal(status.code, 0, status.stdout + status.stderr);
    const record = JSON.parse(status.stdout) as { deploymentId: string; state: string };
    assert.deepEqual([record.deploymentId, record.state], [firstDeployment, 'COMPLETED']);
    assert.equal(await variant(), `v2-${run}`, 'the deployed service kept running through the upgrade');
  });

  test('bootstrap with --trust-file replaces the trusted keys and with --tls-dir switches the receiver to HTTPS', async () => {
    assert.ok(firstDeployment, 'needs the deployments of the previous tests');
    const tls = join(sshd.dir, 'tls');
    await mkdir(tls);
    const cert = await capture('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(tls, 'key.pem'), '-out', join(tls, 'cert.pem'),
    ]);
    assert.equal(cert.code, 0, cert.stderr);
    // The rotation: the new key in, the old one kept until a date, the read-only key out; and a
    // key the file does not name, allowed by a grant the admin key signed.
    const file = trustFile([rotated, { key: deployer, notAfter: '2099-01-01T00:00:00Z' }, { key: admin, role: 'admin' }]);
    const granted = testKey(`granted-${run}`);
    const grant = grantFor(granted, admin, { role: 'read', hosts: [hostId] });
    const result = await bootstrap(upgradeImage, login, ['--tls-dir', tls, '--trust-file', file]);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const https = `https://127.0.0.1:${port}`;
    assert.equal(printed(result, 'url'), https);
    assert.equal(printed(result, 'host\\skey'), hostKey);
    assert.deepEqual(trusted(result), [`${admin.keyId} admin`, `${deployer.keyId} deploy`, `${rotated.keyId} deploy`]);

    const tlsEnv = { NODE_EXTRA_CA_CERTS: join(tls, 'cert.pem') };
    for (const [name, signer] of [['rotated', keyEnv(rotated)], ['old', keyEnv(deployer)], ['granted', keyEnv(granted, grant)]] as const) {
      const status = await runFerry(['status', firstDeployment, '--to', https, '--json'], { ...signer, ...tlsEnv });
      assert.equal(status.code, 0, `${name}: ${status.stdout}${status.stderr}`);
      assert.equal((JSON.parse(status.stdout) as { state: string }).state, 'COMPLETED');
    }
    const gone = await runFerry(['status', firstDeployment, '--to', https, '--json'], { ...keyEnv(retired), ...tlsEnv });
    assert.notEqual(gone.code, 0);
    assert.match(gone.stdout + gone.stderr, /FERRY_ERR_UNKNOWN_KEY/);
  });

  test('a settings directory someone else could have written to is refused before anything changes', async () => {
    const before = await receiverContainer();
    const cases: { dir: string; why: RegExp }[] = [];
    const open = join(sshd.dir, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    cases.push({ dir: open, why: /has mode 777/ });
    const link = join(sshd.dir, 'link');
    await symlink(join(engine.dir, 'ferry'), link);
    cases.push({ dir: link, why: /is a symbolic link/ });
    const shared = join(sshd.dir, 'shared');
    await mkdir(shared);
    await chmod(shared, 0o777);
    cases.push({ dir: join(shared, 'ferry'), why: /writable by others \(mode 777\) and not sticky/ });
    if (process.getuid?.() === 0) {
      const foreign = join(sshd.dir, 'foreign');
      await mkdir(foreign, { mode: 0o700 });
      await chown(foreign, 65534, 65534);
      cases.push({ dir: foreign, why: /belongs to uid 65534/ });
    }
    for (const { dir, why } of cases) {
      const result = await bootstrap(upgradeImage, login, [], {}, dir);
      assert.equal(result.code, 1, `${dir}: ${result.stdout}${result.stderr}`);
      assert.match(result.stderr, /refusing the settings directory/);
      assert.match(result.stderr, why);
    }
    const after = await receiverContainer();
    assert.deepEqual([after.Id, after.State.Running], [before.Id, true], 'the installed receiver is untouched');
    await rm(join(shared, 'ferry'), { recursive: true, force: true });
  });

  test('with --registry and a join token the receiver enrolls its host key and appears in the registry', async () => {
    assert.ok(hostKey, 'needs the bootstrap of the earlier tests');
    const registryPort = await freePort();
    const registryDir = await mkdtemp(join(sshd.dir, 'registry-'));
    const registryUrl = `http://127.0.0.1:${registryPort}`;
    const registry: FerryProcess = await startFerryProcess('registry', {
      FERRY_LISTEN: `127.0.0.1:${registryPort}`, FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }]), FERRY_DATA_DIR: registryDir,
      FERRY_HOST_ID: `registry-${run}`,
    });
    try {
      const client = new RegistryClient(registryUrl, admin);
      const { token } = await client.joinToken({ host: hostId });
      // The token through the environment: an argument would show in ps.
      const result = await bootstrap(upgradeImage, login, ['--registry', registryUrl, '--labels', `suite=${run}`], { FERRY_BOOTSTRAP_JOIN_TOKEN: token });
      assert.equal(result.code, 0, result.stdout + result.stderr);
      assert.doesNotMatch(result.stdout + result.stderr, new RegExp(token));
      assert.match(result.stderr, /enrolls its host key with/);
      const host = await until(async () => (await client.hosts()).find((h: HostRecord) => h.id === hostId && h.status === 'online'));
      assert.equal(host.hostKey, hostKey, 'the registry enrolled the key bootstrap printed');
      assert.deepEqual(host.labels, { suite: run });
    } finally {
      await registry.stop();
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
