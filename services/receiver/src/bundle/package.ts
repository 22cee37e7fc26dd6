import { dockerArchive, type BundleService, type VerifiedBundle } from '@ferry/bundle';
import { isFerryError, type Manifest } from '@ferry/protocol';
import { unpackLimit } from '../load/archive.ts';
import { loadArchive, type LoadDeps } from '../load/load.ts';
import { VerifiedPackage } from '../load/package.ts';

/** The load under way for each bundle (see BundlePackage.load). */
const loading = new WeakMap<VerifiedBundle, Promise<unknown>>();

/**
 * One service's image in a verified bundle, handed to the deployer like an uploaded package. Its
 * load converts the image, as it is read from the bundle, into the docker-archive stream the
 * engine loads (plain tar layers: Docker 20.10 reads neither OCI archives nor zstd layers) and
 * feeds it through the same inspection and proof as every package (load.ts): the loaded image's
 * id must be the signed config digest, with the signed layers.
 */
export class BundlePackage extends VerifiedPackage {
  readonly #bundle: VerifiedBundle;
  readonly #image: BundleService['image'];

  constructor(bundle: VerifiedBundle, image: BundleService['image'], manifest: Manifest) {
    super({ manifest, bytes: manifest.package.size, receiveMs: 0 });
    this.#bundle = bundle;
    this.#image = image;
  }

  /**
   * Loads the image ahead of its deployment (see apply.ts preloadImages): the deployment's own
   * load then only proves the engine holds it, under the signed id with the signed layers.
   * Answers whether this loaded it (it was not on the engine before).
   */
  async preload(deps: LoadDeps): Promise<boolean> {
    // An image the engine holds already (another service's, or from before) is not loaded again;
    // its layer blobs are then hashed by checkDeferred, as no load reads them.
    const held = await this.#held(deps);
    if (!held) await this.load(deps);
    this.#preloaded = true;
    return !held;
  }

  #preloaded = false;

  override async load(deps: LoadDeps): Promise<void> {
    if (this.#preloaded && await this.#held(deps)) return;
    // One load at a time per bundle, so that an image sharing base layers with one loaded before it
    // finds them on the engine and leaves them out, rather than all of them decompressing and
    // loading the same layers side by side.
    const previous = loading.get(this.#bundle) ?? Promise.resolve();
    const mine = previous.then(() => this.#loadOnce(deps));
    loading.set(this.#bundle, mine.catch(() => undefined));
    await mine;
  }

  async #loadOnce(deps: LoadDeps): Promise<void> {
    const omit = new Set(this.manifest.package.omittedLayers ?? []);
    // Layers the engine holds already (under the same parents) are left out of the archive, as a
    // sender leaves out what a receiver holds: the layered load takes them from the engine.
    const held = deps.layers ? (await deps.layers.present(this.manifest.image.diffIds)).present : [];
    for (const diffId of held) omit.add(diffId);
    const manifest = held.length === 0 ? this.manifest : { ...this.manifest, package: { ...this.manifest.package, omittedLayers: [...omit] } };
    // The signed sizes bound what the archive may expand to; the usual floor still applies.
    const archive = dockerArchive(this.#bundle, this.#image, omit);
    let failure: unknown;
    archive.once('error', (err) => { failure = err; });
    try {
      await loadArchive(deps, manifest, archive, { limit: unpackLimit(this.manifest.package.size) });
    } catch (err) {
      // A blob that is not what release.json signs is the reason, whatever the engine made of the torn archive.
      throw isFerryError(failure, 'FERRY_ERR_BUNDLE_DIGEST') ? failure : err;
    }
  }

  async #held(deps: LoadDeps): Promise<boolean> {
    const image = await deps.images.inspect(this.manifest.image.id);
    const signed = this.manifest.image.diffIds;
    return image !== undefined && image.diffIds.length === signed.length && image.diffIds.every((id, i) => id === signed[i]);
  }

  /** The bundle stays where it is: the operator's file, not the receiver's to remove. */
  override release(): Promise<void> {
    return Promise.resolve();
  }
}
