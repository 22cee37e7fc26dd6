import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { openBundle } from '@ferry/bundle';
import { FerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';

/** Bundles are stored under names a path, a NATS subject and a shell all take as they are. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const DEFAULT_BUCKET = 'ferry-bundles';

function storeSettings(io: Io, bucket: string | undefined): { url: string; bucket: string } {
  const url = io.env.FERRY_BUNDLE_STORE_URL ?? io.env.FERRY_NATS_URL;
  if (!url) throw new FerryError('FERRY_ERR_USAGE', { message: 'the bundle store is a NATS JetStream object store: set FERRY_BUNDLE_STORE_URL (or FERRY_NATS_URL)' });
  const name = bucket ?? io.env.FERRY_BUNDLE_BUCKET ?? DEFAULT_BUCKET;
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) throw new FerryError('FERRY_ERR_USAGE', { message: `--bucket ${name}: letters, digits, "-" and "_"` });
  return { url, bucket: name };
}

function checkName(name: string | undefined): string {
  if (name === undefined || !NAME.test(name)) throw new FerryError('FERRY_ERR_USAGE', { message: `bundle name ${name ?? ''}: letters, digits, ".", "_" and "-", at most 128, not starting with "." or "-"` });
  return name;
}

/** `ferry bundle store FILE [--as NAME]`: a verified bundle put in the store (never one that does not verify). */
export async function storeCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { as: { type: 'string' }, bucket: { type: 'string' }, json: { type: 'boolean' } }, 1);
  const path = positionals[0];
  if (path === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry bundle store FILE [--as NAME]' });
  const bundle = await openBundle([path]);
  const releaseId = bundle.document.release.id;
  await bundle.close();
  const name = checkName(values.as ?? basename(path));
  const { url, bucket } = storeSettings(io, values.bucket);
  const { openObjectStore } = await import('@ferry/events');
  const handle = await openObjectStore(url, bucket, 'ferry-bundle-store');
  try {
    const data = Readable.toWeb(createReadStream(path)) as unknown as ReadableStream<Uint8Array>;
    const info = await handle.store.put({ name, description: `ferry bundle, release ${releaseId}` }, data);
    if (values.json) line(io.stdout, JSON.stringify({ bucket, name, size: info.size, digest: info.digest, releaseId }));
    else line(io.stdout, `stored ${name} in ${bucket} (${info.size} bytes, ${info.digest}), release ${releaseId}`);
    return 0;
  } finally {
    await handle.close();
  }
}

/** `ferry bundle stored`: what the store holds. */
export async function storedCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { bucket: { type: 'string' }, json: { type: 'boolean' } }, 0);
  const { url, bucket } = storeSettings(io, values.bucket);
  const { openObjectStore } = await import('@ferry/events');
  const handle = await openObjectStore(url, bucket, 'ferry-bundle-store');
  try {
    const list = (await handle.store.list()).filter((o) => !o.deleted).sort((a, b) => a.name.localeCompare(b.name));
    if (values.json) line(io.stdout, JSON.stringify(list.map((o) => ({ name: o.name, size: o.size, digest: o.digest, mtime: o.mtime, description: o.description ?? null }))));
    else for (const o of list) line(io.stdout, `${o.name}  ${o.size}  ${o.mtime}  ${o.description ?? ''}`);
    return 0;
  } finally {
    await handle.close();
  }
}

/**
 * `ferry bundle fetch NAME -o FILE`: read back beside FILE, checked by NATS's own SHA-256 of the
 * object and then verified as a bundle; renamed to FILE only when both hold, so a tampered object
 * leaves nothing behind.
 */
export async function fetchCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { out: { type: 'string', short: 'o' }, bucket: { type: 'string' } }, 1);
  const name = checkName(positionals[0]);
  const out = resolve(values.out ?? name);
  const { url, bucket } = storeSettings(io, values.bucket);
  const { openObjectStore } = await import('@ferry/events');
  const handle = await openObjectStore(url, bucket, 'ferry-bundle-store');
  const temp = join(dirname(out), `.${basename(out)}.${process.pid}.part`);
  try {
    const result = await handle.store.get(name);
    if (!result) throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `No bundle ${name} in ${bucket}` });
    await pipeline(Readable.fromWeb(result.data), createWriteStream(temp, { mode: 0o600 }));
    const failed = await result.error;
    if (failed) throw new FerryError('FERRY_ERR_BUNDLE_DIGEST', { message: `${name} in ${bucket} does not match the digest the store recorded: ${failed.message}`, details: { entry: name } });
    const bundle = await openBundle([temp]);
    const releaseId = bundle.document.release.id;
    await bundle.close();
    await rename(temp, out);
    line(io.stdout, `${out}: ${name} from ${bucket}, release ${releaseId}, verified`);
    return 0;
  } finally {
    await rm(temp, { force: true });
    await handle.close();
  }
}
