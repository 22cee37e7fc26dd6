import { open, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncPath } from '@ferry/durable';

/**
 * Replaces `<dir>/<id>.json` with `record` atomically and durably: a temporary file, fsync,
 * rename, fsync of the directory. A crash leaves the old record or the new one, never a torn one
 * (a leftover `.json.tmp` is the caller's to remove at start-up).
 */
export async function writeRecordFile(dir: string, id: string, record: unknown): Promise<void> {
  const path = join(dir, `${id}.json`);
  const temp = `${path}.tmp`;
  const handle = await open(temp, 'w', 0o600);
  try {
    await handle.writeFile(JSON.stringify(record));
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temp, path);
  await fsyncPath(dir);
}
