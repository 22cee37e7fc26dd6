import assert from 'node:assert/strict';
import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { test } from 'node:test';
import { setImmediate as turn } from 'node:timers/promises';
import { SpoolWriter } from '../../services/receiver/src/upload/spool-writer.ts';

test('a part lands in the spool at its offset', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-spool-'));
  try {
    const path = join(dir, 'spool.bin');
    const handle = await open(path, 'w+');
    await handle.write(Buffer.from('head-'));
    const writer = new SpoolWriter(handle, 5);
    await pipeline(Readable.from([Buffer.from('one-'), Buffer.from('two-'), Buffer.from('three')]), writer);
    await handle.close();
    assert.equal(await readFile(path, 'utf8'), 'head-one-two-three');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('short writes are completed from where they stopped', async () => {
  const file = Buffer.alloc(32, '.');
  // A handle that takes at most 3 bytes per call, as a nearly full disk may.
  const handle = {
    writev: async (buffers: Buffer[], position: number) => {
      await turn();
      const bytes = Buffer.concat(buffers).subarray(0, 3);
      bytes.copy(file, position);
      return { bytesWritten: bytes.length, buffers };
    },
  } as unknown as FileHandle;
  const writer = new SpoolWriter(handle, 2);
  await pipeline(Readable.from([Buffer.from('abcdefg'), Buffer.from('hij')]), writer);
  assert.equal(file.toString('latin1', 0, 14), '..abcdefghij..');
});

test('a failed write is reported, not thrown, and the rest of the part is read and dropped', async () => {
  const writes: number[] = [];
  const handle = {
    writev: async (buffers: Buffer[], position: number) => {
      await turn();
      writes.push(position);
      if (writes.length === 2) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
      return { bytesWritten: buffers.reduce((n, b) => n + b.length, 0), buffers };
    },
  } as unknown as FileHandle;
  const writer = new SpoolWriter(handle, 0);
  let read = 0;
  // A turn of the event loop between chunks, as between socket reads: each chunk is its own write.
  const source = Readable.from((async function* chunks() {
    for (let i = 0; i < 5; i += 1) {
      await turn();
      read += 1;
      yield Buffer.alloc(4);
    }
  })());
  const written = pipeline(source, writer);
  const failure = await writer.failed;
  assert.equal((failure as NodeJS.ErrnoException).code, 'ENOSPC');
  await written;
  assert.equal(read, 5, 'the whole part was read');
  assert.deepEqual(writes, [0, 4], 'nothing was written after the failure');
  assert.equal(source.errored, null, 'the source ended; no error destroyed it');
});
