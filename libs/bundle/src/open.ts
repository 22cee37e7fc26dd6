import type { KeyObject } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { parsePublicKey } from '@ferry/auth';
import { FerryError } from '@ferry/protocol';
import { Sha256Tap, sha256Of } from './hash.ts';
import {
  INDEX, IndexSchema, ManifestSchema, MEDIA, OCI_LAYOUT, REF_NAME, RELEASE, SIGNATURE, blobPath, digestMismatch, malformed, parseEntry, type OciIndex, type OciManifest,
} from './layout.ts';
import { RELEASE_MAX_BYTES, ReleaseDocumentSchema, type BundleLayer, type BundleService, type ReleaseDocument } from './release.ts';
import { scanBundle, type Entry } from './scan.ts';
import { SIGNATURE_MAX_BYTES, parseSignature, releaseSignedBy, type BundleSignature } from './signature.ts';
import { FileSource, type ByteSource } from './source.ts';
import { z } from 'zod';

/** A bundle whose every check passed: what apply and push read from. */
export interface VerifiedBundle {
  source: ByteSource;
  entries: ReadonlyMap<string, Entry>;
  /** release.json's exact bytes, as signed. */
  releaseBytes: Buffer;
  document: ReleaseDocument;
  signature: BundleSignature;
  /** The key the signature verified with (the one `ferry/signature` names). */
  signer: KeyObject;
  index: OciIndex;
  /** Each service's image config, by image id. */
  configs: ReadonlyMap<string, Buffer>;
  /** Diff ids a differential bundle names but does not carry. */
  omitted: ReadonlySet<string>;
  /** Blobs hashed, and their bytes (with `deferLayers`, every blob's, as each is checked before use). */
  blobs: { count: number; bytes: number };
  /**
   * Layer blobs whose SHA-256 is still to be checked (opened with `deferLayers`): each is checked
   * as it is read, by dockerArchive or checkDeferred, and then leaves this set. Empty otherwise.
   */
  deferred: Set<string>;
  close(): Promise<void>;
}

export interface OpenOptions {
  /**
   * Leave the layer blobs' SHA-256 for later, so that a reader streaming them anyway (apply's
   * load) checks each in the same pass rather than in a pass of its own: their digests and sizes
   * are signed in release.json, and nothing reads a layer without checking both.
   */
  deferLayers?: boolean;
}

/** Small entries are read whole; larger ones are not what the layout puts there. */
const SMALL_MAX = 8 * 1024 * 1024;

const ConfigSchema = z.object({ rootfs: z.object({ type: z.literal('layers'), diff_ids: z.array(z.string()).min(1).max(1000) }) });

/**
 * Opens a bundle (one file, or the parts of a split one in order) and checks all of it, in an
 * order that gives each kind of damage its own code: the archive's entries
 * (FERRY_ERR_UNSAFE_ARCHIVE, FERRY_ERR_BUNDLE_MALFORMED), the signature over release.json's exact
 * bytes before they are parsed (FERRY_ERR_BUNDLE_SIGNATURE), index.json's digest as release.json
 * names it and every blob's SHA-256 against its name (FERRY_ERR_BUNDLE_DIGEST), then that the
 * index, manifests, configs and release describe the same images (FERRY_ERR_BUNDLE_MALFORMED).
 * Only the signer's own key is checked here; whether it is trusted is the caller's question.
 */
export async function openBundle(paths: readonly string[], options: OpenOptions = {}): Promise<VerifiedBundle> {
  let source: FileSource;
  try {
    source = await FileSource.open(paths);
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `Cannot read ${paths[0] ?? 'the bundle'} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
  }
  try {
    return await verify(source, options.deferLayers === true);
  } catch (err) {
    await source.close();
    throw err;
  }
}

async function verify(source: ByteSource, deferLayers: boolean): Promise<VerifiedBundle> {
  const entries = await scanBundle(source);
  for (const name of [OCI_LAYOUT, INDEX, RELEASE, SIGNATURE]) if (!entries.has(name)) throw malformed(`${name} is missing`);
  const read = async (name: string, max: number): Promise<Buffer> => {
    const entry = entries.get(name);
    if (!entry) throw malformed(`${name} is missing`);
    if (entry.size > max) throw malformed(`${name} is larger than ${max} bytes`);
    return source.read(entry.offset, entry.size);
  };

  const signature = parseSignature(await read(SIGNATURE, SIGNATURE_MAX_BYTES));
  const releaseBytes = await read(RELEASE, RELEASE_MAX_BYTES);
  let signer: KeyObject;
  try {
    signer = parsePublicKey(signature.publicKey, 'ferry/signature');
  } catch {
    throw new FerryError('FERRY_ERR_BUNDLE_SIGNATURE', { message: 'ferry/signature names no usable Ed25519 public key' });
  }
  if (!releaseSignedBy(signer, releaseBytes, signature)) {
    throw new FerryError('FERRY_ERR_BUNDLE_SIGNATURE', { message: `release.json is not what key ${signature.keyId} signed: the bundle was altered`, details: { keyId: signature.keyId } });
  }
  const document = parseEntry(ReleaseDocumentSchema, releaseBytes, RELEASE);
  if (document.provenance.keyId !== signature.keyId || document.provenance.publicKey !== signature.publicKey) {
    throw new FerryError('FERRY_ERR_BUNDLE_SIGNATURE', { message: 'ferry/signature names another key than release.json' });
  }

  const indexBytes = await read(INDEX, RELEASE_MAX_BYTES);
  if (indexBytes.length !== document.index.size || sha256Of(indexBytes) !== document.index.digest) throw digestMismatch(INDEX);
  const index = parseEntry(IndexSchema, indexBytes, INDEX);

  // Only blobs release.json signs as layers may wait; manifests and configs are checked before they are parsed.
  const deferred = new Set<string>();
  if (deferLayers) {
    for (const service of document.release.services) for (const layer of service.image.layers) if (entries.has(blobPath(layer.digest))) deferred.add(blobPath(layer.digest));
  }
  const blobs = await hashBlobs(source, entries, deferred);
  const { configs, omitted } = await checkImages(document, index, entries, (name) => read(name, SMALL_MAX));
  checkRelease(document);
  return { source, entries, releaseBytes, document, signature, signer, index, configs, omitted, blobs, deferred, close: () => source.close() };
}

/** Every blob's SHA-256 against its name, streamed, but those `deferred` (counted, checked later). */
async function hashBlobs(source: ByteSource, entries: ReadonlyMap<string, Entry>, deferred: ReadonlySet<string>): Promise<{ count: number; bytes: number }> {
  let count = 0;
  let bytes = 0;
  for (const entry of entries.values()) {
    if (!entry.name.startsWith('blobs/sha256/')) continue;
    if (!deferred.has(entry.name)) await checkBlob(source, entry);
    count += 1;
    bytes += entry.size;
  }
  return { count, bytes };
}

async function checkBlob(source: ByteSource, entry: Entry): Promise<void> {
  const tap = new Sha256Tap();
  await pipeline(source.stream(entry.offset, entry.size), tap, new Writable({ write: (_chunk, _enc, done) => done() }));
  if (`sha256:${entry.name.slice('blobs/sha256/'.length)}` !== tap.digest()) throw digestMismatch(entry.name);
}

/** The deferred blobs nothing has read yet, each hashed now: after this, every blob of the bundle was checked. */
export async function checkDeferred(bundle: VerifiedBundle, names: Iterable<string> = [...bundle.deferred]): Promise<void> {
  for (const name of names) {
    const entry = bundle.entries.get(name);
    if (!entry || !bundle.deferred.has(name)) continue;
    await checkBlob(bundle.source, entry);
    bundle.deferred.delete(name);
  }
}

/**
 * index.json lists exactly one manifest per service, named after it; each manifest's config is
 * the service's image id with the layers release.json lists as its diff ids; every blob of the
 * file is one of theirs, and every layer they name is in the file or, for a differential bundle,
 * one the base carries.
 */
async function checkImages(document: ReleaseDocument, index: OciIndex, entries: ReadonlyMap<string, Entry>, read: (name: string) => Promise<Buffer>): Promise<{ configs: Map<string, Buffer>; omitted: Set<string> }> {
  const referenced = new Set<string>();
  const configs = new Map<string, Buffer>();
  const omitted = new Set(document.base?.layers ?? []);
  const services = document.release.services;
  if (index.manifests.length !== services.length) throw malformed(`index.json lists ${index.manifests.length} images for ${services.length} services`);
  for (const [i, service] of services.entries()) {
    const descriptor = index.manifests[i];
    if (descriptor?.digest !== service.image.manifest || descriptor.annotations?.[REF_NAME] !== service.name || descriptor.mediaType !== MEDIA.manifest) {
      throw malformed(`index.json's entry ${i} is not the image of ${service.name}`);
    }
    const manifest = await blob(entries, descriptor.digest, descriptor.size, read, referenced, (bytes) => parseEntry(ManifestSchema, bytes, `the manifest of ${service.name}`));
    checkManifest(service, manifest, omitted);
    const config = await blob(entries, manifest.config.digest, manifest.config.size, read, referenced, (bytes) => bytes);
    const parsed = parseEntry(ConfigSchema, config, `the config of ${service.name}`);
    const diffIds = service.image.layers.map((l) => l.diffId);
    if (parsed.rootfs.diff_ids.length !== diffIds.length || parsed.rootfs.diff_ids.some((id, j) => id !== diffIds[j])) throw malformed(`the config of ${service.name} lists other layers than release.json`);
    configs.set(service.image.id, config);
    for (const layer of service.image.layers) {
      const entry = entries.get(blobPath(layer.digest));
      if (entry === undefined) {
        if (!omitted.has(layer.diffId)) throw malformed(`the layer ${layer.digest} of ${service.name} is missing`);
        continue;
      }
      if (entry.size !== layer.blobSize) throw digestMismatch(blobPath(layer.digest));
      referenced.add(entry.name);
    }
  }
  for (const name of entries.keys()) {
    if (name.startsWith('blobs/') && !referenced.has(name)) throw malformed(`${name} belongs to no image of the release`);
  }
  return { configs, omitted };
}

async function blob<T>(entries: ReadonlyMap<string, Entry>, digest: string, size: number, read: (name: string) => Promise<Buffer>, referenced: Set<string>, parse: (bytes: Buffer) => T): Promise<T> {
  const name = blobPath(digest);
  const entry = entries.get(name);
  if (!entry) throw malformed(`${name} is missing`);
  if (entry.size !== size) throw digestMismatch(name);
  referenced.add(name);
  return parse(await read(name));
}

function checkManifest(service: BundleService, manifest: OciManifest, omitted: ReadonlySet<string>): void {
  if (manifest.config.digest !== service.image.id || manifest.config.mediaType !== MEDIA.config) throw malformed(`the manifest of ${service.name} is not image ${service.image.id}`);
  const layers = service.image.layers;
  // Carried layers are zstd blobs; only a left-out layer a host holds is named uncompressed, by its diff id.
  const mediaType = (layer: BundleLayer | undefined): string => (layer && layer.digest === layer.diffId && omitted.has(layer.diffId) ? MEDIA.layerTar : MEDIA.layerZstd);
  if (manifest.layers.length !== layers.length || manifest.layers.some((l, i) => l.digest !== layers[i]?.digest || l.size !== layers[i]?.blobSize || l.mediaType !== mediaType(layers[i]))) {
    throw malformed(`the manifest of ${service.name} lists other layers than release.json`);
  }
}

/** Each service in one phase, the one it says; a dependency in an earlier phase. */
function checkRelease(document: ReleaseDocument): void {
  const { phases, services } = document.release;
  const phaseOf = new Map<string, number>();
  phases.forEach((phase, i) => {
    for (const name of phase.services) {
      if (phaseOf.has(name)) throw malformed(`${name} is in two phases`);
      phaseOf.set(name, i);
    }
  });
  if (phaseOf.size !== services.length) throw malformed('the phases do not list every service once');
  for (const service of services) {
    if (phaseOf.get(service.name) !== service.phase) throw malformed(`${service.name} is not in the phase it says`);
    if (service.spec.name !== service.name) throw malformed(`the spec of ${service.name} names another service`);
    for (const dependency of service.dependsOn) {
      const at = phaseOf.get(dependency.service);
      if (at === undefined || at >= service.phase) throw malformed(`${service.name} depends on ${dependency.service}, which is not in an earlier phase`);
    }
  }
}
