/**
 * The little of the tar format Ferry needs (the receiver's archive inspector, the sender's layer
 * filter): reading one header block as Go's archive/tar (what `docker load` uses) would, and
 * writing a plain ustar header back.
 */

export const BLOCK = 512;

/** Entry types, by their typeflag byte. */
export const TYPE = {
  file: '0',
  oldFile: '\0',
  hardlink: '1',
  symlink: '2',
  charDevice: '3',
  blockDevice: '4',
  directory: '5',
  fifo: '6',
  contiguous: '7',
  paxNext: 'x',
  paxGlobal: 'g',
  gnuLongName: 'L',
  gnuLongLink: 'K',
} as const;

export interface RawHeader {
  type: string;
  name: string;
  linkname: string;
  size: number;
  mtime: number;
}

export type HeaderResult = { kind: 'end' } | { kind: 'header'; header: RawHeader } | { kind: 'invalid'; reason: string };

/**
 * Reads one 512-byte header. An all-zero block marks the end of the archive; a block whose
 * checksum does not add up is no tar header at all (the usual sign of a non-tar or corrupt input).
 */
export function readHeader(block: Buffer): HeaderResult {
  if (block.every((byte) => byte === 0)) return { kind: 'end' };
  const stored = readNumber(block, 148, 8);
  if (stored === undefined || !checksumMatches(block, stored)) return { kind: 'invalid', reason: 'a tar header checksum does not match (not a tar archive, or corrupt)' };
  const size = readNumber(block, 124, 12);
  const mtime = readNumber(block, 136, 12) ?? 0;
  if (size === undefined) return { kind: 'invalid', reason: 'a tar header has an unreadable size' };
  let name = readString(block, 0, 100);
  // POSIX ustar splits long names into prefix + name; GNU's "ustar  " magic has no prefix field.
  if (block.toString('latin1', 257, 263) === 'ustar\0') {
    const prefix = readString(block, 345, 155);
    if (prefix !== '') name = `${prefix}/${name}`;
  }
  return {
    kind: 'header',
    header: { type: String.fromCharCode(block[156] ?? 0), name, linkname: readString(block, 157, 100), size, mtime },
  };
}

/** Bytes of data plus padding that follow a header of this size. */
export function paddedSize(size: number): number {
  return Math.ceil(size / BLOCK) * BLOCK;
}

/**
 * A ustar header holding only what `docker load` reads: name, type, size, link target, a fixed
 * mode and owner. Sizes past ustar's 8 GiB octal field use the base-256 form Go reads too.
 */
export function writeHeader(entry: { name: string; type: string; size: number; linkname?: string; mtime?: number }): Buffer {
  const block = Buffer.alloc(BLOCK);
  writeString(block, 0, 100, entry.name);
  const mode = entry.type === TYPE.directory ? 0o755 : entry.type === TYPE.symlink ? 0o777 : 0o644;
  writeOctal(block, 100, 8, mode);
  writeOctal(block, 108, 8, 0);
  writeOctal(block, 116, 8, 0);
  if (entry.size <= 0o77777777777) writeOctal(block, 124, 12, entry.size);
  else writeBase256(block, 124, 12, entry.size);
  writeOctal(block, 136, 12, Math.max(0, Math.min(entry.mtime ?? 0, 0o77777777777)));
  block.write(entry.type, 156, 'latin1');
  writeString(block, 157, 100, entry.linkname ?? '');
  block.write('ustar\0', 257, 'latin1');
  block.write('00', 263, 'latin1');
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  writeOctal(block, 148, 7, sum);
  block[155] = 0x20;
  return block;
}

/**
 * A whole regular-file entry: its header, the content and the padding to the next block — for
 * the small entries Ferry writes itself (configs, manifest.json).
 */
export function fileEntry(name: string, content: Buffer, mtime = 0): Buffer[] {
  const padding = paddedSize(content.length) - content.length;
  return [writeHeader({ name, type: TYPE.file, size: content.length, mtime }), content, ...(padding > 0 ? [Buffer.alloc(padding)] : [])];
}

/**
 * PAX extended header records (`"<len> key=value\n"`…). Undefined when they do not parse: a
 * reader that guessed here could see a different name than Docker does.
 */
export function parsePax(data: Buffer): Map<string, string> | undefined {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.length) {
    if (data[at] === 0) break;
    const space = data.indexOf(0x20, at);
    if (space < 0) return undefined;
    const length = Number(data.toString('latin1', at, space));
    if (!Number.isSafeInteger(length) || length <= space - at + 1 || at + length > data.length) return undefined;
    const record = data.toString('utf8', space + 1, at + length);
    if (!record.endsWith('\n')) return undefined;
    const eq = record.indexOf('=');
    if (eq <= 0) return undefined;
    records.set(record.slice(0, eq), record.slice(eq + 1, -1));
    at += length;
  }
  return records;
}

/** A NUL-terminated string field (GNU long names are such a field spanning the data). */
export function readString(buffer: Buffer, offset: number, length: number): string {
  const field = buffer.subarray(offset, offset + length);
  const end = field.indexOf(0);
  return field.toString('utf8', 0, end < 0 ? field.length : end);
}

function readNumber(block: Buffer, offset: number, length: number): number | undefined {
  const first = block[offset] ?? 0;
  if (first & 0x80) {
    // GNU base-256: big-endian, the top bit of the first byte is the marker; negatives are refused.
    if (first & 0x40) return undefined;
    let value = first & 0x3f;
    for (let i = 1; i < length; i++) value = value * 256 + (block[offset + i] ?? 0);
    return Number.isSafeInteger(value) ? value : undefined;
  }
  const text = block.toString('latin1', offset, offset + length).replace(/[\0 ]+$/, '').replace(/^ +/, '');
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) return undefined;
  const value = parseInt(text, 8);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** Like Go, accept the unsigned and the (historic) signed byte sum. */
function checksumMatches(block: Buffer, stored: number): boolean {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= 148 && i < 156 ? 0x20 : (block[i] ?? 0);
    unsigned += byte;
    signed += byte > 127 ? byte - 256 : byte;
  }
  return stored === unsigned || stored === signed;
}

function writeString(block: Buffer, offset: number, length: number, value: string): void {
  const bytes = Buffer.from(value, 'utf8');
  if (bytes.length > length) throw new RangeError(`tar field too long: ${value}`);
  bytes.copy(block, offset);
}

function writeOctal(block: Buffer, offset: number, length: number, value: number): void {
  block.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, length, 'latin1');
}

function writeBase256(block: Buffer, offset: number, length: number, value: number): void {
  let rest = value;
  for (let i = length - 1; i > 0; i--) {
    block[offset + i] = rest % 256;
    rest = Math.floor(rest / 256);
  }
  block[offset] = 0x80;
}
