import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { digestOf } from '@ferry/integrity';
import { FerryError } from '@ferry/protocol';
import { PackageStore } from '@ferry/receiver';

describe('package store', () => {
  let dataDir: string;
  let store: PackageStore;

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-store-'));
    await mkdir(join(dataDir, 'ingest'));
    store = await PackageStore.open(dataDir);
  });

  after(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  const spooled = async (content: string): Promise<{ path: string; digest: string }> => {
    const path = join(dataDir, 'ingest', `${content}.part`);
    await writeFile(path, content);
    return { path, digest: digestOf(content) };
  };

  it('moves a verified file to packages/blake3/<hex>, and knows it by digest', async () => {
    const { path, digest } = await spooled('one');
    assert.equal(await store.has(digest), false);
    const stored = await store.put(path, digest);
    assert.equal(stored, join(dataDir, 'packages', 'blake3', digest.slice('blake3:'.length)));
    assert.equal(stored, store.path(digest));
    assert.equal(await readFile(stored, 'utf8'), 'one');
    await assert.rejects(stat(path), { code: 'ENOENT' }, 'the spool file is gone: it was moved, not copied');
    assert.equal(await store.has(digest), true);
    assert.equal(await store.put(stored, digest), stored, 'a package already in the store stays where it is');
  });

  it('lists what it holds with sizes and times, and removes by digest', async () => {
    const { path, digest } = await spooled('second package');
    await store.put(path, digest);
    const listed = await store.list();
    const entry = listed.find((p) => p.digest === digest);
    assert.equal(entry?.bytes, 'second package'.length);
    assert.ok(entry?.mtime instanceof Date);
    await store.remove(digest);
    await store.remove(digest);
    assert.equal(await store.has(digest), false);
    assert.equal((await store.list()).some((p) => p.digest === digest), false);
  });

  it('refuses a digest that is not blake3:<64 hex>: it would become a path', () => {
    for (const bad of ['blake3:../../etc/passwd', 'sha256:' + 'a'.repeat(64), 'blake3:' + 'A'.repeat(64)]) {
      assert.throws(() => store.path(bad), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_INTERNAL');
    }
  });
});
