import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { BLOCK, TYPE, paddedSize, parsePax, readHeader, readString } from '@ferry/docker';
import { FerryError, chainIds } from '@ferry/protocol';

/** `<v1 id>/json` and PAX data are read whole; real ones are a few KiB. */
const CAPTURE_MAX = 8 * 1024 * 1024;
const HEX = '[0-9a-f]{64}';
const LEGACY_JSON = new RegExp(`^(${HEX})/json$`);
const LEGACY_LAYER = new RegExp(`^(${HEX})/layer\\.tar$`);
const BLOB = new RegExp(`^blobs/sha256/(${HEX})$`);

/**
 * The diff ids a package may leave out when the target holds the bottom `present` layers: those
 * whose every occurrence lies in that part. A layer repeated higher up stays, because `docker
 * save` writes the repeat as a link to the first copy.
 */
export function omittableLayers(diffIds: readonly string[], present: number): string[] {
  const kept = new Set(diffIds.slice(present));
  return [...new Set(diffIds.slice(0, present))].filter((id) => !kept.has(id));
}

/** The archive cannot leave the layers out (a kept link points at a dropped file): build it whole. */
export class PartialPackageUnavailable extends Error {
  override readonly name = 'PartialPackageUnavailable';
}

type Mode = 'pass' | 'drop' | 'pass-capture' | 'extension';

/**
 * Leaves the entries of the layers in `omit` out of a `docker save` tar as it streams by, keeping
 * manifest.json, the config and everything else: `docker load` on a legacy store skips reading
 * the file of a layer whose chain id it already has (moby image/tarexport/load.go), so the
 * archive only has to name it.
 *
 * Which layer an entry belongs to: `blobs/sha256/<diff id>` names it (docker ≥ 25); the legacy
 * layout names layer directories by v1 ids, and manifest.json, which maps them, comes last. So the
 * `<v1 id>/json` entry, which precedes its `layer.tar`, is used to work the v1 id out again
 * (moby image/v1 CreateID: SHA-256 of that JSON without `id`, plus `layer_id` = the chain id and
 * `parent`); the position whose chain id reproduces the directory name is the layer's. A layer
 * that matches no position is kept, so a format this does not know only costs bytes.
 * Memory stays flat: data passes through; only the small JSON entries are held.
 */
export class LayerFilter extends Transform {
  readonly #diffIds: readonly string[];
  readonly #chains: string[];
  readonly #omit: ReadonlySet<string>;
  readonly #header = Buffer.alloc(BLOCK);
  #headerFill = 0;
  #state: 'header' | 'data' | 'end' = 'header';
  #mode: Mode = 'pass';
  #dataLeft = 0;
  #captured: Buffer[] = [];
  #capturedBytes = 0;
  #currentName = '';
  /** Extension headers (PAX, GNU long names) wait here until the entry they describe is judged. */
  #pending: Buffer[] = [];
  #pendingPath: string | undefined;
  #pendingLinkpath: string | undefined;
  #pendingSize: number | undefined;
  /** The entry's size without padding, and the type of the extension header being read. */
  #contentSize = 0;
  #extensionType = '';
  readonly #positions = new Map<string, number>();
  readonly #droppedPaths = new Set<string>();
  readonly #dropped = new Set<string>();
  #droppedBytes = 0;

  constructor(diffIds: readonly string[], omit: Iterable<string>) {
    super();
    this.#diffIds = diffIds;
    this.#chains = chainIds(diffIds);
    this.#omit = new Set(omit);
  }

  /** The diff ids whose entries were left out, bottom first; final once the stream ended. */
  get omitted(): string[] {
    return this.#diffIds.filter((id, i) => this.#dropped.has(id) && this.#diffIds.indexOf(id) === i);
  }

  /** Tar bytes (headers, data, padding) that were left out. */
  get droppedBytes(): number {
    return this.#droppedBytes;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.#consume(chunk);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    if (this.#pending.length > 0) this.push(Buffer.concat(this.#pending));
    callback();
  }

  #consume(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#state === 'end') {
        this.push(chunk.subarray(at));
        return;
      }
      if (this.#state === 'header') {
        const take = Math.min(BLOCK - this.#headerFill, chunk.length - at);
        chunk.copy(this.#header, this.#headerFill, at, at + take);
        this.#headerFill += take;
        at += take;
        if (this.#headerFill === BLOCK) {
          this.#headerFill = 0;
          this.#onHeader(Buffer.from(this.#header));
        }
        continue;
      }
      const take = Math.min(this.#dataLeft, chunk.length - at);
      this.#onData(chunk.subarray(at, at + take));
      this.#dataLeft -= take;
      at += take;
      if (this.#dataLeft === 0) this.#onEntryEnd();
    }
  }

  #onHeader(block: Buffer): void {
    const read = readHeader(block);
    if (read.kind === 'end') {
      if (this.#pending.length > 0) this.push(Buffer.concat(this.#pending));
      this.#pending = [];
      this.#state = 'end';
      this.push(block);
      return;
    }
    if (read.kind === 'invalid') throw new FerryError('FERRY_ERR_BAD_ARCHIVE', { message: `docker save wrote an unreadable tar: ${read.reason}` });
    const { type, size: ownSize } = read.header;
    const size = this.#pendingSize ?? ownSize;
    const padded = paddedSize(size);
    if (type === TYPE.paxNext || type === TYPE.gnuLongName || type === TYPE.gnuLongLink) {
      if (ownSize > CAPTURE_MAX) throw new FerryError('FERRY_ERR_BAD_ARCHIVE', { message: 'docker save wrote an extended header larger than 8 MiB' });
      this.#pending.push(block);
      return this.#startData('extension', paddedSize(ownSize), type);
    }
    const name = normalize(this.#pendingPath ?? read.header.name);
    const linkname = this.#pendingLinkpath ?? read.header.linkname;
    this.#pendingPath = undefined;
    this.#pendingLinkpath = undefined;
    this.#pendingSize = undefined;
    const mode = this.#judge(name, type, linkname);
    const header = Buffer.concat([...this.#pending, block]);
    this.#pending = [];
    if (mode === 'drop') this.#droppedBytes += header.length + padded;
    else this.push(header);
    this.#currentName = name;
    this.#startData(mode, padded, type, size);
  }

  #judge(name: string, type: string, linkname: string): Mode {
    if (LEGACY_JSON.test(name)) return 'pass-capture';
    const layerDir = LEGACY_LAYER.exec(name)?.[1];
    const blob = BLOB.exec(name)?.[1];
    let diffId: string | undefined;
    if (layerDir !== undefined) {
      const position = this.#positions.get(layerDir);
      diffId = position === undefined ? undefined : this.#diffIds[position];
    } else if (blob !== undefined && this.#diffIds.includes(`sha256:${blob}`)) {
      diffId = `sha256:${blob}`;
    }
    if (diffId !== undefined && this.#omit.has(diffId)) {
      this.#dropped.add(diffId);
      this.#droppedPaths.add(name);
      return 'drop';
    }
    if ((type === TYPE.hardlink || type === TYPE.symlink) && linkname !== '') {
      const target = type === TYPE.symlink ? posix.normalize(posix.join(posix.dirname(name), linkname)) : normalize(linkname);
      if (this.#droppedPaths.has(target)) throw new PartialPackageUnavailable(`${name} links to the left-out ${target}`);
    }
    return 'pass';
  }

  #startData(mode: Mode, padded: number, type: string, contentSize = padded): void {
    this.#mode = mode;
    this.#dataLeft = padded;
    this.#captured = [];
    this.#capturedBytes = 0;
    this.#contentSize = contentSize;
    this.#extensionType = type;
    this.#state = 'data';
    if (padded === 0) this.#onEntryEnd();
  }

  #onData(piece: Buffer): void {
    if (this.#mode === 'extension') {
      this.#pending.push(Buffer.from(piece));
      this.#capture(piece);
      return;
    }
    if (this.#mode !== 'drop') this.push(piece);
    if (this.#mode === 'pass-capture') {
      if (this.#capturedBytes + piece.length > CAPTURE_MAX) this.#mode = 'pass';
      else this.#capture(piece);
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
    this.#capturedBytes = 0;
    this.#state = 'header';
    this.#mode = 'pass';
    if (mode === 'extension') {
      this.#onExtension(this.#extensionType, data);
      return;
    }
    const layerDir = LEGACY_JSON.exec(this.#currentName)?.[1];
    if (mode === 'pass-capture' && layerDir !== undefined) {
      const position = identifyLayer(data.subarray(0, this.#contentSize).toString('utf8'), layerDir, this.#chains);
      if (position !== undefined) this.#positions.set(layerDir, position);
    }
  }

  #onExtension(type: string, data: Buffer): void {
    if (type === TYPE.gnuLongName || type === TYPE.gnuLongLink) {
      if (type === TYPE.gnuLongName) this.#pendingPath = readString(data, 0, data.length);
      else this.#pendingLinkpath = readString(data, 0, data.length);
      return;
    }
    const records = parsePax(data);
    if (records === undefined) throw new FerryError('FERRY_ERR_BAD_ARCHIVE', { message: 'docker save wrote a PAX header that does not parse' });
    for (const [key, value] of records) {
      if (key === 'path') this.#pendingPath = value;
      else if (key === 'linkpath') this.#pendingLinkpath = value;
      else if (key === 'size' && /^\d{1,16}$/.test(value)) this.#pendingSize = Number(value);
    }
  }
}

/**
 * The position (in `chains`) of the layer saved under the v1 id `dirHex`, found by recomputing
 * that id from the entry's JSON for each position; undefined when none matches.
 */
export function identifyLayer(json: string, dirHex: string, chains: readonly string[]): number | undefined {
  const fields = topLevelFields(json.trim());
  if (fields === undefined) return undefined;
  const parentRaw = fields.get('parent');
  const parent = parentRaw === undefined ? undefined : safeParse(parentRaw);
  fields.delete('id');
  fields.delete('parent');
  // Newer engines set `os` on the lower layers' JSON only after computing the id.
  const variants = [fields];
  if (fields.has('os')) {
    const withoutOs = new Map(fields);
    withoutOs.delete('os');
    variants.push(withoutOs);
  }
  for (const [position, chain] of chains.entries()) {
    for (const variant of variants) {
      const candidate = new Map(variant);
      candidate.set('layer_id', JSON.stringify(chain));
      if (typeof parent === 'string' && parent !== '') candidate.set('parent', JSON.stringify(`sha256:${parent}`));
      const text = `{${[...candidate.keys()].sort().map((key) => `${JSON.stringify(key)}:${candidate.get(key) ?? 'null'}`).join(',')}}`;
      if (sha256(text) === dirHex) return position;
    }
  }
  return undefined;
}

/** The raw text of each top-level value of a JSON object, as Go's map[string]*json.RawMessage holds it. */
function topLevelFields(text: string): Map<string, string> | undefined {
  if (safeParse(text) === undefined || !text.startsWith('{')) return undefined;
  const fields = new Map<string, string>();
  let at = skipSpace(text, 1);
  while (at < text.length && text[at] !== '}') {
    const keyEnd = skipValue(text, at);
    const key = safeParse(text.slice(at, keyEnd));
    if (typeof key !== 'string') return undefined;
    const valueStart = skipSpace(text, skipSpace(text, keyEnd) + 1);
    const valueEnd = skipValue(text, valueStart);
    fields.set(key, text.slice(valueStart, valueEnd));
    at = skipSpace(text, valueEnd);
    if (text[at] === ',') at = skipSpace(text, at + 1);
  }
  return fields;
}

function skipSpace(text: string, at: number): number {
  while (at < text.length && /\s/.test(text[at] ?? '')) at += 1;
  return at;
}

/** The end of the JSON value that starts at `at` (the text is known to parse). */
function skipValue(text: string, at: number): number {
  let depth = 0;
  let i = at;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      i += 1;
      while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
      i += 1;
      if (depth === 0) return i;
      continue;
    }
    if (c === '{' || c === '[') depth += 1;
    else if (c === '}' || c === ']') {
      if (depth === 0) return i;
      depth -= 1;
      if (depth === 0) return i + 1;
    } else if (depth === 0 && (c === ',' || /\s/.test(c ?? ''))) return i;
    i += 1;
  }
  return i;
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function normalize(name: string): string {
  return name.split('/').filter((part) => part !== '.' && part !== '').join('/');
}
