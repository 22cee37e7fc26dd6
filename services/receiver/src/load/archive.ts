import { createHash, type Hash } from 'node:crypto';
import { posix } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { FerryError } from '@ferry/protocol';
import { BLOCK, TYPE, fileEntry, paddedSize, parsePax, readHeader, readString, writeHeader, type RawHeader } from '@ferry/docker';

/** What the signed manifest says the archive holds. */
export interface ArchiveExpectation {
  /** `sha256:<hex>`: the digest of the image config, which is the image id. */
  imageId: string;
  /** The config's `rootfs.diff_ids`, bottom layer first. */
  diffIds: readonly string[];
  /**
   * Diff ids whose layer entries may be absent (the signed `package.omittedLayers`): the engine
   * holds them, checked before loading. manifest.json must still name every layer.
   */
  omittedLayers?: readonly string[];
}

/** What an inspection saw, for logs and events. */
export interface ArchiveStats {
  /** Decompressed bytes read, including anything after the end-of-archive marker. */
  bytes: number;
  entries: number;
  /** Image names the archive carried (manifest.json RepoTags, index.json annotations, `repositories`), all dropped. */
  strippedTags: string[];
}

/**
 * The decompression-bomb rule: an archive may expand to at most `UNPACK_RATIO` times its
 * compressed size, but always to `UNPACK_FLOOR` (small images of zeros compress absurdly well),
 * and never past `UNPACK_MAX`. The entries' declared sizes are held to the same limit at each
 * header, so a lying archive is refused before its data is read.
 */
export const UNPACK_RATIO = 200;
export const UNPACK_FLOOR = 1024 ** 3;
export const UNPACK_MAX = 64 * 1024 ** 3;

export function unpackLimit(compressedBytes: number): number {
  return Math.min(UNPACK_MAX, Math.max(UNPACK_FLOOR, compressedBytes * UNPACK_RATIO));
}

/** manifest.json, index.json and the image config are read whole; real ones are a few KiB. */
const JSON_ENTRY_MAX = 8 * 1024 * 1024;
/** PAX and GNU long-name data: a path or two. */
const EXTENSION_MAX = 64 * 1024;
/** A docker save of one image has a few entries per layer. */
const ENTRIES_MAX = 100_000;

const HEX = '[0-9a-f]{64}';
const LEGACY_CONFIG = new RegExp(`^(${HEX})\\.json$`);
const LAYER_DIR = new RegExp(`^${HEX}$`);
const LAYER_FILE = new RegExp(`^${HEX}/(VERSION|json|layer\\.tar)$`);
const LEGACY_LAYER = new RegExp(`^${HEX}/layer\\.tar$`);
const BLOB = new RegExp(`^blobs/sha256/(${HEX})$`);
/** Annotations by which an OCI index names its images; an engine that reads them would tag. */
const NAME_ANNOTATIONS = ['io.containerd.image.name', 'org.opencontainers.image.ref.name'];

type Mode =
  | { kind: 'forward' }
  | { kind: 'drop' }
  /** `repositories`: read for the names it claims, never passed on. */
  | { kind: 'strip' }
  | { kind: 'config' }
  | { kind: 'rewrite'; name: 'manifest.json' | 'index.json'; mtime: number }
  | { kind: 'extension'; type: string };

interface Overrides {
  path?: string;
  linkpath?: string;
  size?: number;
}

/**
 * A pass-through for the decompressed `docker save` tar on its way into `docker load` that
 * refuses what must never reach the engine, and rewrites what the engine would misuse:
 *
 * - every entry must belong to the docker-archive layout (`manifest.json`, `<config>.json`,
 *   `<layer>/{VERSION,json,layer.tar}`, `blobs/sha256/<hex>`, `index.json`, `oci-layout`,
 *   `repositories`); absolute paths, `..`, links that leave the archive or point anywhere but at a
 *   layer, devices, FIFOs, sparse files and duplicate names are refused;
 * - the image names an archive carries are stripped before the engine sees them (`repositories`
 *   dropped, `RepoTags` set to null, index name annotations removed), so loading tags nothing;
 * - manifest.json must describe exactly the signed image: one image, its config the entry named
 *   by the signed id, that entry's SHA-256 the id, its diff ids the signed ones, every layer present.
 *
 * Every header is written anew from what was checked (extension headers are consumed, never
 * passed on), so the engine cannot read a name other than the one judged here. Data is passed
 * through as it comes; nothing but the small JSON entries is held in memory. The end-of-archive
 * marker is forwarded only after the final checks, and a failure errors the stream before it: a
 * refused archive is always incomplete for the engine, which then loads nothing.
 */
export class ArchiveInspector extends Transform {
  readonly #expect: ArchiveExpectation;
  readonly #limit: number;
  readonly #configHex: string;
  readonly #header = Buffer.alloc(BLOCK);
  #headerFill = 0;
  #state: 'header' | 'data' | 'end' = 'header';
  #mode: Mode = { kind: 'forward' };
  #contentLeft = 0;
  #paddingLeft = 0;
  #captured: Buffer[] = [];
  #capturedBytes = 0;
  #overrides: Overrides = {};
  #bytes = 0;
  #declared = 0;
  #entries = 0;
  readonly #seen = new Set<string>();
  /** Regular files by name, and each link's target: a link must end at a file of the archive. */
  readonly #files = new Set<string>();
  readonly #links = new Map<string, string>();
  readonly #stripped: string[] = [];
  #configHash: Hash | undefined;
  #config: { digest: string; json: unknown } | undefined;
  #manifest: { config: string; layers: string[] } | undefined;
  #failure: FerryError | undefined;

  readonly #endAfterInput: boolean;
  #endHeld = false;

  /**
   * `endAfterInput`: the end-of-archive marker waits for the end of the input even when the
   * archive's own end came earlier, so whoever feeds the inspector decides when the engine may
   * finish (a streamed upload ends its input only once the whole package's digest matched).
   */
  constructor(expect: ArchiveExpectation, options: { limit: number; endAfterInput?: boolean }) {
    super();
    this.#expect = expect;
    this.#limit = options.limit;
    this.#endAfterInput = options.endAfterInput ?? false;
    this.#configHex = expect.imageId.replace(/^sha256:/, '');
  }

  /** The reason the archive was refused, once it was. */
  get failure(): FerryError | undefined {
    return this.#failure;
  }

  get stats(): ArchiveStats {
    return { bytes: this.#bytes, entries: this.#entries, strippedTags: [...this.#stripped] };
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.#consume(chunk);
      callback();
    } catch (err) {
      callback(this.#refuse(err));
    }
  }

  override _flush(callback: TransformCallback): void {
    if (this.#state === 'end') {
      if (this.#endHeld) this.push(Buffer.alloc(2 * BLOCK));
      return callback();
    }
    const reason = this.#bytes === 0 ? 'the archive is empty' : 'the archive is truncated (no end-of-archive marker)';
    callback(this.#refuse(bad(reason)));
  }

  #refuse(err: unknown): Error {
    this.#failure ??= err instanceof FerryError ? err : bad('the archive could not be read');
    return this.#failure;
  }

  #consume(chunk: Buffer): void {
    this.#bytes += chunk.length;
    if (this.#bytes > this.#limit) throw tooLarge(this.#limit);
    let at = 0;
    while (at < chunk.length) {
      if (this.#state === 'end') return; // What follows the end marker (record padding) is read, never passed on.
      if (this.#state === 'header') {
        const take = Math.min(BLOCK - this.#headerFill, chunk.length - at);
        chunk.copy(this.#header, this.#headerFill, at, at + take);
        this.#headerFill += take;
        at += take;
        if (this.#headerFill === BLOCK) {
          this.#headerFill = 0;
          this.#onHeader();
        }
        continue;
      }
      if (this.#contentLeft > 0) {
        const take = Math.min(this.#contentLeft, chunk.length - at);
        this.#onContent(chunk.subarray(at, at + take));
        this.#contentLeft -= take;
        at += take;
      } else {
        const take = Math.min(this.#paddingLeft, chunk.length - at);
        if (this.#mode.kind === 'forward' || this.#mode.kind === 'config') this.push(chunk.subarray(at, at + take));
        this.#paddingLeft -= take;
        at += take;
      }
      if (this.#contentLeft === 0 && this.#paddingLeft === 0) this.#onEntryEnd();
    }
  }

  #onHeader(): void {
    const read = readHeader(this.#header);
    if (read.kind === 'invalid') throw bad(read.reason);
    if (read.kind === 'end') return this.#onEnd();
    const raw = read.header;
    if (++this.#entries > ENTRIES_MAX) throw unsafe(`more than ${ENTRIES_MAX} entries`, raw.name);
    const extension = raw.type === TYPE.paxNext || raw.type === TYPE.paxGlobal || raw.type === TYPE.gnuLongName || raw.type === TYPE.gnuLongLink;
    // A PAX size applies to the next real entry, not to another extension header in between.
    const size = extension ? raw.size : this.#overrides.size ?? raw.size;
    this.#declared += BLOCK + paddedSize(size);
    if (this.#declared > this.#limit) throw tooLarge(this.#limit);
    if (extension) {
      if (size > EXTENSION_MAX) throw unsafe('an extended header is larger than 64 KiB', raw.name);
      return this.#startData({ kind: 'extension', type: raw.type }, size);
    }
    const overrides = this.#overrides;
    this.#overrides = {};
    this.#onEntry({ ...raw, size, name: overrides.path ?? raw.name, linkname: overrides.linkpath ?? raw.linkname });
  }

  #onEntry(entry: RawHeader): void {
    const name = this.#checkedName(entry);
    const type = entry.type === TYPE.oldFile ? TYPE.file : entry.type;
    if (type === TYPE.charDevice || type === TYPE.blockDevice) throw unsafe('a device file', entry.name);
    if (type === TYPE.fifo) throw unsafe('a FIFO', entry.name);
    if (type !== TYPE.file && type !== TYPE.directory && type !== TYPE.symlink && type !== TYPE.hardlink) {
      throw unsafe(`an entry of unsupported type "${printable(type)}"`, entry.name);
    }
    if (this.#seen.has(name)) throw unsafe('an entry that appears twice (the second would replace what was checked)', entry.name);
    this.#seen.add(name);

    if (type === TYPE.directory) {
      if (name !== '' && !LAYER_DIR.test(name) && name !== 'blobs' && name !== 'blobs/sha256') throw outsideLayout(entry.name);
      if (entry.size !== 0) throw unsafe('a directory that carries data', entry.name);
      if (name !== '') this.push(writeHeader({ name: `${name}/`, type, size: 0, mtime: entry.mtime }));
      return this.#startData({ kind: 'drop' }, 0);
    }
    if (type === TYPE.symlink || type === TYPE.hardlink) {
      if (!LEGACY_LAYER.test(name)) throw unsafe('a link outside a layer\'s layer.tar', entry.name);
      if (entry.size !== 0) throw unsafe('a link that carries data', entry.name);
      const target = this.#linkTarget(name, type, entry);
      this.#links.set(name, target);
      // Written in its shortest form, so the engine follows exactly the path that was checked.
      const linkname = type === TYPE.symlink ? posix.relative(posix.dirname(name), target) : target;
      this.push(writeHeader({ name, type, size: 0, linkname, mtime: entry.mtime }));
      return this.#startData({ kind: 'drop' }, 0);
    }

    if (name === 'repositories' || name === 'manifest.json' || name === 'index.json') {
      if (entry.size > JSON_ENTRY_MAX) throw bad(`${name} is larger than ${JSON_ENTRY_MAX} bytes`);
      if (name === 'repositories') return this.#startData({ kind: 'strip' }, entry.size);
      return this.#startData({ kind: 'rewrite', name, mtime: entry.mtime }, entry.size);
    }
    const legacyConfig = LEGACY_CONFIG.exec(name)?.[1];
    const blob = BLOB.exec(name)?.[1];
    if (legacyConfig !== undefined && legacyConfig !== this.#configHex) {
      throw imageMismatch(`the archive holds the config of another image (${legacyConfig.slice(0, 12)})`, this.#expect);
    }
    if (name !== 'oci-layout' && legacyConfig === undefined && blob === undefined && !LAYER_FILE.test(name)) throw outsideLayout(entry.name);
    this.#files.add(name);
    this.push(writeHeader({ name, type, size: entry.size, mtime: entry.mtime }));
    if (legacyConfig === this.#configHex || blob === this.#configHex) {
      if (entry.size > JSON_ENTRY_MAX) throw bad(`the image config is larger than ${JSON_ENTRY_MAX} bytes`);
      this.#configHash = createHash('sha256');
      return this.#startData({ kind: 'config' }, entry.size);
    }
    return this.#startData({ kind: 'forward' }, entry.size);
  }

  /** The archive-relative name, after refusing anything that could land outside the archive. */
  #checkedName(entry: RawHeader): string {
    const raw = entry.name;
    if (raw.includes('\0') || raw.includes('\\')) throw unsafe('a name with a NUL or a backslash', raw);
    if (raw.startsWith('/')) throw unsafe('an absolute path', raw);
    const parts = raw.split('/');
    if (parts.includes('..')) throw unsafe('a ".." path component', raw);
    // `tar -C dir .` writes "./name"; Docker reads it as "name".
    return parts.filter((part) => part !== '.' && part !== '').join('/');
  }

  /**
   * The archive path a link ends at. Symlinks resolve from the link's directory, hard links from
   * the archive root (as Go does).
   */
  #linkTarget(name: string, type: string, entry: RawHeader): string {
    const target = entry.linkname;
    if (target === '' || target.includes('\0')) throw unsafe('a link without a target', entry.name);
    if (target.startsWith('/')) throw unsafe(`a link to an absolute path (${target})`, entry.name);
    const resolved = posix.normalize(type === TYPE.symlink ? posix.join(posix.dirname(name), target) : target);
    if (resolved === '..' || resolved.startsWith('../')) throw unsafe(`a link that leaves the archive (${target})`, entry.name);
    if (!LEGACY_LAYER.test(resolved) && !BLOB.test(resolved)) throw unsafe(`a link to something other than a layer (${target})`, entry.name);
    return resolved;
  }

  #startData(mode: Mode, size: number): void {
    this.#mode = mode;
    this.#contentLeft = size;
    this.#paddingLeft = paddedSize(size) - size;
    this.#captured = [];
    this.#capturedBytes = 0;
    this.#state = 'data';
    if (size === 0) this.#onEntryEnd();
  }

  #onContent(piece: Buffer): void {
    switch (this.#mode.kind) {
      case 'forward':
        this.push(piece);
        return;
      case 'config':
        this.push(piece);
        this.#configHash?.update(piece);
        this.#capture(piece);
        return;
      case 'rewrite':
      case 'strip':
      case 'extension':
        this.#capture(piece);
        return;
      case 'drop':
        return;
    }
  }

  #capture(piece: Buffer): void {
    this.#captured.push(Buffer.from(piece));
    this.#capturedBytes += piece.length;
  }

  #onEntryEnd(): void {
    const mode = this.#mode;
    const data = Buffer.concat(this.#captured, this.#capturedBytes);
    this.#captured = [];
    this.#state = 'header';
    this.#mode = { kind: 'forward' };
    if (mode.kind === 'extension') this.#onExtension(mode.type, data);
    else if (mode.kind === 'config') this.#onConfig(data);
    else if (mode.kind === 'strip') this.#stripped.push(...repositoryNames(data));
    else if (mode.kind === 'rewrite') this.#emitRewritten(mode.name, mode.mtime, mode.name === 'manifest.json' ? this.#rewriteManifest(data) : this.#rewriteIndex(data));
  }

  #onExtension(type: string, data: Buffer): void {
    if (type === TYPE.gnuLongName) {
      this.#overrides.path = readString(data, 0, data.length);
      return;
    }
    if (type === TYPE.gnuLongLink) {
      this.#overrides.linkpath = readString(data, 0, data.length);
      return;
    }
    const records = parsePax(data);
    if (records === undefined) throw bad('a PAX extended header does not parse');
    for (const key of records.keys()) {
      if (key.startsWith('GNU.sparse')) throw unsafe('a sparse file', key);
    }
    if (type === TYPE.paxGlobal) {
      // A global header renaming every entry has no place in a docker save.
      if (records.has('path') || records.has('linkpath') || records.has('size')) throw unsafe('a global header that renames or resizes entries', 'pax_global_header');
      return;
    }
    const path = records.get('path');
    const linkpath = records.get('linkpath');
    const size = records.get('size');
    if (path !== undefined) this.#overrides.path = path;
    if (linkpath !== undefined) this.#overrides.linkpath = linkpath;
    if (size !== undefined) {
      if (!/^\d{1,16}$/.test(size) || !Number.isSafeInteger(Number(size))) throw bad('a PAX size is not a number');
      this.#overrides.size = Number(size);
    }
  }

  #onConfig(data: Buffer): void {
    const digest = `sha256:${this.#configHash?.digest('hex') ?? ''}`;
    this.#configHash = undefined;
    let json: unknown;
    try {
      json = JSON.parse(data.toString('utf8'));
    } catch {
      json = undefined;
    }
    this.#config = { digest, json };
  }

  /** One image, its names removed; the rest is checked at the end, when every entry was seen. */
  #rewriteManifest(data: Buffer): Buffer {
    const parsed = parseJson(data, 'manifest.json');
    if (!Array.isArray(parsed)) throw bad('manifest.json is not a list of images');
    if (parsed.length !== 1) throw imageMismatch(`the archive holds ${parsed.length} images, the manifest signs one`, this.#expect);
    const image: unknown = parsed[0];
    if (image === null || typeof image !== 'object' || Array.isArray(image)) throw bad('manifest.json does not describe an image');
    const { Config: config, Layers: layers, RepoTags: tags } = image as { Config?: unknown; Layers?: unknown; RepoTags?: unknown };
    if (typeof config !== 'string' || !Array.isArray(layers) || !layers.every((layer): layer is string => typeof layer === 'string')) {
      throw bad('manifest.json lacks Config or Layers');
    }
    if (tags !== null && tags !== undefined) {
      if (!Array.isArray(tags)) throw bad('manifest.json RepoTags is not a list');
      for (const tag of tags) this.#stripped.push(String(tag));
    }
    this.#manifest = { config, layers };
    return Buffer.from(JSON.stringify([{ ...image, RepoTags: null }]), 'utf8');
  }

  #rewriteIndex(data: Buffer): Buffer {
    const parsed = parseJson(data, 'index.json');
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw bad('index.json is not an OCI index');
    const index = parsed as { manifests?: unknown };
    if (Array.isArray(index.manifests)) {
      index.manifests = index.manifests.map((descriptor: unknown) => {
        const annotations = (descriptor as { annotations?: unknown } | null)?.annotations;
        if (annotations === null || typeof annotations !== 'object') return descriptor;
        const kept = { ...(annotations as Record<string, unknown>) };
        for (const key of NAME_ANNOTATIONS) {
          if (key in kept) this.#stripped.push(String(kept[key]));
          delete kept[key];
        }
        return { ...(descriptor as object), annotations: kept };
      });
    }
    return Buffer.from(JSON.stringify(index), 'utf8');
  }

  #emitRewritten(name: string, mtime: number, content: Buffer): void {
    for (const piece of fileEntry(name, content, mtime)) this.push(piece);
  }

  /** The first zero block: the engine sees the end of the archive only if everything holds. */
  #onEnd(): void {
    this.#finalCheck();
    this.#state = 'end';
    if (this.#endAfterInput) this.#endHeld = true;
    else this.push(Buffer.alloc(2 * BLOCK));
  }

  #finalCheck(): void {
    const expect = this.#expect;
    const manifest = this.#manifest;
    if (manifest === undefined) throw bad('the archive has no manifest.json (not a docker save archive)');
    if (manifest.config !== `${this.#configHex}.json` && manifest.config !== `blobs/sha256/${this.#configHex}`) {
      throw imageMismatch(`the archive's image config is ${manifest.config.slice(0, 90)}`, expect);
    }
    const config = this.#config;
    if (config === undefined || !this.#seen.has(manifest.config)) throw bad(`the image config ${manifest.config} listed in manifest.json is missing`);
    if (config.digest !== expect.imageId) throw imageMismatch(`the image config's SHA-256 is ${config.digest}`, expect);
    const diffIds = (config.json as { rootfs?: { diff_ids?: unknown } } | undefined)?.rootfs?.diff_ids;
    if (!Array.isArray(diffIds)) throw bad('the image config has no rootfs.diff_ids');
    if (diffIds.length !== expect.diffIds.length || diffIds.some((id, i) => id !== expect.diffIds[i])) {
      throw imageMismatch('the image config lists other layers than the manifest', expect);
    }
    if (manifest.layers.length !== expect.diffIds.length) throw imageMismatch(`manifest.json lists ${manifest.layers.length} layers, the manifest ${expect.diffIds.length}`, expect);
    for (const [link, target] of this.#links) {
      if (!this.#files.has(target)) throw bad(`the link ${link} points at ${target}, which the archive does not hold`);
    }
    const omitted = new Set(expect.omittedLayers ?? []);
    for (const [i, layer] of manifest.layers.entries()) {
      if (!LEGACY_LAYER.test(layer) && !BLOB.test(layer)) throw unsafe('manifest.json names a layer outside the archive layout', layer);
      if (!this.#seen.has(layer) && !omitted.has(expect.diffIds[i] ?? '')) throw bad(`the layer ${layer} listed in manifest.json is missing`);
    }
  }
}

function parseJson(data: Buffer, name: string): unknown {
  try {
    return JSON.parse(data.toString('utf8')) as unknown;
  } catch {
    throw bad(`${name} is not JSON`);
  }
}

/** `{"repo":{"tag":"id"}}` → `repo:tag`…; an unreadable file still claims something. */
function repositoryNames(data: Buffer): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString('utf8'));
  } catch {
    return ['(repositories)'];
  }
  if (parsed === null || typeof parsed !== 'object') return ['(repositories)'];
  return Object.entries(parsed as Record<string, unknown>).flatMap(([repo, tags]) =>
    tags !== null && typeof tags === 'object' ? Object.keys(tags).map((tag) => `${repo}:${tag}`) : [repo]);
}

function printable(value: string): string {
  return value.replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function bad(reason: string): FerryError {
  return new FerryError('FERRY_ERR_BAD_ARCHIVE', { message: `The package is not a usable docker-save archive: ${reason}`, details: { reason } });
}

function unsafe(what: string, entry: string): FerryError {
  const shown = printable(entry.slice(0, 200));
  return new FerryError('FERRY_ERR_UNSAFE_ARCHIVE', { message: `The archive holds ${what}: ${shown}`, details: { entry: shown, reason: what } });
}

function outsideLayout(entry: string): FerryError {
  return unsafe('an entry that is not part of a docker-save archive', entry);
}

function tooLarge(limit: number): FerryError {
  return new FerryError('FERRY_ERR_ARCHIVE_TOO_LARGE', { message: `The archive expands to more than ${limit} bytes`, details: { limit } });
}

function imageMismatch(reason: string, expect: ArchiveExpectation): FerryError {
  return new FerryError('FERRY_ERR_IMAGE_MISMATCH', { message: `The archive is not the signed image: ${reason}`, details: { expected: expect.imageId, reason } });
}
