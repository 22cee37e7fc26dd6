import { statusOf, toFerryError } from '@ferry/docker';
import { FerryError, chainIds, type Manifest } from '@ferry/protocol';

/**
 * How the engine stores images. `legacy`: the graphdriver layer store, keyed by chain id, which
 * `docker load` consults before it reads a layer's file. `containerd`: the containerd image store
 * (snapshotters), whose load reads every blob it is given; Ferry treats it as holding nothing.
 */
export type ImageStoreKind = 'legacy' | 'containerd';

/** What `POST /v1/layers` answers (docs/protocol.md, "Layer negotiation"). */
export interface LayerAnswer {
  imageStore: ImageStoreKind;
  /** The longest bottom part of the asked list this engine holds, as its diff ids. */
  present: string[];
}

/** The part of a Docker client this needs (@ferry/docker's DockerEngine fits it). */
export interface LayerEngine {
  info(): Promise<unknown>;
  listImages(query: { all: boolean }): Promise<{ Id: string }[]>;
  inspectImage(id: string): Promise<{ RootFS?: { Layers?: string[] } }>;
}

/** `docker info` is not free; the store kind changes only with a daemon restart. */
const STORE_KIND_TTL_MS = 30_000;

const CONTAINERD_SNAPSHOTTER = 'io.containerd.snapshotter.v1';

/**
 * Which layers an engine holds, answered from the images it has: every image's `RootFS.Layers`
 * gives the chain ids of all its prefixes, and a layer store entry exists while an image uses it.
 * That is a lower bound (a layer no image uses is not seen), never an overstatement, apart from
 * an image removed after the answer — which is why loading checks again. Inspections are cached
 * by image id (an image's layers never change), so a question costs one image list.
 */
export class LayerInventory {
  readonly #docker: LayerEngine;
  readonly #chainsByImage = new Map<string, readonly string[]>();
  #kind: { value: ImageStoreKind; at: number } | undefined;
  /**
   * The name this receiver's layered loads label their layer images with (load/layered.ts), so
   * that on an engine shared with other receivers each removes only its own leftovers.
   */
  readonly owner: string | undefined;

  constructor(docker: LayerEngine, options: { owner?: string } = {}) {
    this.#docker = docker;
    this.owner = options.owner;
  }

  async imageStore(): Promise<ImageStoreKind> {
    if (this.#kind && performance.now() - this.#kind.at < STORE_KIND_TTL_MS) return this.#kind.value;
    let info: { DriverStatus?: unknown; Driver?: unknown };
    try {
      info = await this.#docker.info() as typeof info;
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_DOCKER', 'read the engine info');
    }
    const value = isContainerdStore(info) ? 'containerd' : 'legacy';
    this.#kind = { value, at: performance.now() };
    return value;
  }

  /** The layers of `diffIds` (bottom first) this engine holds: always a bottom part of the list. */
  async present(diffIds: readonly string[]): Promise<LayerAnswer> {
    const imageStore = await this.imageStore();
    if (imageStore === 'containerd' || diffIds.length === 0) return { imageStore, present: [] };
    const known = await this.#knownChains();
    const chains = chainIds(diffIds);
    let count = 0;
    while (count < chains.length && known.has(chains[count] ?? '')) count += 1;
    return { imageStore, present: diffIds.slice(0, count) };
  }

  /**
   * Refuses (FERRY_ERR_LAYERS_MISSING) a manifest whose package leaves out a layer this engine
   * would have to read from it: every position of an omitted diff id must lie in the held prefix.
   */
  async assertOmittedPresent(manifest: Manifest): Promise<void> {
    const omitted = manifest.package.omittedLayers ?? [];
    if (omitted.length === 0) return;
    const { diffIds } = manifest.image;
    const { imageStore, present } = await this.present(diffIds);
    const missing = omitted.filter((id) => diffIds.some((diffId, i) => diffId === id && i >= present.length));
    if (missing.length > 0) {
      throw new FerryError('FERRY_ERR_LAYERS_MISSING', {
        message: `The package leaves out ${missing.length} layer(s) this host does not have; send the full package`,
        details: { missing, imageStore },
      });
    }
  }

  async #knownChains(): Promise<Set<string>> {
    let images: { Id: string }[];
    try {
      images = await this.#docker.listImages({ all: true });
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_DOCKER', 'list images');
    }
    const live = new Set(images.map((image) => image.Id));
    for (const id of this.#chainsByImage.keys()) if (!live.has(id)) this.#chainsByImage.delete(id);
    const known = new Set<string>();
    for (const id of live) {
      let chains = this.#chainsByImage.get(id);
      if (chains === undefined) {
        const layers = await this.#layersOf(id);
        if (layers === undefined) continue;
        chains = chainIds(layers);
        this.#chainsByImage.set(id, chains);
      }
      for (const chain of chains) known.add(chain);
    }
    return known;
  }

  /** Undefined when the image went away since the list. */
  async #layersOf(id: string): Promise<string[] | undefined> {
    try {
      return (await this.#docker.inspectImage(id)).RootFS?.Layers ?? [];
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `inspect image ${id}`);
    }
  }
}

/** `docker info` names the containerd snapshotter in DriverStatus (`driver-type`) when it is in use. */
export function isContainerdStore(info: { DriverStatus?: unknown; Driver?: unknown }): boolean {
  const status = Array.isArray(info.DriverStatus) ? info.DriverStatus as unknown[] : [];
  return status.some((pair) => Array.isArray(pair) && pair[0] === 'driver-type' && pair[1] === CONTAINERD_SNAPSHOTTER);
}
