import { statfs } from 'node:fs/promises';
import { FerryError } from '@ferry/protocol';

/** What FERRY_MIN_FREE_BYTES defaults to. */
export const DEFAULT_MIN_FREE_BYTES = 1024 ** 3;

export interface DiskGuard {
  /** The directory whose file system is watched: the receiver's data directory. */
  dir: string;
  minFreeBytes: number;
}

/**
 * Refuses work when the data directory's file system is short of space: it must keep
 * `minFreeBytes` free, and a package about to be loaded needs twice its size on top of that
 * floor's share (the load unpacks it, usually onto the same disk). Answering 507 up front beats a
 * load or a journal write failing half-way.
 */
export async function assertFreeSpace(guard: DiskGuard, packageBytes = 0): Promise<void> {
  const stats = await statfs(guard.dir);
  const free = stats.bavail * stats.bsize;
  const required = Math.max(guard.minFreeBytes, 2 * packageBytes);
  if (free < required) {
    throw new FerryError('FERRY_ERR_DISK_FULL', {
      message: `Only ${free} bytes are free on the receiver's data disk; ${required} are required`,
      details: { freeBytes: free, requiredBytes: required },
    });
  }
}

/** True when the data directory's file system has less than its reserve free. */
export async function lowOnSpace(guard: DiskGuard): Promise<boolean> {
  const stats = await statfs(guard.dir);
  return stats.bavail * stats.bsize < guard.minFreeBytes;
}
