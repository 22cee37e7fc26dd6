/**
 * The receiver's store of retained releases on a real directory: newest kept by release id, a
 * release deployed again replaces its entry, a file that was tampered with is ignored as a
 * whole, only service names become file names, and a data disk below its reserve keeps two.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '@ferry/log';
import { configHash, newReleaseId, parseManifest, type DeploymentResult, type Manifest } from '@ferry/protocol';
import { ReleaseStore, type RetainedRelease } from '../../services/receiver/src/releases/store.ts';
import { retainRelease } from '../../services/receiver/src/releases/retain.ts';
import { releasesView } from '../../services/receiver/src/releases/view.ts';

const log = createLogger({ level: 'silent' });
const hex = (c: string): string => `sha256:${c.repeat(64)}`;

function manifest(service: string, releaseId: string, image: string): Manifest {
  const parsed = parseManifest({
    schema: 'ferry.manifest/v1', deploymentId: randomUUID(), createdAt: new Date().toISOString(),
    image: { ref: `shop/${service}:1`, id: image, diffIds: [hex('d')] },
    package: { format: 'docker-archive', compression: 'zstd', size: 1, digest: `blake3:${'0'.repeat(64)}` },
    service: { name: service, env: { TOKEN: 'not-in-the-view' } },
    release: { id: releaseId, phase: 1, phases: 2, wave: 0 },
  });
  assert.ok(parsed.ok);
  return parsed.manifest;
}

function retained(service: string, releaseId: string, image = hex('a')): RetainedRelease {
  const m = manifest(service, releaseId, image);
  return { releaseId, service, deploymentId: m.deploymentId, image: m.image.ref, imageId: m.image.id, configHash: configHash(m), at: new Date().toISOString(), manifest: m };
}

const days = new Map<number, string>();
/** The same release id for the same day, within this file. */
const day = (n: number): string => {
  const id = days.get(n) ?? newReleaseId(new Date(Date.UTC(2026, 0, n)));
  days.set(n, id);
  return id;
};

describe('retained releases store', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-rel-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  it('keeps the newest by release id, replaces a release deployed again, and reads it back', async () => {
    const store = await ReleaseStore.open(join(dir, 'a'), log);
    const ids = [day(1), day(2), day(3), day(4)];
    for (const id of [ids[2], ids[0], ids[3], ids[1]]) await store.retain(retained('web', id ?? ''), 3);
    assert.deepEqual(store.list().map((r) => r.releaseId), [ids[3], ids[2], ids[1]]);
    const again = retained('web', ids[2] ?? '', hex('b'));
    assert.deepEqual(await store.retain(again, 3), [], 'the same id replaces its entry');
    assert.equal(store.get('web', ids[2] ?? '')?.imageId, hex('b'));
    assert.deepEqual([...store.imageIds('web')].sort(), [hex('a'), hex('b')]);
    const reopened = await ReleaseStore.open(join(dir, 'a'), log);
    assert.deepEqual(reopened.list(), store.list());
    assert.deepEqual(await readdir(join(dir, 'a')), ['web.json']);
    assert.equal((await stat(join(dir, 'a', 'web.json'))).mode & 0o777, 0o600);
  });

  it('ignores a file whose entry and manifest disagree, or that is not its service', async () => {
    const path = join(dir, 'b');
    const store = await ReleaseStore.open(path, log);
    await store.retain(retained('api', day(5)), 5);
    const file = JSON.parse(await readFile(join(path, 'api.json'), 'utf8')) as { releases: { imageId: string }[] };
    const [first] = file.releases;
    if (first) first.imageId = hex('f');
    await writeFile(join(path, 'api.json'), JSON.stringify(file));
    await writeFile(join(path, 'db.json'), JSON.stringify({ version: 1, service: 'api', releases: [] }));
    await writeFile(join(path, '..rel.json'), '{}');
    assert.deepEqual((await ReleaseStore.open(path, log)).list(), []);
  });

  it('refuses a release id or service name that is not one', async () => {
    const store = await ReleaseStore.open(join(dir, 'c'), log);
    await assert.rejects(store.retain({ ...retained('web', day(6)), releaseId: '../../etc/passwd' }, 5));
    await assert.rejects(store.retain({ ...retained('web', day(6)), service: '../web' }, 5));
    assert.deepEqual(await readdir(join(dir, 'c')), []);
  });

  it('keeps two releases while the data disk is below its reserve', async () => {
    const releases = await ReleaseStore.open(join(dir, 'd'), log);
    const deps = { releases, keep: 5, disk: { dir, minFreeBytes: Number.MAX_SAFE_INTEGER }, logger: log };
    for (const n of [1, 2, 3]) {
      const r = retained('web', day(n));
      await retainRelease(deps, r.manifest, { state: 'COMPLETED' } as DeploymentResult);
    }
    assert.deepEqual(releases.list().map((r) => r.releaseId), [day(3), day(2)]);
    const failed = retained('web', day(4));
    await retainRelease(deps, failed.manifest, { state: 'ROLLED_BACK' } as DeploymentResult);
    assert.ok(!releases.get('web', day(4)), 'only a completed deployment is retained');
  });

  it('shows releases newest first, grouped, without env values', async () => {
    const store = await ReleaseStore.open(join(dir, 'e'), log);
    await store.retain(retained('web', day(7)), 5);
    await store.retain(retained('api', day(7)), 5);
    await store.retain(retained('web', day(8)), 5);
    const view = releasesView(store.list());
    assert.deepEqual(view.releases.map((r) => [r.id, r.services.map((x) => x.service)]), [[day(8), ['web']], [day(7), ['api', 'web']]]);
    assert.equal(view.releases[0]?.services[0]?.phase, 1);
    assert.ok(!JSON.stringify(view).includes('not-in-the-view'));
  });
});
