/**
 * Bundles in the NATS JetStream object store of the stack: `ferry bundle store` puts a verified
 * bundle, `stored` lists it, `fetch` gets it back byte for byte and verified. An object altered in
 * the store (put there by hand, past `store`'s check) is refused when fetched and leaves no file;
 * a file that is not a bundle is not stored; a name with a path in it is refused.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { openObjectStore } from '@ferry/events';
import { removeImages } from '../helpers/cleanup.ts';
import { buildTestImage, runFerry } from '../helpers/ferry.ts';
import { testKey } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const build = dockerodeFor(s.buildDockerHost);
const ref = `store-${run}:1`;
const bucket = `ferry-bundles-test-${run}`;
const vendor = testKey(`vendor-${run}`);

describe('the bundle store', { timeout: 300_000 }, () => {
  let dir: string;
  let bundle: string;
  const env = (): Record<string, string> => ({ FERRY_BUNDLE_STORE_URL: s.natsAdminUrl, FERRY_BUNDLE_BUCKET: bucket });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-store-'));
    await buildTestImage(s.buildDockerHost, ref, run);
    const file = join(dir, 'ferry.yaml');
    await writeFile(file, stringify({ version: 1, name: 'stored', services: { [`store-${run}`]: { image: ref, targets: ['http://127.0.0.1:1'], network: 'host' } } }));
    bundle = join(dir, 'app.ferry');
    const made = await runFerry(['bundle', 'create', '-f', file, '-o', bundle, '--key', vendor.file, '--key-id', vendor.keyId], { DOCKER_HOST: s.buildDockerHost });
    assert.equal(made.code, 0, made.stdout + made.stderr);
  });

  after(async () => {
    await removeImages(build, [ref]);
    const handle = await openObjectStore(s.natsAdminUrl, bucket, 'test-cleanup').catch(() => undefined);
    await handle?.store.destroy().catch(() => undefined);
    await handle?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('store, list, fetch back byte-identical, verify', async () => {
    const stored = await runFerry(['bundle', 'store', bundle, '--as', 'app-1', '--json'], env());
    assert.equal(stored.code, 0, stored.stdout + stored.stderr);
    const listed = await runFerry(['bundle', 'stored', '--json'], env());
    assert.equal(listed.code, 0, listed.stdout + listed.stderr);
    const list = JSON.parse(listed.stdout) as Array<{ name: string; size: number }>;
    assert.deepEqual(list.map((o) => [o.name, o.size]), [['app-1', (await stat(bundle)).size]]);
    const out = join(dir, 'fetched.ferry');
    const fetched = await runFerry(['bundle', 'fetch', 'app-1', '-o', out], env());
    assert.equal(fetched.code, 0, fetched.stdout + fetched.stderr);
    assert.deepEqual(await readFile(out), await readFile(bundle));
    const verified = await runFerry(['bundle', 'verify', out], {});
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  });

  test('an object altered in the store is refused when fetched, leaving no file', async () => {
    const bytes = Buffer.from(await readFile(bundle));
    const at = Math.floor(bytes.length / 2);
    bytes[at] = (bytes[at] ?? 0) ^ 0x01;
    const handle = await openObjectStore(s.natsAdminUrl, bucket, 'test-tamper');
    await handle.store.putBlob({ name: 'tampered' }, bytes);
    await handle.close();
    const out = join(dir, 'tampered.ferry');
    const fetched = await runFerry(['bundle', 'fetch', 'tampered', '-o', out], env());
    assert.equal(fetched.code, 1, fetched.stdout + fetched.stderr);
    assert.match(fetched.stderr, /FERRY_ERR_BUNDLE_(DIGEST|SIGNATURE|MALFORMED)/);
    await assert.rejects(stat(out));
  });

  test('what is not a bundle is not stored; a name with a path is refused', async () => {
    const junk = join(dir, 'junk.ferry');
    await writeFile(junk, 'junk');
    const refused = await runFerry(['bundle', 'store', junk], env());
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /FERRY_ERR_BUNDLE_MALFORMED/);
    for (const name of ['../etc/passwd', '.hidden', 'a/b']) {
      const bad = await runFerry(['bundle', 'fetch', name, '-o', join(dir, 'x.ferry')], env());
      assert.notEqual(bad.code, 0, name);
      assert.match(bad.stderr, /FERRY_ERR_USAGE/, name);
    }
    const listed = await runFerry(['bundle', 'stored', '--json'], env());
    assert.deepEqual((JSON.parse(listed.stdout) as Array<{ name: string }>).map((o) => o.name).sort(), ['app-1', 'tampered']);
  });
});
