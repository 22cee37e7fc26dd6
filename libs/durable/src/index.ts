import { open, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { FerryError } from '@ferry/protocol';

/**
 * fsync of a file or a directory. A byte is acknowledged, a rename or a new file is relied on,
 * only once this returned: until then it may live in the page cache alone and die with power.
 */
export async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function isDiskFull(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/**
 * A storage failure as the client sees it: a full disk is the client's to wait out (507), any other
 * failure is ours (500). A FerryError passes through unchanged.
 */
export function storageError(err: unknown, message: string): FerryError {
  if (err instanceof FerryError) return err;
  if (isDiskFull(err)) return new FerryError('FERRY_ERR_DISK_FULL', { message: `${message}: no space left on the data disk`, cause: err });
  return new FerryError('FERRY_ERR_INTERNAL', { message, cause: err });
}

/**
 * Replaces `<dir>/<id>.json` with `record` atomically and durably: a temporary file (mode 0600),
 * fsync, rename, fsync of the directory. A crash leaves the old record or the new one, never a
 * torn one (a leftover `.json.tmp` is the caller's to remove at start-up). `id` must already be
 * checked to be a plain file name.
 */
export async function writeRecordFile(dir: string, id: string, record: unknown): Promise<void> {
  await writeFileAtomic(join(dir, `${id}.json`), JSON.stringify(record));
}

/** Replaces a file atomically, mode 0600: a temp file beside it, fsync, rename, fsync of the directory. */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const temp = `${path}.tmp`;
  const handle = await open(temp, 'w', 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temp, path);
  await fsyncPath(dirname(path));
}
