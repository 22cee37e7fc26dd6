/**
 * The receiver's layered load (services/receiver/src/load/layered.ts) against the stack's real
 * engines: an archive in layer order (what the sender writes from the build engine's layer
 * store) is loaded one layer per `docker load`, each registering while the next arrives, and ends
 * as the signed image with no layer image left behind. A docker save archive takes the one load
 * as before. A layer whose bytes are not its diff id, an archive cut midway, and one out of
 * order load nothing and leave nothing; a layer image an earlier run left is removed at start,
 * but not those of another receiver's load in progress on the same engine.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { after, before, beforeEach, describe, test } from 'node:test';
import { BLOCK, ImageStore, TYPE, createDockerClient, paddedSize, writeHeader, type LayerStore } from '@ferry/docker';
import { createLogger } from '@ferry/log';
import { chainIds, isFerryError } from '@ferry/protocol';
import { PARTIAL_LABEL, loadLayered } from '@ferry/receiver';
import { planStoreArchive, streamStoreArchive } from '@ferry/sender';
import { buildLayeredImage, startReceiverProcess } from '../helpers/ferry.ts';
import { PARTIAL_OWNER_LABEL, partialOwner } from '../../services/receiver/src/load/layered.ts';
import { removeImages } from '../helpers/cleanup.ts';
import { engines, stack } from '../helpers/stack.ts';
import { testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const { build, target, buildImages, targetImages } = engines(s);
const logger = createLogger({ level: 'silent', name: 'test' });
const repo = `ferry-ll-${run}`;
const base = randomBytes(3 * 1024 * 1024);

/** The target engine's images, counting the loads. */
class CountingImages extends ImageStore {
  loads = 0;

  override load(archive: Readable, signal?: AbortSignal): ReturnType<ImageStore['load']> {
    this.loads += 1;
    return super.load(archive, signal);
  }
}

/** Flips one byte at `at` of the stream, or ends the stream with an error there. */
class Spoil extends Transform {
  #seen = 0;
  readonly at: number;
  readonly how: 'flip' | 'cut';

  constructor(at: number, how: 'flip' | 'cut') {
    super();
    this.at = at;
    this.how = how;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const start = this.#seen;
    this.#seen += chunk.length;
    if (this.at < start || this.at >= this.#seen) return callback(null, chunk);
    if (this.how === 'cut') return callback(new Error('connection cut'));
    const copy = Buffer.from(chunk);
    copy[this.at - start] = (copy[this.at - start] ?? 0) ^ 0xff;
    callback(null, copy);
  }
}

/** Passes the stream on up to byte `at`, then holds the rest until {@link release}. */
class Hold extends Transform {
  #seen = 0;
  #open = false;
  #waiting: (() => void) | undefined;
  readonly at: number;
  /** Settles once the stream reached `at`. */
  readonly reached: Promise<void>;
  #reach!: () => void;

  constructor(at: number) {
    super();
    this.at = at;
    this.reached = new Promise((resolve) => { this.#reach = resolve; });
  }

  release(): void {
    this.#open = true;
    this.#waiting?.();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const start = this.#seen;
    this.#seen += chunk.length;
    if (this.#open || this.#seen <= this.at) return callback(null, chunk);
    if (start < this.at) this.push(chunk.subarray(0, this.at - start));
    this.#reach();
    this.#waiting = () => callback(null, chunk.subarray(Math.max(0, this.at - start)));
  }
}

describe('layered load', { timeout: 300_000 }, () => {
  let store: LayerStore;
  let image = { id: '', diffIds: [] as string[] };
  const siblings: string[] = [];
  const expectation = () => ({ imageId: image.id, diffIds: image.diffIds, omittedLayers: [] as string[], deploymentId: `ll-${run}` });

  const archive = async (omit: string[] = []): Promise<Readable> => streamStoreArchive(store, image.id, image.diffIds, await planStoreArchive(store, image.id, image.diffIds, omit));
  /** Where the archive's second layer's data lies (config entry, then layer 1, then layer 2's header). */
  const secondLayerData = async (): Promise<number> => {
    const plan = await planStoreArchive(store, image.id, image.diffIds, []);
    return BLOCK + paddedSize(plan.config.length) + BLOCK + paddedSize(plan.layers[0]?.size ?? 0) + BLOCK;
  };
  /** Layer images of this test's loads still on the target (other runs' may be there too). */
  const leftovers = async (value = `ll-${run}`): Promise<string[]> => targetImages.listByLabel(`${PARTIAL_LABEL}=${value}`);

  before(async () => {
    const found = await buildImages.layerStore();
    assert.ok(found, 'the stack\'s build engine layer store is readable');
    store = found;
    const id = await buildLayeredImage(s.buildDockerHost, `${repo}:1`, base, `layered ${run}\n`);
    const info = await buildImages.inspect(id);
    assert.ok(info);
    image = { id, diffIds: info.diffIds };
    assert.equal(image.diffIds.length, 3);
  });

  beforeEach(async () => {
    await removeImages(target, [image.id]);
  });

  after(async () => {
    await removeImages(target, [image.id, ...siblings]);
    await removeImages(build, [`${repo}:1`, `${repo}:sibling`]);
  });

  test('an archive in layer order loads one layer at a time and ends as the signed image, with no layer image left', async () => {
    const counting = new CountingImages(createDockerClient(s.targetDockerHost));
    const result = await loadLayered({ images: counting, logger }, expectation(), await archive(), { groupBytes: 1 });
    assert.deepEqual(result.imageIds, [image.id]);
    assert.equal(counting.loads, 3, 'one load per layer');
    assert.deepEqual((await targetImages.inspect(image.id))?.diffIds, image.diffIds);
    assert.deepEqual(await leftovers(), []);
  });

  test('layers smaller than a group go in one load with the signed config', async () => {
    const counting = new CountingImages(createDockerClient(s.targetDockerHost));
    assert.deepEqual((await loadLayered({ images: counting, logger }, expectation(), await archive())).imageIds, [image.id]);
    assert.equal(counting.loads, 1);
    assert.deepEqual(await leftovers(), []);
  });

  test('with held layers left out, only the rest is loaded on top of them', async () => {
    // A sibling with the same bottom layers puts them on the target.
    const sibling = await buildLayeredImage(s.buildDockerHost, `${repo}:sibling`, base, `sibling ${run}\n`);
    siblings.push(sibling);
    await targetImages.load(await buildImages.save(sibling));
    const held = image.diffIds.slice(0, 2);
    assert.deepEqual((await buildImages.inspect(sibling))?.diffIds.slice(0, 2), held);
    const result = await loadLayered({ images: targetImages, logger }, { ...expectation(), omittedLayers: held }, await archive(held), { groupBytes: 1 });
    assert.deepEqual(result.imageIds, [image.id]);
    assert.deepEqual((await targetImages.inspect(image.id))?.diffIds, image.diffIds);
    assert.deepEqual(await leftovers(), []);
    await removeImages(target, [sibling]);
  });

  test('a docker save archive takes the one load', async () => {
    const result = await loadLayered({ images: targetImages, logger }, expectation(), await buildImages.save(image.id));
    assert.deepEqual(result.imageIds, [image.id]);
    assert.deepEqual(await leftovers(), []);
  });

  test('a layer whose bytes are not its diff id: nothing is loaded and nothing left', async () => {
    const spoiled = (await archive()).pipe(new Spoil(await secondLayerData() + 1024 * 1024, 'flip'));
    await assert.rejects(loadLayered({ images: targetImages, logger }, expectation(), spoiled, { groupBytes: 1 }), (err: unknown) => isFerryError(err, 'FERRY_ERR_LOAD_FAILED'));
    assert.equal(await targetImages.inspect(image.id), undefined);
    assert.deepEqual(await leftovers(), []);
  });

  test('an archive cut midway: nothing is loaded and nothing left', async () => {
    const source = await archive();
    const cut = new Spoil(await secondLayerData() + 1024 * 1024, 'cut');
    source.pipe(cut);
    cut.once('error', () => source.destroy());
    await assert.rejects(loadLayered({ images: targetImages, logger }, expectation(), cut, { groupBytes: 1 }));
    assert.equal(await targetImages.inspect(image.id), undefined);
    assert.deepEqual(await leftovers(), []);
  });

  test('layers out of order after the first: refused as a bad archive, nothing left', async () => {
    const plan = await planStoreArchive(store, image.id, image.diffIds, []);
    const chains = chainIds(image.diffIds);
    const parts: Buffer[] = [];
    for await (const chunk of streamStoreArchive(store, image.id, image.diffIds, plan)) parts.push(chunk as Buffer);
    const whole = Buffer.concat(parts);
    // Swap the names of the second and third layer entries' headers.
    const second = BLOCK + paddedSize(plan.config.length) + BLOCK + paddedSize(plan.layers[0]?.size ?? 0);
    const third = second + BLOCK + paddedSize(plan.layers[1]?.size ?? 0);
    writeHeader({ name: `${(chains[2] ?? '').slice(7)}/layer.tar`, type: TYPE.file, size: plan.layers[1]?.size ?? 0 }).copy(whole, second);
    writeHeader({ name: `${(chains[1] ?? '').slice(7)}/layer.tar`, type: TYPE.file, size: plan.layers[2]?.size ?? 0 }).copy(whole, third);
    await assert.rejects(loadLayered({ images: targetImages, logger }, expectation(), Readable.from([whole]), { groupBytes: 1 }), (err: unknown) => isFerryError(err, 'FERRY_ERR_BAD_ARCHIVE'));
    assert.equal(await targetImages.inspect(image.id), undefined);
    assert.deepEqual(await leftovers(), []);
  });

  test('a receiver starting on the same engine leaves the layer images of another one\'s load in progress alone', async () => {
    const plan = await planStoreArchive(store, image.id, image.diffIds, []);
    // Held before the third layer: the first two were loaded as layer images, which the last load's manifest names.
    const hold = new Hold(BLOCK + paddedSize(plan.config.length) + BLOCK + paddedSize(plan.layers[0]?.size ?? 0) + BLOCK + paddedSize(plan.layers[1]?.size ?? 0));
    // Its layer images carry its owner's name; the other receiver has its own.
    const loading = loadLayered({ images: targetImages, logger }, { ...expectation(), owner: `ll-${run}` }, (await archive()).pipe(hold), { groupBytes: 1 });
    loading.catch(() => undefined);
    await hold.reached;
    while ((await leftovers()).length < 2) await new Promise((resolve) => setTimeout(resolve, 50));
    const other = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(testKey(`ll-other-${run}`)), FERRY_HOST_ID: `ll-other-${run}` });
    await other.stop();
    hold.release();
    assert.deepEqual((await loading).imageIds, [image.id]);
    assert.deepEqual((await targetImages.inspect(image.id))?.diffIds, image.diffIds);
    assert.deepEqual(await leftovers(), []);
  });

  test('at start a receiver removes the layer images its earlier run left and unnamed ones, not another receiver\'s', async () => {
    const plan = await planStoreArchive(store, image.id, image.diffIds, image.diffIds.slice(1));
    const chunks: Buffer[] = [];
    for await (const chunk of streamStoreArchive(store, image.id, image.diffIds, plan)) chunks.push(chunk as Buffer);
    const bytes = Buffer.concat(chunks);
    const layerStart = BLOCK + paddedSize(plan.config.length);
    const layerEntry = bytes.subarray(layerStart, layerStart + BLOCK + paddedSize(plan.layers[0]?.size ?? 0));
    /** A layer image of the first layer, as a layered load labels one, loaded on the target. */
    const leftover = async (labels: Record<string, string>): Promise<string> => {
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Labels: labels }, rootfs: { type: 'layers', diff_ids: image.diffIds.slice(0, 1) } }));
      const id = `sha256:${createHash('sha256').update(config).digest('hex')}`;
      const name = `${id.slice(7)}.json`;
      const manifest = Buffer.from(JSON.stringify([{ Config: name, RepoTags: null, Layers: [`${(chainIds(image.diffIds)[0] ?? '').slice(7)}/layer.tar`] }]));
      const tar = Buffer.concat([
        writeHeader({ name, type: TYPE.file, size: config.length }), config, Buffer.alloc(paddedSize(config.length) - config.length),
        layerEntry,
        writeHeader({ name: 'manifest.json', type: TYPE.file, size: manifest.length }), manifest, Buffer.alloc(paddedSize(manifest.length) - manifest.length),
        Buffer.alloc(2 * BLOCK),
      ]);
      assert.deepEqual((await targetImages.load(Readable.from([tar]))).imageIds, [id]);
      return id;
    };
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-ll-rx-'));
    const unnamed = await leftover({ [PARTIAL_LABEL]: `gone-${run}` });
    const own = await leftover({ [PARTIAL_LABEL]: `gone-own-${run}`, [PARTIAL_OWNER_LABEL]: partialOwner(dataDir) });
    const others = await leftover({ [PARTIAL_LABEL]: `gone-other-${run}`, [PARTIAL_OWNER_LABEL]: partialOwner(`${dataDir}-another`) });
    siblings.push(others);
    // A receiver starting on this engine with that data directory removes its own and unnamed ones before it listens.
    const receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(testKey(`ll-${run}`)), FERRY_HOST_ID: `ll-${run}`, FERRY_DATA_DIR: dataDir });
    await receiver.stop();
    await rm(dataDir, { recursive: true, force: true });
    assert.deepEqual(await leftovers(`gone-${run}`), [], unnamed);
    assert.deepEqual(await leftovers(`gone-own-${run}`), [], own);
    assert.deepEqual(await leftovers(`gone-other-${run}`), [others]);
  });
});
