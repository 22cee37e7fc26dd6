/**
 * Bundles against the real stack: a three-service release whose images (built FROM scratch on the
 * build engine) share their two lower layers is made into one signed file with `ferry bundle
 * create`, verified, read by skopeo as the OCI archive it is, split and joined, and applied on the
 * target engine by `ferry bundle apply` — no receiver, no URL — phase after phase with health
 * checks. Shared layers are stored once. A flipped byte in a blob, release.json or index.json, a
 * damaged part, a bundle signed by a key the host does not trust and one whose grant ended past its
 * grace are refused with their codes before anything is loaded; inside the grace it applies and
 * says so with a grant.grace event.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NatsConnection } from 'nats';
import { stringify } from 'yaml';
import { FileSource, scanBundle, type Entry } from '@ferry/bundle';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { EventWatcher } from '../helpers/events.ts';
import { buildTestImage, capture, freePort, runFerry, startReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { grantFor, keyEnv, testKey, trustFile, type TestKey } from '../helpers/keys.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const build = dockerodeFor(s.buildDockerHost);
const target = dockerodeFor(s.targetDockerHost);
const names = { db: `bdb-${run}`, api: `bapi-${run}`, web: `bweb-${run}` };
const refs = Object.values(names).map((name) => `bundle-${name}:1`);
/** web's next version: its top layer is new, the two below it are the ones every image shares. */
const web2 = `bundle-${names.web}:2`;
/** And the one after, bundled for the site's inventory. */
const web3 = `bundle-${names.web}:3`;
const hostId = `bundle-${run}`;
const admin = testKey(`admin-${run}`);
const vendor = testKey(`vendor-${run}`);
const foreign = testKey(`foreign-${run}`);
const operator = testKey(`operator-${run}`);
const DAY = 24 * 3600 * 1000;

describe('ferry bundle', { timeout: 600_000 }, () => {
  let dir: string;
  let file: string;
  let trust: string;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  const imageIds: string[] = [];
  const bundles: Record<'good' | 'grace' | 'expired' | 'foreign' | 'diff', string> = { good: '', grace: '', expired: '', foreign: '', diff: '' };
  let web2Id = '';
  let web3Id = '';

  const applyEnv = (dataDir: string): Record<string, string> => ({
    DOCKER_HOST: s.targetDockerHost, FERRY_DATA_DIR: dataDir, FERRY_TRUST_FILE: trust, FERRY_HOST_ID: hostId,
    FERRY_NATS_URL: s.natsUrl, FERRY_STABILITY_WINDOW_MS: '300',
  });

  async function create(out: string, key: TestKey, grant?: string): Promise<RunResult> {
    return runFerry(['bundle', 'create', '-f', file, '-o', out, '--key', key.file, '--key-id', key.keyId, ...(grant ? ['--grant', grant] : [])], { DOCKER_HOST: s.buildDockerHost });
  }

  async function grantFile(name: string, notAfter: Date, graceSeconds: number): Promise<string> {
    const path = join(dir, `${name}.grant.json`);
    await writeFile(path, JSON.stringify(grantFor(vendor, admin, { role: 'deploy', services: ['b*'], hosts: ['*'], notAfter, graceSeconds })));
    return path;
  }

  /** The target engine holds none of the bundle's images. */
  async function nothingLoaded(): Promise<void> {
    for (const id of imageIds) await assert.rejects(target.getImage(id).inspect(), `image ${id} is on the target engine`);
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-bundle-'));
    nc = await natsConnect(s.natsReaderUrl);
    watcher = new EventWatcher(nc, `ferry.events.${hostId}.>`);
    for (const [i, ref] of refs.entries()) imageIds.push(await buildTestImage(s.buildDockerHost, ref, `${run}-${i}`));
    const ports = [await freePort(), await freePort(), await freePort()];
    const service = (i: number, dependsOn?: string): Record<string, unknown> => ({
      image: refs[i], targets: ['http://127.0.0.1:1'], network: 'host', env: { PORT: String(ports[i]) },
      health: { type: 'http', url: `http://127.0.0.1:${ports[i]}/healthz`, interval: '200ms', retries: 50 },
      ...(dependsOn ? { depends_on: [dependsOn] } : {}),
    });
    file = join(dir, 'ferry.yaml');
    const services = { [names.db]: service(0), [names.api]: service(1, names.db), [names.web]: service(2, names.api) };
    await writeFile(file, stringify({ version: 1, name: 'bundled', services }));
    web2Id = await buildTestImage(s.buildDockerHost, web2, `${run}-next`);
    await writeFile(join(dir, 'ferry-2.yaml'), stringify({ version: 1, name: 'bundled', services: { ...services, [names.web]: { ...services[names.web], image: web2 } } }));
    web3Id = await buildTestImage(s.buildDockerHost, web3, `${run}-third`);
    await writeFile(join(dir, 'ferry-3.yaml'), stringify({ version: 1, name: 'bundled', services: { ...services, [names.web]: { ...services[names.web], image: web3 } } }));
    // The site trusts the vendor's admin key only; the vendor's key comes in with its grant, in the bundle.
    trust = trustFile([{ key: admin, role: 'admin' }]);
    const now = Date.now();
    bundles.good = join(dir, 'app.ferry');
    bundles.foreign = join(dir, 'foreign.ferry');
    bundles.expired = join(dir, 'expired.ferry');
    bundles.grace = join(dir, 'grace.ferry');
    for (const [out, key, grant] of [
      [bundles.good, vendor, await grantFile('good', new Date(now + 365 * DAY), 30 * 24 * 3600)],
      [bundles.foreign, foreign, undefined],
      [bundles.expired, vendor, await grantFile('expired', new Date(now - 10 * DAY), 7 * 24 * 3600)],
      [bundles.grace, vendor, await grantFile('grace', new Date(now - DAY), 7 * 24 * 3600)],
    ] as const) {
      const made = await create(out, key, grant);
      assert.equal(made.code, 0, made.stdout + made.stderr);
    }
    bundles.diff = join(dir, 'diff.ferry');
    const diff = await runFerry(['bundle', 'create', '-f', join(dir, 'ferry-2.yaml'), '-o', bundles.diff, '--since', bundles.good, '--key', vendor.file, '--key-id', vendor.keyId,
      '--grant', join(dir, 'good.grant.json'), '--json'], { DOCKER_HOST: s.buildDockerHost });
    assert.equal(diff.code, 0, diff.stdout + diff.stderr);
    // Only web's new top layer is carried; the four others are the first bundle's.
    assert.deepEqual((JSON.parse(diff.stdout) as { layers: unknown }).layers, { stored: 1, fromBase: 4, shared: 0 });
  });

  after(async () => {
    for (const name of Object.values(names)) await removeService(target, name);
    await removeImages(target, [...refs, ...imageIds, web2, web2Id, web3, web3Id]);
    await removeImages(build, [...refs, web2, web3]);
    await nc?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function entriesOf(path: string): Promise<Map<string, Entry>> {
    const source = await FileSource.open([path]);
    try {
      return await scanBundle(source);
    } finally {
      await source.close();
    }
  }

  test('holds the release and every layer once, as an OCI image layout', async () => {
    const entries = await entriesOf(bundles.good);
    const release = JSON.parse((await readFile(bundles.good)).subarray(entries.get('ferry/release.json')?.offset, (entries.get('ferry/release.json')?.offset ?? 0) + (entries.get('ferry/release.json')?.size ?? 0)).toString()) as {
      release: { phases: Array<{ services: string[] }>; services: Array<{ name: string; image: { id: string; layers: Array<{ digest: string; diffId: string }> } }> };
      provenance: { keyId: string; git?: unknown };
      grant?: unknown;
    };
    assert.deepEqual(release.release.phases.map((p) => p.services), [[names.db], [names.api], [names.web]]);
    assert.deepEqual(release.release.services.map((x) => x.image.id), imageIds);
    assert.equal(release.provenance.keyId, vendor.keyId);
    assert.ok(release.grant, 'the grant is embedded');
    const layers = release.release.services.flatMap((x) => x.image.layers);
    assert.equal(layers.length, 9);
    const distinct = new Set(layers.map((l) => l.digest));
    // busybox and the fixed /www layer are the same in all three images: 2 + 3 tops.
    assert.equal(distinct.size, 5);
    for (const digest of distinct) assert.ok(entries.has(`blobs/sha256/${digest.slice(7)}`), digest);
    const blobs = [...entries.keys()].filter((name) => name.startsWith('blobs/sha256/'));
    // 5 layers, 3 configs, 3 manifests, each once.
    assert.equal(blobs.length, 11);
    assert.ok(entries.has('oci-layout') && entries.has('index.json') && entries.has('ferry/signature'));
  });

  test('verifies, with and without the trust file', async () => {
    const plain = await runFerry(['bundle', 'verify', bundles.good], {});
    assert.equal(plain.code, 0, plain.stdout + plain.stderr);
    assert.match(plain.stdout, /signature: good/);
    const trusted = await runFerry(['bundle', 'verify', bundles.good, '--trust', trust, '--json'], {});
    assert.equal(trusted.code, 0, trusted.stdout + trusted.stderr);
    const report = JSON.parse(trusted.stdout) as { ok: boolean; trusted: boolean; blobs: { count: number }; licence?: { inGrace: boolean } };
    assert.deepEqual([report.ok, report.trusted, report.blobs.count, report.licence?.inGrace], [true, true, 11, false]);
    const untrusted = await runFerry(['bundle', 'verify', bundles.foreign, '--trust', trust], {});
    assert.equal(untrusted.code, 1);
    assert.match(untrusted.stderr + untrusted.stdout, /FERRY_ERR_BUNDLE_SIGNATURE/);
  });

  test('skopeo reads it as an oci-archive', async () => {
    const inspected = await capture('skopeo', ['inspect', `oci-archive:${bundles.good}:${names.api}`]);
    assert.equal(inspected.code, 0, inspected.stderr);
    const info = JSON.parse(inspected.stdout) as { Layers: string[]; LayersData?: Array<{ MIMEType: string }> };
    assert.equal(info.Layers.length, 3);
    const raw = await capture('skopeo', ['inspect', '--raw', `oci-archive:${bundles.good}:${names.web}`]);
    assert.equal(raw.code, 0, raw.stderr);
    const manifest = JSON.parse(raw.stdout) as { config: { digest: string }; layers: Array<{ mediaType: string }> };
    assert.equal(manifest.config.digest, imageIds[2]);
    assert.deepEqual(manifest.layers.map((l) => l.mediaType), Array(3).fill('application/vnd.oci.image.layer.v1.tar+zstd'));
  });

  test('a flipped byte anywhere is refused with its code, and nothing is loaded', async () => {
    const entries = await entriesOf(bundles.good);
    const layer = [...entries.values()].find((e) => e.name.startsWith('blobs/') && e.size > 100_000);
    const cases: Array<[string, Entry | undefined, RegExp]> = [
      ['a layer blob', layer, /FERRY_ERR_BUNDLE_DIGEST/],
      ['release.json', entries.get('ferry/release.json'), /FERRY_ERR_BUNDLE_SIGNATURE/],
      ['index.json', entries.get('index.json'), /FERRY_ERR_BUNDLE_DIGEST/],
    ];
    for (const [what, entry, code] of cases) {
      assert.ok(entry, what);
      const copy = join(dir, `flipped-${entry.name.replaceAll('/', '_')}.ferry`);
      await copyFile(bundles.good, copy);
      const handle = await open(copy, 'r+');
      const at = entry.offset + Math.floor(entry.size / 2);
      const byte = Buffer.alloc(1);
      await handle.read(byte, 0, 1, at);
      byte[0] = (byte[0] ?? 0) ^ 0x01;
      await handle.write(byte, 0, 1, at);
      await handle.close();
      const verified = await runFerry(['bundle', 'verify', copy], {});
      assert.equal(verified.code, 1, what);
      assert.match(verified.stderr + verified.stdout, code, what);
      const applied = await runFerry(['bundle', 'apply', copy], applyEnv(await mkdtemp(join(dir, 'data-'))));
      assert.equal(applied.code, 1, what);
      assert.match(applied.stderr + applied.stdout, code, what);
    }
    await nothingLoaded();
  });

  test('a bundle signed by a key the host does not trust is refused', async () => {
    const applied = await runFerry(['bundle', 'apply', bundles.foreign], applyEnv(await mkdtemp(join(dir, 'data-'))));
    assert.equal(applied.code, 1);
    assert.match(applied.stderr, /FERRY_ERR_BUNDLE_SIGNATURE/);
    await nothingLoaded();
  });

  test('a bundle whose grant ended past its grace is refused', async () => {
    const applied = await runFerry(['bundle', 'apply', bundles.expired], applyEnv(await mkdtemp(join(dir, 'data-'))));
    assert.equal(applied.code, 1);
    assert.match(applied.stderr, /FERRY_ERR_LICENCE_EXPIRED/);
    await nothingLoaded();
  });

  test('a differential bundle on a host that lacks its base is refused, naming the layers', async () => {
    const verified = await runFerry(['bundle', 'verify', bundles.diff, '--json'], {});
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    const base = (JSON.parse(verified.stdout) as { base: { layers: string[] } }).base;
    const applied = await runFerry(['bundle', 'apply', bundles.diff], applyEnv(await mkdtemp(join(dir, 'data-'))));
    assert.equal(applied.code, 1);
    assert.match(applied.stderr, /FERRY_ERR_BUNDLE_BASE_MISSING/);
    // The layers this engine lacks, every one of them a layer the bundle leaves out (the lower ones
    // may be on the stack's engine already: test images share them).
    const named = [...applied.stderr.matchAll(/sha256:[0-9a-f]{12}/g)].map((m) => m[0]);
    assert.ok(named.length >= 2, applied.stderr);
    for (const id of named) assert.ok(base.layers.some((layer) => layer.startsWith(id)), id);
    await nothingLoaded();
    await assert.rejects(target.getImage(web2Id).inspect());
  });

  let parts: string[] = [];

  test('splits into parts, each checked when joined', async () => {
    const split = await runFerry(['bundle', 'split', bundles.good, '--size', '1m'], {});
    assert.equal(split.code, 0, split.stdout + split.stderr);
    parts = split.stdout.trim().split('\n').filter((l) => l.includes('.part-')).map((l) => join(dir, l.split(/\s+/)[0] ?? ''));
    assert.ok(parts.length >= 2, split.stdout);
    const joined = join(dir, 'joined.ferry');
    const ok = await runFerry(['bundle', 'join', parts[0] ?? '', '-o', joined], {});
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.deepEqual(await readFile(joined), await readFile(bundles.good));
    // A damaged part is named, and nothing is joined.
    const last = parts.at(-1) ?? '';
    const original = await readFile(last);
    const damaged = Buffer.from(original);
    damaged[0] = (damaged[0] ?? 0) ^ 0xff;
    await writeFile(last, damaged);
    const refused = await runFerry(['bundle', 'join', parts[0] ?? '', '-o', join(dir, 'joined-2.ferry')], {});
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /FERRY_ERR_BUNDLE_DIGEST/);
    assert.match(refused.stderr, new RegExp(last.split('/').at(-1)?.replace('.', '\\.') ?? ''));
    await writeFile(last, original);
  });

  test('applies on the target engine from its first part, phase after phase, healthy', async () => {
    const applied = await runFerry(['bundle', 'apply', parts[0] ?? '', '--json'], applyEnv(join(dir, 'site')));
    assert.equal(applied.code, 0, applied.stdout + applied.stderr);
    const result = JSON.parse(applied.stdout) as { ok: boolean; services: Array<{ name: string; state: string; deploymentId: string }> };
    assert.deepEqual(result.services.map((x) => [x.name, x.state]), [[names.db, 'COMPLETED'], [names.api, 'COMPLETED'], [names.web, 'COMPLETED']]);
    const started: number[] = [];
    for (const [i, name] of Object.values(names).entries()) {
      const info = await target.getContainer(name).inspect();
      assert.equal(info.Image, imageIds[i]);
      assert.equal(info.State.Running, true);
      started.push(Date.parse(info.State.StartedAt));
    }
    // db healthy before api started, api before web.
    assert.ok((started[0] ?? 0) < (started[1] ?? 0) && (started[1] ?? 0) < (started[2] ?? 0), JSON.stringify(started));
    const completed = await Promise.all(result.services.map((x) => watcher.until(x.deploymentId, 'deployment.completed')));
    assert.equal(completed.length, 3);
  });

  test('a bundle inside its grant\'s grace applies, with a grant.grace event', async () => {
    const applied = await runFerry(['bundle', 'apply', bundles.grace, '--json'], applyEnv(join(dir, 'site')));
    assert.equal(applied.code, 0, applied.stdout + applied.stderr);
    const result = JSON.parse(applied.stdout) as { ok: boolean; licence: { inGrace: boolean }; services: Array<{ name: string; state: string; deploymentId: string }> };
    assert.equal(result.licence.inGrace, true);
    assert.deepEqual(result.services.map((x) => x.state), ['COMPLETED', 'COMPLETED', 'COMPLETED']);
    for (const x of result.services) {
      const grace = await watcher.until(x.deploymentId, 'grant.grace');
      assert.equal(grace.data.keyId, vendor.keyId);
    }
  });

  test('the differential bundle applies over the host that has its base', async () => {
    const applied = await runFerry(['bundle', 'apply', bundles.diff, '--json'], applyEnv(join(dir, 'site')));
    assert.equal(applied.code, 0, applied.stdout + applied.stderr);
    const result = JSON.parse(applied.stdout) as { services: Array<{ name: string; state: string }> };
    assert.deepEqual(result.services.map((x) => x.state), ['COMPLETED', 'COMPLETED', 'COMPLETED']);
    assert.equal((await target.getContainer(names.web).inspect()).Image, web2Id);
  });

  test('ferry inventory of the site, and a bundle made for it, carrying only the layer the site lacks, applied there', async () => {
    const inventoryFile = join(dir, 'site.json');
    const taken = await runFerry(['inventory', '-o', inventoryFile, '--host', 'site-1'], { DOCKER_HOST: s.targetDockerHost });
    assert.equal(taken.code, 0, taken.stdout + taken.stderr);
    const text = await readFile(inventoryFile, 'utf8');
    const inventory = JSON.parse(text) as { schema: string; host: string; chains: string[][] };
    assert.equal(inventory.schema, 'ferry.inventory/v1');
    assert.equal(inventory.host, 'site-1');
    const running = (await target.getImage(web2Id).inspect()).RootFS.Layers ?? [];
    assert.ok(inventory.chains.some((c) => c.join() === running.join()), 'the running web image\'s layers are listed');
    assert.ok(!text.includes(names.web) && !text.includes(web2Id), 'no image name or id leaves the site');

    const out = join(dir, 'for-site.ferry');
    const made = await runFerry(['bundle', 'create', '-f', join(dir, 'ferry-3.yaml'), '-o', out, '--for-inventory', inventoryFile,
      '--key', vendor.file, '--key-id', vendor.keyId, '--grant', join(dir, 'good.grant.json'), '--json'], { DOCKER_HOST: s.buildDockerHost });
    assert.equal(made.code, 0, made.stdout + made.stderr);
    // Only web's new top layer: the site holds every other one.
    assert.deepEqual((JSON.parse(made.stdout) as { layers: unknown }).layers, { stored: 1, fromBase: 4, shared: 0 });
    const verified = await runFerry(['bundle', 'verify', out, '--json'], {});
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    const base = (JSON.parse(verified.stdout) as { base: { inventory: { host: string; digest: string }; layers: string[] } }).base;
    assert.equal(base.inventory.host, 'site-1');
    assert.equal(base.layers.length, 4);
    // OCI tools read it; a layer the site holds is named uncompressed, by its diff id.
    const raw = await capture('skopeo', ['inspect', '--raw', `oci-archive:${out}:${names.web}`]);
    assert.equal(raw.code, 0, raw.stderr);
    const layers = (JSON.parse(raw.stdout) as { layers: Array<{ mediaType: string; digest: string }> }).layers;
    assert.deepEqual(layers.map((l) => l.mediaType), ['application/vnd.oci.image.layer.v1.tar', 'application/vnd.oci.image.layer.v1.tar', 'application/vnd.oci.image.layer.v1.tar+zstd']);
    assert.deepEqual(layers.slice(0, 2).map((l) => l.digest), running.slice(0, 2));

    const applied = await runFerry(['bundle', 'apply', out, '--json'], applyEnv(join(dir, 'site')));
    assert.equal(applied.code, 0, applied.stdout + applied.stderr);
    assert.deepEqual((JSON.parse(applied.stdout) as { services: Array<{ state: string }> }).services.map((x) => x.state), ['COMPLETED', 'COMPLETED', 'COMPLETED']);
    assert.equal((await target.getContainer(names.web).inspect()).Image, web3Id);

    // What is not an inventory is refused with its code, and no bundle is written.
    for (const [name, body] of [['not-json', '{"schema": "ferry.inventory/v1", '], ['other', JSON.stringify({ ...inventory, chains: [['sha256:../../etc']] })]] as const) {
      await writeFile(join(dir, `${name}.json`), body);
      const refused = await runFerry(['bundle', 'create', '-f', join(dir, 'ferry-3.yaml'), '-o', join(dir, `${name}.ferry`), '--for-inventory', join(dir, `${name}.json`),
        '--key', vendor.file, '--key-id', vendor.keyId], { DOCKER_HOST: s.buildDockerHost });
      assert.equal(refused.code, 2, refused.stdout + refused.stderr);
      assert.match(refused.stderr, /FERRY_ERR_BAD_INVENTORY/);
      await assert.rejects(readFile(join(dir, `${name}.ferry`)));
    }
  });

  test('push sends the bundle\'s images to a receiver through the sender\'s delivery, phase after phase', async () => {
    // A receiver of its own on the target engine, which trusts the operator's deploy key.
    for (const name of Object.values(names)) await removeService(target, name);
    const receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_HOST_ID: `${hostId}-rx`, FERRY_TRUST_FILE: trustFile([operator]) });
    try {
      const pushed = await runFerry(['bundle', 'push', bundles.good, '--to', receiver.url, '--json'], { ...keyEnv(operator) });
      assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
      const result = JSON.parse(pushed.stdout.trim().split('\n').at(-1) ?? '{}') as { ok: boolean; services: Array<{ service: string; targets: Array<{ state: string }> }> };
      assert.deepEqual(result.services.map((x) => [x.service, x.targets.map((t) => t.state)]), [[names.db, ['COMPLETED']], [names.api, ['COMPLETED']], [names.web, ['COMPLETED']]]);
      for (const [i, name] of Object.values(names).entries()) assert.equal((await target.getContainer(name).inspect()).Image, imageIds[i]);
      // A differential bundle lacks what it leaves out: it is refused, naming that.
      const partial = await runFerry(['bundle', 'push', bundles.diff, '--to', receiver.url], { ...keyEnv(operator) });
      assert.equal(partial.code, 1);
      assert.match(partial.stdout + partial.stderr, /FERRY_ERR_BUNDLE_BASE_MISSING/);
    } finally {
      await receiver.stop();
    }
  });
});
