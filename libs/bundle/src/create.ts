import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { fingerprint, publicKeyText, type SignedDocument, type SigningKey } from '@ferry/auth';
import { createCompressor } from '@ferry/compress';
import { LayerStoreUnreadable, type ImageInfo, type LayerStore } from '@ferry/docker';
import { FERRY_VERSION, FerryError, chainIds, type ServiceSpec } from '@ferry/protocol';
import { Sha256Tap, sha256Of } from './hash.ts';
import { INDEX, MEDIA, OCI_LAYOUT, OCI_LAYOUT_CONTENT, IMAGE_REF, REF_NAME, RELEASE, SIGNATURE, blobPath, type Descriptor } from './layout.ts';
import { BUNDLE_SCHEMA, ReleaseDocumentSchema, type BundleLayer, type BundleService, type ReleaseDocument } from './release.ts';
import { signRelease } from './signature.ts';
import { StoreLayerPacker, type PackedLayer } from './store-layers.ts';
import { TarOut } from './tar-out.ts';
import { tarEntries } from './tar-stream.ts';

/** Where a bundle's images come from: the build engine (an @ferry/docker ImageStore). */
export interface ImageSource {
  inspect(ref: string): Promise<ImageInfo | undefined>;
  save(ref: string): Promise<Readable>;
  /** The engine's layer store when it runs here and this process may read it (ImageStore.layerStore). */
  layerStore?(): Promise<LayerStore | undefined>;
}

/** One service of the release, as the deployment file and its plan give it. */
export interface ServiceInput {
  name: string;
  phase: number;
  dependsOn: Array<{ service: string; condition: 'started' | 'healthy' }>;
  image: string;
  spec: ServiceSpec;
}

export interface ReleaseInput {
  id: string;
  createdAt: string;
  project: string;
  phases: Array<{ name: string; services: string[] }>;
  services: ServiceInput[];
  rollout?: unknown;
}

/** What a differential bundle is made against: the layers another bundle carries, or a host holds. */
export interface BaseLayers {
  from: { releaseId: string; index: string } | { inventory: { host: string; takenAt: string; digest: string } };
  /**
   * Its layers by diff id: another bundle's as it describes them; a host's undefined (the bundle
   * describes such a layer uncompressed, by its diff id and size, see inventory.ts).
   */
  layers: ReadonlyMap<string, BundleLayer | undefined>;
}

export interface CreateOptions {
  images: ImageSource;
  release: ReleaseInput;
  /** The bundle file to write; it appears only once whole (written beside it, then renamed). */
  out: string;
  key: SigningKey;
  grant?: SignedDocument | undefined;
  git?: { revision: string; dirty: boolean } | undefined;
  /** zstd level of the layers (default 3). */
  level?: number | undefined;
  base?: BaseLayers | undefined;
  now?: Date;
}

export interface CreateResult {
  path: string;
  bytes: number;
  document: ReleaseDocument;
  /** Layers written into the file, named by the images but left out (carried by the base), and references saved from storing twice. */
  layers: { stored: number; fromBase: number; shared: number };
}

/** An image as the bundle holds it. */
interface Packed {
  id: string;
  manifest: Descriptor;
  layers: BundleLayer[];
}

/** A manifest or config of an image is small; a docker save holding a larger one is not read. */
const JSON_MAX = 8 * 1024 * 1024;
const LAYER_TAR = /^([0-9a-f]{64})\/layer\.tar$/;

/**
 * Writes a release and every image it runs into one signed `oci-archive` file. Each unique layer
 * is read once — from the engine's layer store when it is local and readable (as `ferry push`
 * reads it: no `docker save` writing every image out first), several layers compressed at once;
 * otherwise from one streamed `docker save` per image — and goes through zstd and SHA-256 (its
 * blob digest; its diff id is checked on the way) into a temporary file beside the bundle, then
 * into the bundle once: a layer that several services share, or that the base bundle carries, is
 * stored once or not at all. index.json lists one manifest per service; ferry/release.json names
 * index.json's digest and is signed, so the signature covers every blob. A layer store that turns
 * out unreadable midway (a layer whose bytes are not its diff id) starts the file again with
 * `docker save`.
 */
export async function createBundle(options: CreateOptions): Promise<CreateResult> {
  const store = await options.images.layerStore?.();
  if (store) {
    try {
      return await writeBundle(options, store);
    } catch (err) {
      if (!(err instanceof LayerStoreUnreadable)) throw err;
    }
  }
  return writeBundle(options, undefined);
}

async function writeBundle(options: CreateOptions, store: LayerStore | undefined): Promise<CreateResult> {
  const partial = join(dirname(options.out), `.${randomBytes(6).toString('hex')}.ferry-partial`);
  const file = createWriteStream(partial, { flags: 'wx', mode: 0o644 });
  const tar = new TarOut(file);
  const writer = new BlobWriter(tar, dirname(options.out), options.level, options.base);
  try {
    await tar.file(OCI_LAYOUT, Buffer.from(OCI_LAYOUT_CONTENT));
    await tar.directory('blobs');
    await tar.directory('blobs/sha256');
    const refs = [...new Set(options.release.services.map((s) => s.image))];
    const byRef = new Map<string, Packed>();
    if (store) {
      const packed = await writer.fromStore(store, options.images, refs);
      refs.forEach((ref, i) => { const image = packed[i]; if (image) byRef.set(ref, image); });
    } else {
      for (const ref of refs) byRef.set(ref, await writer.image(options.images, ref));
    }
    const services: BundleService[] = options.release.services.map((s) => {
      const packed = byRef.get(s.image);
      if (!packed) throw new FerryError('FERRY_ERR_INTERNAL', { message: `no image for ${s.name}` });
      return { name: s.name, phase: s.phase, dependsOn: s.dependsOn, spec: s.spec, image: { ref: s.image, id: packed.id, manifest: packed.manifest.digest, layers: packed.layers } };
    });
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: MEDIA.index,
      manifests: services.map((s) => ({ ...byRef.get(s.image.ref)?.manifest, annotations: { [REF_NAME]: s.name, [IMAGE_REF]: s.image.ref } })),
    }));
    await tar.file(INDEX, index);
    const document = releaseDocument(options, services, { digest: sha256Of(index), size: index.length }, writer.omitted());
    const bytes = Buffer.from(JSON.stringify(document));
    await tar.directory('ferry');
    await tar.file(RELEASE, bytes);
    await tar.file(SIGNATURE, signRelease(options.key, bytes));
    await tar.end();
    file.end();
    await finished(file);
    await rename(partial, options.out);
    return { path: options.out, bytes: (await stat(options.out)).size, document, layers: writer.counts() };
  } catch (err) {
    file.destroy();
    await rm(partial, { force: true });
    throw err;
  } finally {
    await writer.cleanup();
  }
}

function releaseDocument(options: CreateOptions, services: BundleService[], index: { digest: string; size: number }, omitted: string[]): ReleaseDocument {
  const { release, key, base } = options;
  const publicKey = publicKeyText(key.privateKey);
  return ReleaseDocumentSchema.parse({
    schema: BUNDLE_SCHEMA,
    index,
    release: { id: release.id, createdAt: release.createdAt, project: release.project, phases: release.phases, services, ...(release.rollout === undefined ? {} : { rollout: release.rollout }) },
    ...(base && omitted.length > 0 ? { base: { ...base.from, layers: omitted } } : {}),
    provenance: {
      createdAt: (options.now ?? new Date()).toISOString(), ferryVersion: FERRY_VERSION, keyId: key.keyId, publicKey, fingerprint: fingerprint(publicKey),
      ...(options.git ? { git: options.git } : {}),
    },
    ...(options.grant ? { grant: options.grant } : {}),
  });
}

/** Puts blobs into the bundle, each once, and remembers which layers it holds. */
class BlobWriter {
  readonly #tar: TarOut;
  readonly #dir: string;
  readonly #level: number | undefined;
  readonly #base: BaseLayers | undefined;
  readonly #blobs = new Set<string>();
  /** Layers in this bundle or its base, by diff id. */
  readonly #layers = new Map<string, BundleLayer>();
  readonly #omitted = new Set<string>();
  /** The diff id of each `docker save` layer directory read so far (see #seen). */
  readonly #dirs = new Map<string, string>();
  readonly #temporary = new Set<string>();
  #stored = 0;
  #shared = 0;

  constructor(tar: TarOut, dir: string, level: number | undefined, base: BaseLayers | undefined) {
    this.#tar = tar;
    this.#dir = dir;
    this.#level = level;
    this.#base = base;
  }

  counts(): CreateResult['layers'] {
    return { stored: this.#stored, fromBase: this.#omitted.size, shared: this.#shared };
  }

  omitted(): string[] {
    return [...this.#omitted];
  }

  /** A layer this bundle holds, or one its base does (`size`: the tar's, for a layer a host holds). */
  #known(diffId: string, size?: number): BundleLayer | undefined {
    const here = this.#layers.get(diffId);
    if (here) return here;
    const inBase = this.#inBase(diffId, size);
    if (inBase) this.#omitted.add(diffId);
    return inBase;
  }

  #inBase(diffId: string, size: number | undefined): BundleLayer | undefined {
    if (!this.#base?.layers.has(diffId)) return undefined;
    return this.#base.layers.get(diffId) ?? (size === undefined ? undefined : { digest: diffId, blobSize: size, diffId, size });
  }

  async image(images: ImageSource, ref: string): Promise<Packed> {
    const info = await inspected(images, ref);
    const allKnown = info.diffIds.every((id) => this.#layers.has(id) || this.#base?.layers.get(id) !== undefined);
    const byDir = new Map<string, BundleLayer>();
    let config: Buffer | undefined;
    let order: string[] | undefined;
    const saved = await images.save(info.id);
    try {
      for await (const entry of tarEntries(saved)) {
        const layerDir = LAYER_TAR.exec(entry.name)?.[1];
        if (layerDir !== undefined && !allKnown) byDir.set(layerDir, this.#seen(layerDir) ?? await this.#layer(layerDir, entry.body, entry.size));
        else if (entry.name === `${info.id.slice(7)}.json`) config = await small(entry.body, entry.size, entry.name);
        else if (entry.name === 'manifest.json') order = layersOf(await small(entry.body, entry.size, entry.name));
      }
    } finally {
      saved.destroy();
    }
    if (!config || sha256Of(config) !== info.id) throw new FerryError('FERRY_ERR_DOCKER', { message: `docker save of ${ref} holds no config of image ${info.id}` });
    if (!order) throw new FerryError('FERRY_ERR_DOCKER', { message: `docker save of ${ref} has no manifest.json` });
    const layers = allKnown
      ? info.diffIds.map((id) => this.#known(id))
      : order.map((name) => byDir.get(LAYER_TAR.exec(name)?.[1] ?? ''));
    if (layers.length !== info.diffIds.length || layers.some((layer, i) => layer?.diffId !== info.diffIds[i])) {
      throw new FerryError('FERRY_ERR_DOCKER', { message: `docker save of ${ref} holds other layers than the engine lists for it` });
    }
    return this.#manifest(info, config, layers.filter((l): l is BundleLayer => l !== undefined));
  }

  /**
   * The images read from the engine's layer store: every layer they name starts packing at once
   * (each unique one once; the packer bounds how many run), then each goes into the bundle in
   * the order the images name them, while those after it are still being compressed.
   */
  async fromStore(store: LayerStore, images: ImageSource, refs: readonly string[]): Promise<Packed[]> {
    const packer = new StoreLayerPacker(store, this.#dir, this.#level);
    try {
      const pending = new Map<string, Promise<PackedLayer>>();
      const planned: Array<{ info: ImageInfo; config: Buffer; layers: Array<BundleLayer | Promise<PackedLayer>> }> = [];
      for (const ref of refs) {
        const info = await inspected(images, ref);
        const config = await store.config(info.id);
        const chains = chainIds(info.diffIds);
        const layers: Array<BundleLayer | Promise<PackedLayer>> = [];
        for (const [i, diffId] of info.diffIds.entries()) {
          const here = pending.get(diffId);
          if (here) {
            this.#shared += 1;
            layers.push(here);
            continue;
          }
          if (this.#base?.layers.has(diffId)) {
            this.#omitted.add(diffId);
            // A layer a host holds is described by its tar's size, read from the store's record of it.
            const inBase = this.#inBase(diffId, this.#base.layers.get(diffId) ? undefined : (await store.layer(diffId, chains[i] ?? diffId)).size);
            if (inBase) {
              layers.push(inBase);
              continue;
            }
          }
          const task = packer.pack(diffId, chains[i] ?? diffId);
          pending.set(diffId, task);
          layers.push(task);
        }
        planned.push({ info, config, layers });
      }
      const out: Packed[] = [];
      for (const { info, config, layers } of planned) {
        const chosen: BundleLayer[] = [];
        for (const layer of layers) chosen.push(layer instanceof Promise ? await this.#packed(await layer, packer) : layer);
        out.push(await this.#manifest(info, config, chosen));
      }
      return out;
    } finally {
      await packer.close();
    }
  }

  /** A layer the packer compressed, into the bundle unless it is there already. */
  async #packed(packed: PackedLayer, packer: StoreLayerPacker): Promise<BundleLayer> {
    const known = this.#layers.get(packed.diffId);
    if (known) return known;
    const layer = { digest: packed.digest, blobSize: packed.blobSize, diffId: packed.diffId, size: packed.size };
    if (!this.#blobs.has(layer.digest)) {
      await this.#tar.fromFile(blobPath(layer.digest), packed.path, packed.blobSize);
      this.#blobs.add(layer.digest);
      this.#stored += 1;
    }
    this.#layers.set(layer.diffId, layer);
    await packer.done(packed);
    return layer;
  }

  /** The image's config and manifest blobs. */
  async #manifest(info: ImageInfo, config: Buffer, chosen: BundleLayer[]): Promise<Packed> {
    await this.#blob(config);
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: MEDIA.manifest,
      config: { mediaType: MEDIA.config, digest: info.id, size: config.length },
      // A layer a host holds (see inventory.ts) is named uncompressed, by its diff id.
      layers: chosen.map((l) => ({ mediaType: l.digest === l.diffId ? MEDIA.layerTar : MEDIA.layerZstd, digest: l.digest, size: l.blobSize })),
    }));
    const digest = await this.#blob(manifest);
    return { id: info.id, manifest: { mediaType: MEDIA.manifest, digest, size: manifest.length }, layers: chosen };
  }

  /**
   * A layer an earlier image's save already carried under the same directory, left unread (the tar
   * reader drains it). `docker save` names a layer's directory by a v1 id that hashes the layer's
   * chain id, so one name is one diff id and its parents on this engine: images that share base
   * layers share those names. Without this, every image's shared layers were hashed and
   * compressed again only to be found duplicates.
   */
  #seen(layerDir: string): BundleLayer | undefined {
    const diffId = this.#dirs.get(layerDir);
    if (diffId === undefined) return undefined;
    const known = this.#known(diffId);
    if (known && this.#layers.has(diffId)) this.#shared += 1;
    return known;
  }

  /** One layer tar: hashed, compressed and hashed into a temporary file, then into the bundle unless it is there already. */
  async #layer(layerDir: string, body: AsyncIterable<Buffer>, size: number): Promise<BundleLayer> {
    const path = join(this.#dir, `.${randomBytes(6).toString('hex')}.ferry-layer`);
    this.#temporary.add(path);
    try {
      const raw = new Sha256Tap();
      const packed = new Sha256Tap();
      await pipeline(Readable.from(body), raw, createCompressor('zstd', this.#level), packed, createWriteStream(path, { flags: 'wx', mode: 0o600 }));
      if (raw.bytes !== size) throw new FerryError('FERRY_ERR_DOCKER', { message: 'docker save: a layer is shorter than its header says' });
      const diffId = raw.digest();
      this.#dirs.set(layerDir, diffId);
      const known = this.#known(diffId, size);
      if (known) {
        // Counted as shared when this bundle holds it already; a base's layer is counted as left out.
        if (this.#layers.has(diffId)) this.#shared += 1;
        return known;
      }
      const layer = { digest: packed.digest(), blobSize: packed.bytes, diffId, size };
      if (!this.#blobs.has(layer.digest)) {
        await this.#tar.fromFile(blobPath(layer.digest), path, packed.bytes);
        this.#blobs.add(layer.digest);
        this.#stored += 1;
      }
      this.#layers.set(diffId, layer);
      return layer;
    } finally {
      await rm(path, { force: true });
      this.#temporary.delete(path);
    }
  }

  async #blob(content: Buffer): Promise<string> {
    const digest = sha256Of(content);
    if (!this.#blobs.has(digest)) {
      await this.#tar.file(blobPath(digest), content);
      this.#blobs.add(digest);
    }
    return digest;
  }

  async cleanup(): Promise<void> {
    for (const path of this.#temporary) await rm(path, { force: true });
  }
}

async function inspected(images: ImageSource, ref: string): Promise<ImageInfo> {
  const info = await images.inspect(ref);
  if (!info) throw new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `Image ${ref} is not on the build engine (build or tag it first)`, details: { image: ref } });
  return info;
}

async function small(body: AsyncIterable<Buffer>, size: number, name: string): Promise<Buffer> {
  if (size > JSON_MAX) throw new FerryError('FERRY_ERR_DOCKER', { message: `docker save: ${name} is larger than ${JSON_MAX} bytes` });
  const parts: Buffer[] = [];
  for await (const piece of body) parts.push(Buffer.from(piece));
  return Buffer.concat(parts);
}

function layersOf(manifest: Buffer): string[] {
  const parsed = JSON.parse(manifest.toString('utf8')) as Array<{ Layers?: unknown }>;
  const layers = Array.isArray(parsed) ? parsed[0]?.Layers : undefined;
  if (!Array.isArray(layers) || !layers.every((l): l is string => typeof l === 'string')) throw new FerryError('FERRY_ERR_DOCKER', { message: 'docker save: manifest.json lists no layers' });
  return layers;
}
