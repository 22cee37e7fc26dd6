import { BLOCK, TYPE, paddedSize, readHeader } from '@ferry/docker';
import { FerryError } from '@ferry/protocol';
import { malformed } from './layout.ts';
import type { ByteSource } from './source.ts';

/** One regular file of the bundle: where its data lies in the source. */
export interface Entry {
  name: string;
  offset: number;
  size: number;
}

/** A bundle's entries are few: a handful of files and a blob per layer, manifest and config. */
export const MAX_ENTRIES = 100_000;

const FILE_NAMES = /^(?:oci-layout|index\.json|ferry\/release\.json|ferry\/signature|blobs\/sha256\/[0-9a-f]{64})$/;
const DIRECTORY_NAMES = new Set(['blobs', 'blobs/sha256', 'ferry']);

/**
 * Reads every header of a bundle's tar, its data skipped, and keeps where each file lies. The file
 * is hostile until proven otherwise: only the layout's own names are accepted (so no absolute
 * path, no `..`, nothing outside it), only regular files and the layout's directories (no links,
 * devices, FIFOs, extension headers or sparse files), each name once, each entry inside the file,
 * and nothing but zeros after the end-of-archive marker.
 */
export async function scanBundle(source: ByteSource): Promise<Map<string, Entry>> {
  const entries = new Map<string, Entry>();
  const seen = new Set<string>();
  let at = 0;
  for (;;) {
    if (at + BLOCK > source.size) throw malformed(source.size === 0 ? 'the file is empty' : 'the archive ends without its end-of-archive marker');
    const block = await source.read(at, BLOCK);
    const read = readHeader(block);
    if (read.kind === 'invalid') throw malformed(read.reason);
    if (read.kind === 'end') break;
    const { header } = read;
    if (seen.size >= MAX_ENTRIES) throw unsafe(`more than ${MAX_ENTRIES} entries`, header.name);
    const name = checkedName(header.name);
    const type = header.type === TYPE.oldFile ? TYPE.file : header.type;
    if (type === TYPE.symlink || type === TYPE.hardlink) throw unsafe('a link', header.name);
    if (type === TYPE.charDevice || type === TYPE.blockDevice) throw unsafe('a device file', header.name);
    if (type === TYPE.fifo) throw unsafe('a FIFO', header.name);
    if (type !== TYPE.file && type !== TYPE.directory) throw unsafe(`an entry of type "${printable(type)}" (bundles hold files and directories only)`, header.name);
    if (seen.has(name)) throw unsafe('an entry that appears twice', header.name);
    seen.add(name);
    const offset = at + BLOCK;
    if (offset + paddedSize(header.size) > source.size) throw malformed(`${printable(name)} runs past the end of the file`);
    if (type === TYPE.directory) {
      if (!DIRECTORY_NAMES.has(name)) throw unsafe('a directory outside the bundle layout', header.name);
      if (header.size !== 0) throw unsafe('a directory that carries data', header.name);
    } else {
      if (!FILE_NAMES.test(name)) throw unsafe('an entry outside the bundle layout', header.name);
      entries.set(name, { name, offset, size: header.size });
    }
    at = offset + paddedSize(header.size);
  }
  await zerosFrom(source, at);
  return entries;
}

/** The archive-relative name, refusing anything that could land outside a directory it is unpacked into. */
function checkedName(raw: string): string {
  if (raw.includes('\0') || raw.includes('\\')) throw unsafe('a name with a NUL or a backslash', raw);
  if (raw.startsWith('/')) throw unsafe('an absolute path', raw);
  const parts = raw.split('/');
  if (parts.includes('..')) throw unsafe('a ".." path component', raw);
  return parts.filter((part) => part !== '.' && part !== '').join('/');
}

/** Tar pads to its record size with zeros; anything else hidden after the end is refused. */
async function zerosFrom(source: ByteSource, from: number): Promise<void> {
  const step = 1024 * 1024;
  for (let at = from; at < source.size; at += step) {
    const chunk = await source.read(at, Math.min(step, source.size - at));
    if (!chunk.every((byte) => byte === 0)) throw malformed('data follows the end-of-archive marker');
  }
}

function printable(value: string): string {
  return value.slice(0, 200).replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function unsafe(what: string, entry: string): FerryError {
  const shown = printable(entry);
  return new FerryError('FERRY_ERR_UNSAFE_ARCHIVE', { message: `The bundle holds ${what}: ${shown}`, details: { entry: shown, reason: what } });
}
