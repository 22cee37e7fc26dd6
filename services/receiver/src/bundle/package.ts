import { dockerArchive, type BundleService, type VerifiedBundle } from '@ferry/bundle';
import type { Manifest } from '@ferry/protocol';
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

  override async load(deps: LoadDeps): Promise<void> {
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
    await loadArchive(deps, manifest, dockerArchive(this.#bundle, this.#image, omit), { limit: unpackLimit(this.manifest.package.size) });
  }

  /** The bundle stays where it is: the operator's file, not the receiver's to remove. */
  override release(): Promise<void> {
    return Promise.resolve();
  }
}
