import { Readable, pipeline } from 'node:stream';
import { createDecompressor } from '@ferry/compress';
import { BLOCK, TYPE, fileEntry, paddedSize, writeHeader } from '@ferry/docker';
import { FerryError, chainIds } from '@ferry/protocol';
import { Sha256Tap } from './hash.ts';
import { blobPath, digestMismatch } from './layout.ts';
import type { VerifiedBundle } from './open.ts';
import type { BundleService } from './release.ts';

/**
 * One image of a bundle as the `docker save` archive an engine without OCI or zstd support loads
 * (Docker 20.10): its config as `<id>.json`, each layer decompressed to a plain `<chain id>/layer.tar`,
 * and a manifest.json naming no tag. Streamed, one layer at a time; each layer's SHA-256 and size
 * must be the diff id and size release.json signs, else the stream fails before its end-of-archive
 * marker, so the engine loads nothing. Layers in `omit` (held by the engine, left out of a
 * differential bundle) are named in manifest.json but not carried, as a partial package's are.
 */
export function dockerArchive(bundle: VerifiedBundle, image: BundleService['image'], omit: ReadonlySet<string> = new Set()): Readable {
  return Readable.from(archiveChunks(bundle, image, omit), { objectMode: false, highWaterMark: 1024 * 1024 });
}

/** Bytes the archive of `image` holds: the limit its inspection allows, from signed sizes. */
export function dockerArchiveSize(image: BundleService['image'], config: Buffer): number {
  let size = BLOCK + paddedSize(config.length) + 4 * BLOCK + 4096;
  for (const layer of image.layers) size += BLOCK + paddedSize(layer.size);
  return size;
}

async function* archiveChunks(bundle: VerifiedBundle, image: BundleService['image'], omit: ReadonlySet<string>): AsyncGenerator<Buffer> {
  const config = bundle.configs.get(image.id);
  if (!config) throw new FerryError('FERRY_ERR_INTERNAL', { message: `no config for ${image.id}` });
  const configName = `${image.id.slice('sha256:'.length)}.json`;
  yield* fileEntry(configName, config);
  const chains = chainIds(image.layers.map((l) => l.diffId));
  const names = chains.map((chain) => `${chain.slice('sha256:'.length)}/layer.tar`);
  for (const [i, layer] of image.layers.entries()) {
    if (omit.has(layer.diffId)) continue;
    const entry = bundle.entries.get(blobPath(layer.digest));
    if (!entry) throw new FerryError('FERRY_ERR_BUNDLE_BASE_MISSING', { message: `The bundle does not carry layer ${layer.diffId}`, details: { missing: [layer.diffId] } });
    yield writeHeader({ name: names[i] ?? '', type: TYPE.file, size: layer.size });
    const tap = new Sha256Tap();
    // A blob whose SHA-256 the opening left for later is hashed here, in the same read.
    const packed = bundle.deferred.has(entry.name) ? new Sha256Tap() : undefined;
    const decompressor = createDecompressor('zstd');
    const plain = packed
      ? pipeline(bundle.source.stream(entry.offset, entry.size), packed, decompressor, tap, () => undefined)
      : pipeline(bundle.source.stream(entry.offset, entry.size), decompressor, tap, () => undefined);
    for await (const chunk of plain as AsyncIterable<Buffer>) {
      if (tap.bytes > layer.size) break;
      yield chunk;
    }
    if (packed && (packed.bytes !== entry.size || packed.digest() !== layer.digest)) {
      plain.destroy();
      throw digestMismatch(entry.name);
    }
    if (tap.bytes !== layer.size || tap.digest() !== layer.diffId) {
      plain.destroy();
      throw digestMismatch(`the layer ${layer.diffId} (decompressed)`, { diffId: layer.diffId });
    }
    if (packed) bundle.deferred.delete(entry.name);
    const padding = paddedSize(layer.size) - layer.size;
    if (padding > 0) yield Buffer.alloc(padding);
  }
  yield* fileEntry('manifest.json', Buffer.from(JSON.stringify([{ Config: configName, RepoTags: null, Layers: names }])));
  yield Buffer.alloc(2 * BLOCK);
}
