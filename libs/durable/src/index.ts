import { open } from 'node:fs/promises';
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
