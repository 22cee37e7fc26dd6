import { createReadStream, createWriteStream } from 'node:fs';
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { FerryError } from '@ferry/protocol';
import { Sha256Tap } from './hash.ts';
import { SHA256, digestMismatch, malformed, parseEntry } from './layout.ts';

export const PARTS_SCHEMA = 'ferry.bundle.parts/v1';
const PART_NAME = /^(.+)\.part-(\d{3,6})$/;

/**
 * `<bundle>.parts`, written beside the parts: each part's name, size and SHA-256, and the whole
 * file's, so a damaged or missing part is named before anything is read from the others.
 */
const PartsSchema = z.strictObject({
  schema: z.literal(PARTS_SCHEMA),
  bundle: z.string().max(255),
  size: z.int().min(0),
  digest: z.string().regex(SHA256),
  parts: z.array(z.strictObject({ name: z.string().max(255), size: z.int().min(1), digest: z.string().regex(SHA256) })).min(1).max(100_000),
});
export type PartsList = z.infer<typeof PartsSchema>;

/** `app.ferry.part-000`, … and `app.ferry.parts`, beside the bundle; answers the list. */
export async function splitBundle(path: string, partBytes: number): Promise<{ list: PartsList; listPath: string; paths: string[] }> {
  if (!Number.isSafeInteger(partBytes) || partBytes < 1024 * 1024) throw new FerryError('FERRY_ERR_USAGE', { message: '--size: at least 1m' });
  const { size } = await stat(path);
  const count = Math.max(1, Math.ceil(size / partBytes));
  const width = Math.max(3, String(count - 1).length);
  const parts: PartsList['parts'] = [];
  const paths: string[] = [];
  for (let i = 0; i < count; i++) {
    const name = `${basename(path)}.part-${String(i).padStart(width, '0')}`;
    const out = join(dirname(path), name);
    const tap = new Sha256Tap();
    const start = i * partBytes;
    const end = Math.min(size, start + partBytes) - 1;
    await pipeline(createReadStream(path, { start, end, highWaterMark: 1024 * 1024 }), tap, createWriteStream(out, { mode: 0o644 }));
    parts.push({ name, size: tap.bytes, digest: tap.digest() });
    paths.push(out);
  }
  const list: PartsList = { schema: PARTS_SCHEMA, bundle: basename(path), size, digest: await digestOf([path]), parts };
  const listPath = `${path}.parts`;
  await writeFile(listPath, `${JSON.stringify(list, null, 2)}\n`, { mode: 0o644 });
  return { list, listPath, paths };
}

/** A path that names a part: the bundle it belongs to. */
export function partOf(path: string): string | undefined {
  return PART_NAME.exec(path)?.[1];
}

/**
 * The parts of a split bundle, in order, once each one's size and SHA-256 are the ones its list
 * gives (FERRY_ERR_BUNDLE_DIGEST naming the part otherwise). `path` is any part or the bundle's
 * own name; the list `<bundle>.parts` is found beside it.
 */
export async function checkedParts(path: string): Promise<{ list: PartsList; paths: string[] }> {
  const bundle = partOf(path) ?? path;
  let text: Buffer;
  try {
    text = await readFile(`${bundle}.parts`);
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `${bundle}.parts: cannot read the list of parts (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
  }
  if (text.length > 16 * 1024 * 1024) throw malformed(`${bundle}.parts is too large`);
  const list = parseEntry(PartsSchema, text, `${basename(bundle)}.parts`);
  const paths: string[] = [];
  for (const part of list.parts) {
    // Names in the list are file names beside it, never paths: it may come from anywhere.
    if (basename(part.name) !== part.name || partOf(part.name) !== list.bundle) throw malformed(`${part.name}: not a part of ${list.bundle}`);
    const partPath = join(dirname(bundle), part.name);
    let size: number;
    try {
      size = (await stat(partPath)).size;
    } catch {
      throw new FerryError('FERRY_ERR_BUNDLE_DIGEST', { message: `The part ${part.name} is missing`, details: { part: part.name } });
    }
    if (size !== part.size || (await digestOf([partPath])) !== part.digest) throw digestMismatch(`The part ${part.name}`, { part: part.name });
    paths.push(partPath);
  }
  if (list.parts.reduce((n, p) => n + p.size, 0) !== list.size) throw malformed(`${list.bundle}.parts: the parts do not add up to the bundle's size`);
  return { list, paths };
}

/** Joins checked parts into `out` (default: the bundle's name beside them); the whole file's digest is checked too. */
export async function joinBundle(path: string, out?: string): Promise<{ path: string; size: number }> {
  const { list, paths } = await checkedParts(path);
  const target = out ?? join(dirname(partOf(path) ?? path), list.bundle);
  const partial = `${target}.joining`;
  const tap = new Sha256Tap();
  const file = createWriteStream(partial, { flags: 'wx', mode: 0o644 });
  try {
    await pipeline(async function* () {
      for (const p of paths) yield* createReadStream(p, { highWaterMark: 1024 * 1024 });
    }, tap, file);
    if (tap.digest() !== list.digest) throw digestMismatch(`The joined bundle ${list.bundle}`);
    await rename(partial, target);
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  }
  return { path: target, size: tap.bytes };
}

async function digestOf(paths: string[]): Promise<string> {
  const tap = new Sha256Tap();
  await pipeline(async function* () {
    for (const p of paths) yield* createReadStream(p, { highWaterMark: 1024 * 1024 });
  }, tap, new Writable({ write: (_c, _e, done) => done() }));
  return tap.digest();
}
