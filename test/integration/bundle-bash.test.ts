/**
 * deploy/bundle-apply.sh, the bundle's apply path for hosts without Ferry, run with a PATH that
 * holds only the tools it names (no node): a bundle made by `ferry bundle create` deploys on the
 * stack's target engine phase after phase with its http health checks; a flipped byte in a layer,
 * a bundle signed by a key other than the one given, and hostile archives (a link, an absolute
 * path, '..') are refused with nothing loaded; a version failing its check is removed and the
 * previous container runs again.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { FileSource, scanBundle } from '@ferry/bundle';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { buildTestImage, capture, freePort, runFerry, type RunResult } from '../helpers/ferry.ts';
import { testKey, type TestKey } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const SCRIPT = join(ROOT, 'deploy', 'bundle-apply.sh');
const TOOLS = ['bash', 'tar', 'zstd', 'sha256sum', 'openssl', 'docker', 'curl', 'grep', 'sed', 'sort', 'uniq', 'mktemp', 'head', 'wc', 'cut', 'tr', 'rm',
  'mkdir', 'cat', 'timeout', 'sleep', 'chmod', 'cp', 'find'];
const run = randomBytes(4).toString('hex');
const s = stack();
const build = dockerodeFor(s.buildDockerHost);
const target = dockerodeFor(s.targetDockerHost);
const names = { api: `shapi-${run}`, web: `shweb-${run}` };
const refs = Object.values(names).map((name) => `bash-${name}:1`);
const vendor = testKey(`vendor-${run}`);
const foreign = testKey(`foreign-${run}`);

describe('deploy/bundle-apply.sh', { timeout: 600_000 }, () => {
  let dir: string;
  let bin: string;
  let good: string;
  let signedElsewhere: string;
  let failing: string;
  let vendorPub: string;
  const imageIds: string[] = [];

  const apply = (bundle: string, key = vendorPub): Promise<RunResult> =>
    capture(join(bin, 'bash'), [SCRIPT, '--key', key, '--work', dir, bundle], { PATH: bin, DOCKER_HOST: s.targetDockerHost, HOME: dir });

  async function nothingLoaded(): Promise<void> {
    for (const id of imageIds) await assert.rejects(target.getImage(id).inspect(), `image ${id} is on the target engine`);
  }

  async function deploymentFile(path: string, ports: number[], badCheck = false): Promise<void> {
    const nobody = await freePort();
    const service = (i: number, dependsOn?: string): Record<string, unknown> => ({
      image: refs[i], targets: ['http://127.0.0.1:1'], network: 'host', env: { PORT: String(ports[i]), GREETING: 'a "quoted" value\\with a backslash' },
      health: { type: 'http', url: `http://127.0.0.1:${badCheck && i === 1 ? nobody : ports[i]}/healthz`, interval: '200ms', retries: badCheck && i === 1 ? 5 : 50 },
      ...(dependsOn ? { depends_on: [dependsOn] } : {}),
    });
    await writeFile(path, stringify({ version: 1, name: 'bashed', services: { [names.api]: service(0), [names.web]: service(1, names.api) } }));
  }

  async function create(file: string, out: string, key: TestKey): Promise<void> {
    const made = await runFerry(['bundle', 'create', '-f', file, '-o', out, '--key', key.file, '--key-id', key.keyId], { DOCKER_HOST: s.buildDockerHost });
    assert.equal(made.code, 0, made.stdout + made.stderr);
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-bash-'));
    bin = join(dir, 'bin');
    await mkdir(bin);
    for (const tool of TOOLS) await symlink(execFileSync('bash', ['-c', `command -v ${tool}`]).toString().trim(), join(bin, tool));
    vendorPub = join(dir, 'vendor.pub.pem');
    execFileSync('openssl', ['pkey', '-in', vendor.file, '-pubout', '-out', vendorPub]);
    for (const [i, ref] of refs.entries()) imageIds.push(await buildTestImage(s.buildDockerHost, ref, `${run}-${i}`));
    const ports = [await freePort(), await freePort()];
    await deploymentFile(join(dir, 'ferry.yaml'), ports);
    await deploymentFile(join(dir, 'failing.yaml'), ports, true);
    good = join(dir, 'app.ferry');
    signedElsewhere = join(dir, 'foreign.ferry');
    failing = join(dir, 'failing.ferry');
    await create(join(dir, 'ferry.yaml'), good, vendor);
    await create(join(dir, 'ferry.yaml'), signedElsewhere, foreign);
    await create(join(dir, 'failing.yaml'), failing, vendor);
  });

  after(async () => {
    for (const name of Object.values(names)) await removeService(target, name);
    await removeImages(target, [...refs, ...imageIds]);
    await removeImages(build, refs);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('runs with no node on its PATH', async () => {
    const which = await capture(join(bin, 'bash'), ['-c', 'command -v node || echo none'], { PATH: bin });
    assert.equal(which.stdout.trim(), 'none');
  });

  test('a flipped byte in a layer is refused, nothing loaded', async () => {
    const source = await FileSource.open([good]);
    const entries = await scanBundle(source).finally(() => source.close());
    const layer = [...entries.values()].find((e) => e.name.startsWith('blobs/') && e.size > 100_000);
    assert.ok(layer);
    const copy = join(dir, 'flipped.ferry');
    await copyFile(good, copy);
    const handle = await open(copy, 'r+');
    const at = layer.offset + Math.floor(layer.size / 2);
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, at);
    byte[0] = (byte[0] ?? 0) ^ 0x01;
    await handle.write(byte, 0, 1, at);
    await handle.close();
    const refused = await apply(copy);
    assert.equal(refused.code, 1, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /FERRY_ERR_BUNDLE_DIGEST/);
    await nothingLoaded();
  });

  test('a bundle signed by another key than the one given is refused, nothing loaded', async () => {
    const refused = await apply(signedElsewhere);
    assert.equal(refused.code, 1, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /FERRY_ERR_BUNDLE_SIGNATURE/);
    await nothingLoaded();
  });

  test('hostile archives are refused before anything is extracted', async () => {
    const staging = join(dir, 'hostile');
    await mkdir(staging);
    await writeFile(join(staging, 'index.json'), '{}');
    await symlink('/etc/shadow', join(staging, 'oci-layout'));
    const cases: Array<[string, string[]]> = [
      ['a link', ['-cf', join(dir, 'link.ferry'), '-C', staging, 'oci-layout', 'index.json']],
      ['an absolute path', ['-cPf', join(dir, 'absolute.ferry'), join(staging, 'index.json')]],
      ['..', ['-cf', join(dir, 'dotdot.ferry'), '-C', staging, '../hostile/index.json']],
    ];
    for (const [what, args] of cases) {
      execFileSync('tar', args);
      const refused = await apply(args[1] ?? '');
      assert.equal(refused.code, 1, what);
      assert.match(refused.stderr, /FERRY_ERR_UNSAFE_ARCHIVE|FERRY_ERR_BUNDLE_MALFORMED/, `${what}: ${refused.stderr}`);
    }
    await nothingLoaded();
  });

  test('a good bundle deploys phase after phase, healthy, each image proven by its id', async () => {
    const applied = await apply(good);
    assert.equal(applied.code, 0, applied.stdout + applied.stderr);
    assert.match(applied.stdout, /signature: good/);
    const started: number[] = [];
    for (const [i, name] of Object.values(names).entries()) {
      const info = await target.getContainer(name).inspect();
      assert.equal(info.Image, imageIds[i]);
      assert.equal(info.State.Running, true);
      assert.ok(info.Config.Env.includes('GREETING=a "quoted" value\\with a backslash'), JSON.stringify(info.Config.Env));
      started.push(Date.parse(info.State.StartedAt));
    }
    assert.ok((started[0] ?? 0) < (started[1] ?? 0), 'api before web');
  });

  test('a version failing its health check is removed and the previous container runs again', async () => {
    const before = await target.getContainer(names.web).inspect();
    const applied = await apply(failing);
    assert.equal(applied.code, 1, applied.stdout + applied.stderr);
    assert.match(applied.stdout, /ROLLED_BACK/);
    const afterwards = await target.getContainer(names.web).inspect();
    assert.equal(afterwards.Id, before.Id);
    assert.equal(afterwards.State.Running, true);
  });
});
