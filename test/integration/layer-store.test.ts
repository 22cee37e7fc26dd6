/**
 * The sender reads images straight from the build engine's overlay2 layer store (libs/docker
 * layer-store.ts, services/sender store-archive.ts). Against the stack's real engines: the archive
 * it makes carries the layers docker save carries, byte for byte, and the target engine loads it
 * (whole, and with held layers left out) as the same image. A store whose files do not match
 * their diff ids, or look different than expected, fails the read instead of sending them; those
 * cases run on a copy of real layers in a directory of the test's own, so the shared engine is
 * never touched.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, readFile, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BLOCK, ImageStore, LayerStore, LayerStoreUnreadable, createDockerClient, paddedSize, readHeader } from '@ferry/docker';
import { FerryError, chainIds } from '@ferry/protocol';
import { NullSink } from '@ferry/events';
import { buildPackage, planStoreArchive, producePackage, push, storeArchiveChunks, streamStoreArchive } from '@ferry/sender';
import { capture, startReceiverProcess } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { engines, stack } from '../helpers/stack.ts';
import { testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const { build, target, buildImages, targetImages } = engines(s);
const repo = `ferry-ls-${run}`;
/** The same in v1 and v2, so that only their top layers differ. */
const big = randomBytes(3 * 1024 * 1024 + 123);

/**
 * An image whose layers hold what a tar can: a file over several read chunks, a hard link, a
 * symlink, an empty file, a name that is not UTF-8, a path longer than ustar's 100 bytes, and a
 * whiteout for a file of a lower layer. Built with the classic builder on the build engine.
 */
async function buildTrickyImage(ref: string, top: string): Promise<string> {
  const context = await mkdtemp(join(tmpdir(), 'ferry-ls-'));
  try {
    await cp(process.env.FERRY_BUSYBOX ?? '/bin/busybox', join(context, 'busybox'));
    await writeFile(join(context, 'big.bin'), big);
    await writeFile(join(context, 'gone.txt'), 'removed above\n');
    await writeFile(join(context, 'top.txt'), top);
    const long = `${'d'.repeat(60)}/${'e'.repeat(60)}/${'f'.repeat(40)}`;
    await writeFile(join(context, 'Dockerfile'), [
      'FROM scratch',
      'COPY busybox /bin/busybox',
      'COPY big.bin gone.txt /data/',
      `RUN ["/bin/busybox", "sh", "-c", "B=/bin/busybox; $B mkdir -p /x/${long} && $B ln /data/big.bin /x/hard && $B ln -s /data/big.bin /x/soft && : > /x/empty && $B rm /data/gone.txt && echo long > /x/${long}/file.txt && echo odd > \\"/x/$($B printf 'n\\\\377me')\\""]`,
      'COPY top.txt /top.txt',
      'ENTRYPOINT ["/bin/busybox", "sleep", "86400"]', '',
    ].join('\n'));
    const env = { ...process.env, DOCKER_HOST: s.buildDockerHost, DOCKER_BUILDKIT: '0' };
    const built = await capture('docker', ['build', '-q', '--network', 'none', '-t', ref, context], env);
    if (built.code !== 0) throw new Error(`docker build failed: ${built.stderr}`);
    return (await capture('docker', ['image', 'inspect', '--format', '{{.Id}}', ref], env)).stdout.trim();
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

/** Every entry of a tar in memory (test images are a few MiB): name → content. */
function entriesOf(tar: Buffer): Map<string, Buffer> {
  const entries = new Map<string, Buffer>();
  for (let at = 0; at + BLOCK <= tar.length;) {
    const read = readHeader(tar.subarray(at, at + BLOCK));
    if (read.kind === 'end') break;
    assert.equal(read.kind, 'header');
    if (read.kind !== 'header') break;
    entries.set(read.header.name, tar.subarray(at + BLOCK, at + BLOCK + read.header.size));
    at += BLOCK + paddedSize(read.header.size);
  }
  return entries;
}

async function collect(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

const sha256 = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

describe('reading images from the layer store', { timeout: 300_000 }, () => {
  let store: LayerStore;
  let v1 = { id: '', diffIds: [] as string[] };
  let v2 = { id: '', diffIds: [] as string[] };
  const scratch: string[] = [];

  before(async () => {
    const found = await buildImages.layerStore();
    assert.ok(found, 'the stack\'s build engine runs here on overlay2 and its data root is readable');
    store = found;
    for (const [tag, version] of [['1', 'one'], ['2', 'two']] as const) {
      const id = await buildTrickyImage(`${repo}:${tag}`, `top ${version} ${run}\n`);
      const info = await buildImages.inspect(id);
      assert.ok(info);
      if (tag === '1') v1 = { id, diffIds: info.diffIds };
      else v2 = { id, diffIds: info.diffIds };
    }
  });

  after(async () => {
    await removeImages(target, [v2.id, v1.id]);
    await removeImages(build, [`${repo}:1`, `${repo}:2`]);
    for (const dir of scratch) await rm(dir, { recursive: true, force: true });
  });

  test('the archive carries the layers and config docker save carries, byte for byte, and a manifest naming every layer', async () => {
    const plan = await planStoreArchive(store, v1.id, v1.diffIds, []);
    const entries = entriesOf(await collect(streamStoreArchive(store, v1.id, v1.diffIds, plan)));
    const saved = entriesOf(await collect(await buildImages.save(v1.id)));
    const chains = chainIds(v1.diffIds);
    assert.equal(v1.diffIds.length, 4);
    const manifest = JSON.parse(entries.get('manifest.json')?.toString() ?? 'null') as [{ Config: string; RepoTags: null; Layers: string[] }];
    assert.deepEqual(manifest, [{ Config: `${v1.id.slice(7)}.json`, RepoTags: null, Layers: chains.map((chain) => `${chain.slice(7)}/layer.tar`) }]);
    assert.deepEqual(entries.get(`${v1.id.slice(7)}.json`), saved.get(`${v1.id.slice(7)}.json`));
    const savedLayers = [...saved].filter(([name]) => name.endsWith('/layer.tar')).map(([, bytes]) => sha256(bytes)).sort();
    const readLayers = chains.map((chain) => sha256(entries.get(`${chain.slice(7)}/layer.tar`) ?? Buffer.alloc(0)));
    assert.deepEqual(readLayers, v1.diffIds);
    assert.deepEqual([...readLayers].sort(), savedLayers);
  });

  test('the target engine loads the archive as the same image, and a partial one on top of the layers it holds', async () => {
    const whole = await planStoreArchive(store, v1.id, v1.diffIds, []);
    const loaded = await targetImages.load(streamStoreArchive(store, v1.id, v1.diffIds, whole));
    assert.deepEqual(loaded.imageIds, [v1.id]);
    // v2 shares every layer but the top one: the archive carries only that one.
    assert.deepEqual(v2.diffIds.slice(0, 3), v1.diffIds.slice(0, 3));
    const partial = await planStoreArchive(store, v2.id, v2.diffIds, v2.diffIds.slice(0, 3));
    assert.deepEqual(partial.omitted, v2.diffIds.slice(0, 3));
    assert.deepEqual(partial.layers.map((layer) => layer.diffId), v2.diffIds.slice(3));
    const bytes = await collect(streamStoreArchive(store, v2.id, v2.diffIds, partial));
    assert.ok(bytes.length < 64 * 1024, `the partial archive is small (${bytes.length} bytes)`);
    assert.deepEqual((await targetImages.load(streamStoreArchive(store, v2.id, v2.diffIds, partial))).imageIds, [v2.id]);
    assert.equal((await target.getImage(v2.id).inspect()).Id, v2.id);
  });

  /** A data root of the test's own holding a copy of v1's layers and config, to break at will. */
  const copyStore = async (): Promise<{ root: string; copy: LayerStore; filesOf: (diffId: string) => Promise<string> }> => {
    const root = await mkdtemp('/tmp/fls-');
    scratch.push(root);
    const chains = chainIds(v1.diffIds);
    await mkdir(join(root, 'image', 'overlay2', 'imagedb', 'content', 'sha256'), { recursive: true });
    await cp(join(store.root, 'image', 'overlay2', 'imagedb', 'content', 'sha256', v1.id.slice(7)), join(root, 'image', 'overlay2', 'imagedb', 'content', 'sha256', v1.id.slice(7)));
    for (const chain of chains) {
      const meta = join('image', 'overlay2', 'layerdb', 'sha256', chain.slice(7));
      await cp(join(store.root, meta), join(root, meta), { recursive: true });
      const cacheId = (await readFile(join(root, meta, 'cache-id'), 'utf8')).trim();
      // cp -a keeps what Node's cp might not (whiteout devices, hard links, odd names).
      await mkdir(join(root, 'overlay2', cacheId), { recursive: true });
      const copied = await capture('cp', ['-a', join(store.root, 'overlay2', cacheId, 'diff'), join(root, 'overlay2', cacheId, 'diff')]);
      assert.equal(copied.code, 0, copied.stderr);
    }
    const copy = await LayerStore.open(root, 'overlay2');
    assert.ok(copy);
    const filesOf = async (diffId: string): Promise<string> => {
      const chain = chains[v1.diffIds.indexOf(diffId)] ?? '';
      const cacheId = (await readFile(join(root, 'image', 'overlay2', 'layerdb', 'sha256', chain.slice(7), 'cache-id'), 'utf8')).trim();
      return join(root, 'overlay2', cacheId, 'diff');
    };
    return { root, copy, filesOf };
  };

  test('an uncompressed package is read into one reused buffer and is the streamed archive, byte for byte', async () => {
    const plan = await planStoreArchive(store, v1.id, v1.diffIds, []);
    const streamed = await collect(streamStoreArchive(store, v1.id, v1.diffIds, plan));
    // Each layer's chunks are one buffer, read into again for the next chunk (big.bin spans several).
    const buffers = new Set<ArrayBufferLike>();
    const copied: Buffer[] = [];
    for await (const chunk of storeArchiveChunks(store, v1.id, v1.diffIds, plan, { reuse: true })) {
      if (chunk.length >= 64 * 1024) buffers.add(chunk.buffer);
      copied.push(Buffer.from(chunk));
    }
    assert.ok(buffers.size <= plan.layers.length, `${buffers.size} buffers for ${plan.layers.length} layers`);
    assert.ok(Buffer.concat(copied).equals(streamed));
    const pkg = await buildPackage(buildImages, { ref: `${repo}:1`, id: v1.id, diffIds: v1.diffIds }, 'none');
    try {
      assert.equal(pkg.exportedBy, 'layer-store');
      assert.ok((await readFile(pkg.path)).equals(streamed), 'the package file is the archive');
      assert.equal(pkg.size, streamed.length);
      assert.equal(pkg.rawBytes, streamed.length);
    } finally {
      await pkg.remove();
    }
  });

  test('an uncompressed package whose destination fails midway fails with the destination\'s own error, not as a docker failure', async () => {
    // What a part cutter does when the receiver refuses a part: it fails with the refusal.
    const refusal = new FerryError('FERRY_ERR_BODY_DIGEST_MISMATCH', { message: 'refused by the receiver' });
    let taken = 0;
    const destination = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        taken += chunk.length;
        callback(taken > 1024 * 1024 ? refusal : null);
      },
    });
    await assert.rejects(
      producePackage(buildImages, { ref: `${repo}:1`, id: v1.id, diffIds: v1.diffIds }, 'none', destination),
      (err: unknown) => err === refusal,
    );
  });

  test('a copy of the store reads the same; a changed byte, a file turned symlink or a missing tar-split fails the read', async () => {
    const { root, copy, filesOf } = await copyStore();
    const chains = chainIds(v1.diffIds);
    const plan = await planStoreArchive(copy, v1.id, v1.diffIds, []);
    const entries = entriesOf(await collect(streamStoreArchive(copy, v1.id, v1.diffIds, plan)));
    assert.deepEqual(chains.map((chain) => sha256(entries.get(`${chain.slice(7)}/layer.tar`) ?? Buffer.alloc(0))), v1.diffIds);

    // The COPY of big.bin and gone.txt, above busybox's.
    const dataLayer = v1.diffIds[1] ?? '';
    const bigFile = join(await filesOf(dataLayer), 'data', 'big.bin');
    const changed = Buffer.from(big);
    changed[2 * 1024 * 1024] = (changed[2 * 1024 * 1024] ?? 0) ^ 0xff;
    await writeFile(bigFile, changed);
    await assert.rejects(collect(streamStoreArchive(copy, v1.id, v1.diffIds, plan)), (err: unknown) => err instanceof LayerStoreUnreadable && /does not match its diff id/.test(err.message));

    await unlink(bigFile);
    await symlink('/etc/hostname', bigFile);
    await assert.rejects(collect(streamStoreArchive(copy, v1.id, v1.diffIds, plan)), (err: unknown) => err instanceof LayerStoreUnreadable && /not readable/.test(err.message));

    await unlink(join(root, 'image', 'overlay2', 'layerdb', 'sha256', (chains[1] ?? '').slice(7), 'tar-split.json.gz'));
    await assert.rejects(planStoreArchive(copy, v1.id, v1.diffIds, []), LayerStoreUnreadable);
    // Leaving that layer out needs none of its files.
    assert.equal((await planStoreArchive(copy, v1.id, v1.diffIds, v1.diffIds.slice(0, 2))).layers.length, 2);
  });

  test('a config that does not hash to the image id, or a layer recorded under another diff id, is refused', async () => {
    const { root, copy } = await copyStore();
    const configPath = join(root, 'image', 'overlay2', 'imagedb', 'content', 'sha256', v1.id.slice(7));
    await writeFile(configPath, Buffer.concat([await readFile(configPath), Buffer.from(' ')]));
    await assert.rejects(copy.config(v1.id), (err: unknown) => err instanceof LayerStoreUnreadable && /does not hash/.test(err.message));
    const top = chainIds(v1.diffIds).at(-1) ?? '';
    await writeFile(join(root, 'image', 'overlay2', 'layerdb', 'sha256', top.slice(7), 'diff'), v2.diffIds.at(-1) ?? '');
    await assert.rejects(copy.layer(v1.diffIds.at(-1) ?? '', top), LayerStoreUnreadable);
  });

  test('a push whose layer store read fails midway abandons the stream and streams the image again from docker save', async () => {
    const { copy, filesOf } = await copyStore();
    const changed = Buffer.from(big);
    changed[0] = (changed[0] ?? 0) ^ 0xff;
    await writeFile(join(await filesOf(v1.diffIds[1] ?? ''), 'data', 'big.bin'), changed);
    await removeImages(target, [v2.id, v1.id]);
    const key = testKey(`ls-${run}`);
    const receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `ls-${run}` });
    const service = `ls-${run}`;
    try {
      // The build engine's own images, but its layer store is the broken copy.
      const images = new ImageStore(createDockerClient(s.buildDockerHost));
      images.layerStore = () => Promise.resolve(copy);
      const result = await push({ image: `${repo}:1`, to: receiver.url, service: { name: service, network: 'none' }, compression: 'none' }, {
        images, events: new NullSink(), credentials: key, source: `ferry://sender/test-${run}`,
      });
      assert.equal(result.streamed, true);
      assert.equal(result.exportedBy, 'docker-save');
      assert.equal(result.deployment.state, 'COMPLETED');
      assert.equal((await target.getContainer(service).inspect()).Image, v1.id);
      const abandoned = receiver.logs.filter((entry) => entry.msg === 'stream opened');
      assert.equal(abandoned.length, 2, 'one stream from the layer store, abandoned; one from docker save');
    } finally {
      await receiver.stop();
      await removeService(target, service);
    }
  });

  test('only an overlay2 store that can be read is opened', async () => {
    assert.equal(await LayerStore.open(store.root, 'vfs'), undefined);
    assert.equal(await LayerStore.open(join(tmpdir(), `ferry-none-${run}`), 'overlay2'), undefined);
    // An engine reached over TCP may run elsewhere: its data root path says nothing here.
    assert.equal(await new ImageStore(createDockerClient('tcp://127.0.0.1:1')).layerStore(), undefined);
  });
});
