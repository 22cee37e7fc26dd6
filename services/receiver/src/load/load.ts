import { createReadStream } from 'node:fs';
import { pipeline, type Readable } from 'node:stream';
import { createDecompressor } from '@ferry/compress';
import type { ImageStore } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import { FerryError, isFerryError, type Manifest } from '@ferry/protocol';
import type { LayerInventory } from '../layers/index.ts';
import type { PackageStore } from '../store/packages.ts';
import { ArchiveInspector, unpackLimit, type ArchiveStats } from './archive.ts';
import { loadLayered } from './layered.ts';

export interface LoadDeps {
  images: ImageStore;
  packages: PackageStore;
  logger: Logger;
  /** Needed for partial packages (`package.omittedLayers`), which are refused without it. */
  layers?: LayerInventory;
}

/** A package whose size and BLAKE3 were checked against its signed manifest. */
export interface LoadablePackage {
  manifest: Manifest;
  /** In the ingest spool, or already in the package store. */
  path: string;
}

export interface LoadOutcome {
  /** Where the package now lives: the content-addressed store. */
  storePath: string;
  archive: ArchiveStats;
}

/**
 * Loads the signed image and proves that what the engine now holds is exactly it:
 *
 * 1. the verified package moves into the content-addressed store, and loading reads from there;
 * 2. its decompressed tar streams through the {@link ArchiveInspector} into `docker load` — unsafe
 *    entries, bombs and archives of another image are refused before the engine can finish, and
 *    the image names an archive carries are stripped, so loading tags nothing;
 * 3. the engine's image `image.id` must then exist with `RootFS.Layers` = `image.diffIds`
 *   (an exit status is no proof: the containerd image store logs unpack failures and succeeds).
 *
 * On any failure the package leaves the store (unless an earlier deployment had put it there),
 * an image this load created is removed again, and the error is typed with no engine path in it.
 */
export async function loadVerified(deps: LoadDeps, pkg: LoadablePackage): Promise<LoadOutcome> {
  const { manifest } = pkg;
  const digest = manifest.package.digest;
  const wasStored = await deps.packages.has(digest);
  const storePath = await deps.packages.put(pkg.path, digest);
  try {
    const archive = await loadArchive(deps, manifest, createReadStream(storePath), { limit: unpackLimit(manifest.package.size) });
    return { storePath, archive };
  } catch (err) {
    if (!wasStored) await deps.packages.remove(digest).catch((cause: unknown) => deps.logger.error({ err: cause }, 'could not remove a refused package'));
    throw err;
  }
}

export interface ArchiveLoadOptions {
  /** Decompressed bytes the archive may expand to (the decompression-bomb rule). */
  limit: number;
  /** Hold the end-of-archive marker until `source` ends (see {@link ArchiveInspector}). */
  endAfterInput?: boolean;
}

/**
 * Steps 2 and 3 of {@link loadVerified} for a package read from `source` (its compressed bytes):
 * a file in the package store, or the parts of a streamed upload as they are verified. A failed
 * load removes the image it created and leaves what was there before.
 */
export async function loadArchive(deps: LoadDeps, manifest: Manifest, source: Readable, options: ArchiveLoadOptions): Promise<ArchiveStats> {
  let existed: boolean;
  try {
    existed = (await deps.images.inspect(manifest.image.id)) !== undefined;
  } catch (err) {
    // Without knowing what was there before, nothing may be removed from the engine either.
    source.destroy();
    throw err;
  }
  let loadedIds: string[] = [];
  try {
    const inspector = new ArchiveInspector(
      { imageId: manifest.image.id, diffIds: manifest.image.diffIds, omittedLayers: manifest.package.omittedLayers ?? [] },
      options,
    );
    const decompressor = createDecompressor(manifest.package.compression);
    let decompressError: Error | undefined;
    // Only the decompressor's own failure counts: torn down by another stage's failure it says
    // "Premature close", and that stage's error is the one to report.
    decompressor.once('error', (err: Error) => {
      if ((err as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE') decompressError ??= err;
    });
    // pipeline() rather than pipe(): a read, decompression or inspection error reaches the load.
    const archive = pipeline(source, decompressor, inspector, () => undefined);
    try {
      // Layered loads need the legacy store's chain ids; the containerd store imports as it reads.
      loadedIds = (deps.layers && await deps.layers.imageStore() === 'legacy'
        ? await loadLayered(deps, {
          imageId: manifest.image.id, diffIds: manifest.image.diffIds, omittedLayers: manifest.package.omittedLayers ?? [], deploymentId: manifest.deploymentId,
          owner: deps.layers.owner,
        }, archive)
        : await deps.images.load(archive)).imageIds;
    } catch (err) {
      if (inspector.failure) throw inspector.failure;
      // A layer the package left out went away after it was checked: the engine had to read it.
      await assertLayersPresent(deps.layers, manifest).catch((check: unknown) => {
        if (isFerryError(check, 'FERRY_ERR_LAYERS_MISSING')) throw check;
      });
      if (decompressError) {
        throw new FerryError('FERRY_ERR_BAD_ARCHIVE', {
          message: `The package does not decompress as ${manifest.package.compression}: ${decompressError.message}`,
          cause: err, details: { reason: 'decompression failed', compression: manifest.package.compression },
        });
      }
      throw sanitized(err);
    }
    await verifyLoaded(deps.images, manifest, loadedIds);
    if (inspector.stats.strippedTags.length > 0) {
      deps.logger.warn({ deploymentId: manifest.deploymentId, stripped: inspector.stats.strippedTags }, 'image names in the archive were stripped before loading');
    }
    return inspector.stats;
  } catch (err) {
    await undoLoad(deps, manifest, existed, loadedIds);
    throw err;
  }
}

/**
 * Refuses (FERRY_ERR_LAYERS_MISSING) a partial package whose left-out layers the engine does not
 * hold — before its journal record, so the sender can send the full package under the same id.
 */
export async function assertLayersPresent(layers: LayerInventory | undefined, manifest: Manifest): Promise<void> {
  if ((manifest.package.omittedLayers ?? []).length === 0) return;
  if (!layers) throw new FerryError('FERRY_ERR_LAYERS_MISSING', { message: 'This receiver does not take partial packages; send the full package' });
  await layers.assertOmittedPresent(manifest);
}

async function verifyLoaded(images: ImageStore, manifest: Manifest, loadedIds: string[]): Promise<void> {
  const image = await images.inspect(manifest.image.id);
  const sameLayers = image !== undefined && image.diffIds.length === manifest.image.diffIds.length
    && image.diffIds.every((id, i) => id === manifest.image.diffIds[i]);
  if (!loadedIds.includes(manifest.image.id) || !sameLayers) {
    throw new FerryError('FERRY_ERR_IMAGE_MISMATCH', {
      details: { expected: manifest.image.id, loaded: loadedIds, ...(image ? { diffIds: image.diffIds } : {}) },
    });
  }
}

/**
 * Whatever a refused load left behind goes, but nothing that was there before: the signed id is
 * removed only if this load created it, and any other id without force, so an image that a
 * container uses or that carries tags stays.
 */
async function undoLoad(deps: LoadDeps, manifest: Manifest, existed: boolean, loadedIds: string[]): Promise<void> {
  const log = (err: unknown): void => deps.logger.warn({ err, deploymentId: manifest.deploymentId }, 'could not remove a refused image');
  if (!existed) await deps.images.remove(manifest.image.id, { force: true }).catch(log);
  for (const id of loadedIds) {
    if (id !== manifest.image.id) await deps.images.remove(id, { force: false }).catch(log);
  }
}

/**
 * The engine's words without its paths: dockerd reports a bad archive as e.g. `open
 * /var/lib/docker/tmp/docker-import-123/…: no such file`, which tells a client the data root.
 */
export function sanitizeEngineMessage(text: string): string {
  return text.replace(/\/(?:[^\s/'":,;()]+\/)+[^\s'":,;()]*/g, '<path>');
}

function sanitized(err: unknown): FerryError {
  if (err instanceof FerryError) {
    return new FerryError(err.code, { message: sanitizeEngineMessage(err.message), cause: err, status: err.status, ...(err.details ? { details: err.details } : {}) });
  }
  return new FerryError('FERRY_ERR_LOAD_FAILED', { cause: err });
}
