import { open, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fsyncPath } from '@ferry/durable';

/** Replaces a file atomically (temp, fsync, rename, fsync of the directory), mode 0600. */
export async function writeTextFile(path: string, text: string): Promise<void> {
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
