import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { resolve } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { BLOCK, TYPE, fileEntry, paddedSize, readHeader, writeHeader, type ImageStore, type LoadResult, type RawHeader } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import { FerryError, chainIds } from '@ferry/protocol';

/**
 * A load of its own for at least this many bytes of layers: each `docker load` costs the engine
 * a fraction of a second, so runs of small layers go together.
 */
export const GROUP_BYTES = 64 * 1024 * 1024;

/** Marks the images a layered load makes on its way; a receiver removes leftovers at start. */
export const PARTIAL_LABEL = 'dev.ferry.partial-load';

/**
 * Names the receiver whose load made a layer image. Receivers may share an engine, and a layer
 * image holds the layers a load in progress still needs (its next `docker load` names them): a
 * receiver that starts removes its own leftovers and unnamed ones, never another's.
 */
export const PARTIAL_OWNER_LABEL = 'dev.ferry.partial-owner';

/** The owner name of the receiver keeping its state in `dataDir`: the same across its restarts, another for every other receiver. */
export function partialOwner(dataDir: string): string {
  return createHash('sha256').update(resolve(dataDir)).digest('hex').slice(0, 32);
}

/** The signed image a layered load must end with. */
export interface LayeredExpectation {
  imageId: string;
  diffIds: readonly string[];
  /** Diff ids the archive leaves out: the engine holds them. */
  omittedLayers: readonly string[];
  deploymentId: string;
  /** Labels the layer images ({@link PARTIAL_OWNER_LABEL}); without it any receiver's start removes them. */
  owner?: string | undefined;
}

export interface LayeredDeps {
  images: ImageStore;
  logger: Logger;
}

/**
 * `docker load` of an archive (already checked by the ArchiveInspector) in a way that overlaps
 * the engine's two phases. Legacy `docker load` unpacks the whole archive to a temporary
 * directory and only then registers its layers one after the other, so registering — about as
 * long as unpacking — waits for the archive's last byte. When the archive holds its layers bottom
 * first, after the config, under their chain ids (what `ferry push` writes when it reads the
 * build engine's layer store), they go instead into several loads of {@link GROUP_BYTES} or more:
 * each an archive of a run of layers and a config of the receiver's making whose
 * `rootfs.diff_ids` are the signed ones up to its last layer. The engine registers one run while
 * the next arrives and unpacks; a load may end only once the one before it has (its layers are
 * the parents), so at most two run. The last run goes with the signed config and manifest.json
 * and makes the image; the intermediate images go. An image smaller than a group is one load,
 * as before.
 *
 * Each layer the engine registers is checked by it against a signed diff id, so a stream that
 * fails later leaves nothing but verified layers of the signed image, and those go with the
 * intermediate images (and at the next start if the receiver died: {@link removePartialImages}).
 * Any other layout goes to one `docker load` as it is.
 */
export async function loadLayered(deps: LayeredDeps, expect: LayeredExpectation, archive: Readable, options: { groupBytes?: number } = {}): Promise<LoadResult> {
  const groupBytes = options.groupBytes ?? GROUP_BYTES;
  const reader = new ByteReader(archive);
  const configName = `${hex(expect.imageId)}.json`;
  const chains = chainIds(expect.diffIds);
  const omitted = new Set(expect.omittedLayers);
  const kept = expect.diffIds.map((_, i) => i).filter((i) => !omitted.has(expect.diffIds[i] ?? ''));
  const layerName = (i: number): string => `${hex(chains[i] ?? '')}/layer.tar`;

  const prefix: Buffer[] = [];
  const first = await reader.header(prefix);
  if (first?.name !== configName || first.type !== TYPE.file || kept.length === 0) return deps.images.load(reader.replay(prefix));
  const configBytes = await reader.exact(paddedSize(first.size), prefix);
  let next = await reader.header(prefix);
  if (next?.name !== layerName(kept[0] ?? -1) || next.type !== TYPE.file) return deps.images.load(reader.replay(prefix));

  const { architecture, os } = JSON.parse(configBytes.subarray(0, first.size).toString('utf8')) as { architecture?: unknown; os?: unknown };
  const made: string[] = [];
  let previous: Promise<unknown> = Promise.resolve();
  let group: { input: PassThrough; loading: Promise<LoadResult>; bytes: number } | undefined;
  try {
    for (const [n, i] of kept.entries()) {
      if (n > 0) next = await reader.header();
      if (next?.name !== layerName(i) || next.type !== TYPE.file) throw bad(`expected ${layerName(i)} next, in layer order`);
      if (!group) {
        const input = new PassThrough();
        const loading = deps.images.load(input);
        loading.catch(() => undefined);
        group = { input, loading, bytes: 0 };
      }
      const { input, loading } = group;
      await write(input, loading, [writeHeader({ name: layerName(i), type: TYPE.file, size: next.size })]);
      for await (const chunk of reader.body(paddedSize(next.size))) await write(input, loading, [chunk]);
      group.bytes += next.size;
      if (group.bytes < groupBytes || n === kept.length - 1) continue;
      // An intermediate image of the layers so far; it registers on top of the group before it.
      const partial = Buffer.from(JSON.stringify({
        architecture, os,
        config: { Labels: { [PARTIAL_LABEL]: expect.deploymentId, ...(expect.owner === undefined ? {} : { [PARTIAL_OWNER_LABEL]: expect.owner }) } },
        rootfs: { type: 'layers', diff_ids: expect.diffIds.slice(0, i + 1) },
      }));
      const partialId = `sha256:${createHash('sha256').update(partial).digest('hex')}`;
      const manifest = Buffer.from(JSON.stringify([{ Config: `${hex(partialId)}.json`, RepoTags: null, Layers: chains.slice(0, i + 1).map((_, j) => layerName(j)) }]));
      await previous;
      await write(input, loading, [...fileEntry(`${hex(partialId)}.json`, partial), ...fileEntry('manifest.json', manifest), Buffer.alloc(2 * BLOCK)]);
      input.end();
      previous = loading.then((result) => {
        if (!result.imageIds.includes(partialId)) throw new FerryError('FERRY_ERR_LOAD_FAILED', { message: `The engine loaded ${result.imageIds.join(', ')} instead of the layer image ${partialId}` });
        made.push(partialId);
      });
      // Awaited before the next group ends; a failure meanwhile must not count as unhandled.
      previous.catch(() => undefined);
      group = undefined;
    }
    const manifest = await reader.header();
    if (manifest?.name !== 'manifest.json') throw bad('expected manifest.json after the layers');
    const manifestBytes = await reader.exact(paddedSize(manifest.size));
    if (await reader.header() !== undefined) throw bad('expected the end of the archive after manifest.json');
    await reader.drain();
    await previous;
    // The last group ends with the signed config and manifest.json (as the inspector let them
    // through): this load makes the image.
    const last = group;
    if (!last) throw bad('no layer left for the last load');
    await write(last.input, last.loading, [
      writeHeader({ name: configName, type: TYPE.file, size: first.size }), configBytes,
      writeHeader({ name: 'manifest.json', type: TYPE.file, size: manifest.size }), manifestBytes,
      Buffer.alloc(2 * BLOCK),
    ]);
    last.input.end();
    group = undefined;
    return await last.loading;
  } catch (err) {
    group?.input.destroy(err as Error);
    await previous.catch(() => undefined);
    archive.destroy();
    throw err;
  } finally {
    for (const id of made) {
      await deps.images.remove(id).catch((err: unknown) => deps.logger.warn({ err, image: id }, 'could not remove a layer image'));
    }
  }
}

/**
 * Removes what layered loads of an earlier run left (the receiver stopped mid-way): untagged
 * images carrying {@link PARTIAL_LABEL} whose {@link PARTIAL_OWNER_LABEL} is `owner`, or that
 * name no owner. Another receiver's may belong to a load in progress on the same engine and stay.
 * Their layers go with them unless an image uses them.
 */
export async function removePartialImages(images: ImageStore, logger: Logger, owner?: string): Promise<void> {
  const owned = new Set(owner === undefined ? [] : await images.listByLabel(`${PARTIAL_OWNER_LABEL}=${owner}`));
  const named = new Set(await images.listByLabel(PARTIAL_OWNER_LABEL));
  for (const id of await images.listByLabel(PARTIAL_LABEL)) {
    if (named.has(id) && !owned.has(id)) continue;
    await images.remove(id).catch((err: unknown) => logger.warn({ err, image: id }, 'could not remove a layer image left by an earlier run'));
  }
}

function bad(reason: string): FerryError {
  return new FerryError('FERRY_ERR_BAD_ARCHIVE', { message: `The archive is not in layer order: ${reason}`, details: { reason } });
}

/** Writes with backpressure; a load that failed (and destroyed its input) ends the wait. */
async function write(input: PassThrough, loading: Promise<unknown>, chunks: Buffer[]): Promise<void> {
  for (const chunk of chunks) {
    if (input.destroyed) break;
    if (!input.write(chunk)) await Promise.race([once(input, 'drain'), loading]);
  }
  if (input.destroyed) await loading;
}

function hex(digest: string): string {
  return digest.replace(/^sha256:/, '');
}

/**
 * Reads a byte stream piece by piece: tar headers, exact spans, and spans passed on as they come.
 * What it read can be replayed in front of the rest of the stream.
 */
class ByteReader {
  readonly #source: Readable;
  readonly #chunks: AsyncIterator<Buffer>;
  #held: Buffer = Buffer.alloc(0);

  constructor(source: Readable) {
    this.#source = source;
    this.#chunks = (source as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  /** The next header, or undefined at the end-of-archive marker. */
  async header(seen?: Buffer[]): Promise<RawHeader | undefined> {
    const block = await this.exact(BLOCK, seen);
    const read = readHeader(block);
    if (read.kind === 'invalid') throw bad(read.reason);
    return read.kind === 'end' ? undefined : read.header;
  }

  async exact(length: number, seen?: Buffer[]): Promise<Buffer> {
    while (this.#held.length < length) {
      const next = await this.#chunks.next();
      if (next.done) throw new Error('the archive ended early');
      this.#held = this.#held.length === 0 ? next.value : Buffer.concat([this.#held, next.value]);
    }
    const out = this.#held.subarray(0, length);
    this.#held = this.#held.subarray(length);
    seen?.push(out);
    return out;
  }

  /**
   * `length` bytes, passed on as they come, without a copy. (Gathering them into 1 MiB writes cost
   * a copy of every byte and ~20 MiB of peak memory on a 1 GB push, and saved no time.)
   */
  async *body(length: number): AsyncGenerator<Buffer> {
    let left = length;
    while (left > 0) {
      if (this.#held.length === 0) {
        const next = await this.#chunks.next();
        if (next.done) throw new Error('the archive ended early');
        this.#held = next.value;
      }
      const take = Math.min(left, this.#held.length);
      const piece = this.#held.subarray(0, take);
      this.#held = this.#held.subarray(take);
      left -= take;
      yield piece;
    }
  }

  /** Reads to the end: the second zero block and any record padding. */
  async drain(): Promise<void> {
    for (;;) {
      const next = await this.#chunks.next();
      if (next.done) return;
    }
  }

  /** What was read, then the rest of the stream, as one stream. */
  replay(seen: Buffer[]): Readable {
    const held = this.#held;
    const chunks = this.#chunks;
    const source = this.#source;
    const replayed = Readable.from((async function* () {
      yield* seen;
      if (held.length > 0) yield held;
      for (;;) {
        const next = await chunks.next();
        if (next.done) return;
        yield next.value;
      }
    })(), { objectMode: false });
    // A stream error reaches the load, which then fails as it would reading the stream itself.
    replayed.once('close', () => { if (!replayed.readableEnded) source.destroy(); });
    return replayed;
  }
}
