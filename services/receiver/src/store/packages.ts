import { copyFile, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fsyncPath, storageError } from '@ferry/durable';
import { FerryError } from '@ferry/protocol';

/** One package held by the store. */
export interface StoredPackage {
  /** `blake3:<hex>`, the package's signed digest and its name in the store. */
  digest: string;
  path: string;
  bytes: number;
  /** When it was put (or last put again): what retention ages packages by. */
  mtime: Date;
}

const DIGEST = /^blake3:([0-9a-f]{64})$/;
const ALGORITHM = 'blake3';

/**
 * Verified packages, named by their BLAKE3 digest under `<dataDir>/packages/blake3/<hex>`.
 * Only bytes whose size and digest were checked against a signed manifest enter it, so a path
 * in the store is proof of what the file holds; loading reads from here, never from the spool.
 */
export class PackageStore {
  readonly #dir: string;

  private constructor(dir: string) {
    this.#dir = dir;
  }

  /** Opens (creating it when missing) the store of a receiver's data directory. */
  static async open(dataDir: string): Promise<PackageStore> {
    const dir = join(dataDir, 'packages', ALGORITHM);
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new FerryError('FERRY_ERR_CONFIG', { message: `FERRY_DATA_DIR: cannot create ${dir} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
    }
    return new PackageStore(dir);
  }

  /** Where a package with this digest lives (whether or not it is there). */
  path(digest: string): string {
    return join(this.#dir, hexOf(digest));
  }

  async has(digest: string): Promise<boolean> {
    return (await stat(this.path(digest)).catch(() => undefined))?.isFile() ?? false;
  }

  /**
   * Moves a verified file into the store and returns its new path. The caller vouches that the
   * file's BLAKE3 is `digest`: the store does not hash again. A file already at its store path
   * is left where it is, so handing the same package in twice is harmless.
   */
  async put(verifiedPath: string, digest: string): Promise<string> {
    const target = this.path(digest);
    if (verifiedPath === target) return target;
    try {
      await rename(verifiedPath, target);
    } catch (err) {
      // The spool and the store share FERRY_DATA_DIR, but a mount inside it would split them.
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw storageError(err, 'Could not move the package into the store');
      await this.#copyIn(verifiedPath, target);
    }
    // The rename is durable only once both directories' entries are on disk.
    await fsyncPath(this.#dir);
    await fsyncPath(dirname(verifiedPath)).catch(() => undefined);
    return target;
  }

  /** Deletes a package; one that is already gone is not an error. */
  async remove(digest: string): Promise<void> {
    await rm(this.path(digest), { force: true });
    await fsyncPath(this.#dir).catch(() => undefined);
  }

  /** Every package held, oldest first, with what retention needs to choose. */
  async list(): Promise<StoredPackage[]> {
    const names = await readdir(this.#dir);
    const found: StoredPackage[] = [];
    for (const name of names) {
      const digest = `${ALGORITHM}:${name}`;
      if (!DIGEST.test(digest)) continue;
      const info = await stat(join(this.#dir, name)).catch(() => undefined);
      if (info?.isFile()) found.push({ digest, path: join(this.#dir, name), bytes: info.size, mtime: info.mtime });
    }
    return found.sort((a, b) => a.mtime.getTime() - b.mtime.getTime());
  }

  async #copyIn(source: string, target: string): Promise<void> {
    const partial = `${target}.copy-${process.pid}`;
    try {
      await copyFile(source, partial);
      const handle = await open(partial, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(partial, target);
      await rm(source, { force: true });
    } catch (err) {
      await rm(partial, { force: true });
      throw storageError(err, 'Could not copy the package into the store');
    }
  }
}

/** The digest's hex, refusing anything else: it becomes a file name. */
function hexOf(digest: string): string {
  const hex = DIGEST.exec(digest)?.[1];
  if (hex === undefined) throw new FerryError('FERRY_ERR_INTERNAL', { message: `Not a package digest: ${digest.slice(0, 80)}` });
  return hex;
}


