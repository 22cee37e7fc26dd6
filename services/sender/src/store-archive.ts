import { Readable } from 'node:stream';
import { BLOCK, TYPE, fileEntry, paddedSize, writeHeader, type LayerStore, type StoredLayer } from '@ferry/docker';
import { chainIds } from '@ferry/protocol';

/** An archive of one image, planned from the layer store: nothing is read until it is streamed. */
export interface StoreArchivePlan {
  /** The layers the archive carries, bottom first (those the targets hold are left out). */
  layers: StoredLayer[];
  config: Buffer;
  /** Diff ids the archive names but does not carry, bottom first. */
  omitted: string[];
}

/**
 * Plans the docker-archive `docker save` would make of the image, from the engine's layer store:
 * every layer the targets lack as `<chain id>/layer.tar`, the config as `<image id>.json`, and a
 * manifest.json naming every layer, held or not (legacy `docker load` reads no file for a layer
 * whose chain id it has). Throws LayerStoreUnreadable when a layer or the config is not there.
 */
export async function planStoreArchive(store: LayerStore, imageId: string, diffIds: readonly string[], omit: readonly string[]): Promise<StoreArchivePlan> {
  const chains = chainIds(diffIds);
  const left = new Set(omit);
  const layers: StoredLayer[] = [];
  for (const [i, diffId] of diffIds.entries()) {
    if (!left.has(diffId)) layers.push(await store.layer(diffId, chains[i] ?? diffId));
  }
  return { layers, config: await store.config(imageId), omitted: diffIds.filter((id, i) => left.has(id) && diffIds.indexOf(id) === i) };
}

/** The planned archive as a byte stream with backpressure; a layer whose bytes are not its diff id errors it. */
export function streamStoreArchive(store: LayerStore, imageId: string, diffIds: readonly string[], plan: StoreArchivePlan): Readable {
  return Readable.from(storeArchiveChunks(store, imageId, diffIds, plan), { objectMode: false, highWaterMark: 1024 * 1024 });
}

/**
 * The planned archive as chunks; with `reuse`, a layer's chunks are one buffer read into again
 * once the next chunk is asked for (see LayerStore.read), so each must be done with by then.
 */
export async function* storeArchiveChunks(store: LayerStore, imageId: string, diffIds: readonly string[], plan: StoreArchivePlan, options: { reuse?: boolean } = {}): AsyncGenerator<Buffer> {
  for (const part of archiveParts(imageId, diffIds, plan)) {
    if (Buffer.isBuffer(part)) yield part;
    else yield* store.read(part, options);
  }
}

/** The planned archive's exact size in bytes, before any of it is read. */
export function storeArchiveSize(imageId: string, diffIds: readonly string[], plan: StoreArchivePlan): number {
  let size = 0;
  for (const part of archiveParts(imageId, diffIds, plan)) size += Buffer.isBuffer(part) ? part.length : part.size;
  return size;
}

/** The archive in order: its own bytes (headers, config, manifest, padding), and each layer's tar where it goes. */
function* archiveParts(imageId: string, diffIds: readonly string[], plan: StoreArchivePlan): Generator<Buffer | StoredLayer> {
  const configName = `${imageId.replace(/^sha256:/, '')}.json`;
  yield* fileEntry(configName, plan.config);
  for (const layer of plan.layers) {
    yield writeHeader({ name: `${dirOf(layer.chainId)}/layer.tar`, type: TYPE.file, size: layer.size });
    yield layer;
    const padding = paddedSize(layer.size) - layer.size;
    if (padding > 0) yield Buffer.alloc(padding);
  }
  const manifest = [{ Config: configName, RepoTags: null, Layers: chainIds(diffIds).map((chain) => `${dirOf(chain)}/layer.tar`) }];
  yield* fileEntry('manifest.json', Buffer.from(JSON.stringify(manifest)));
  yield Buffer.alloc(2 * BLOCK);
}

function dirOf(chainId: string): string {
  return chainId.replace(/^sha256:/, '');
}
