import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setImmediate as turn } from 'node:timers/promises';
import { scavenge } from '@ferry/sender';

const MiB = 1024 * 1024;

test('a scavenge frees the buffers that died since the last one', async () => {
  const before = process.memoryUsage().arrayBuffers;
  assert.equal(allocateAndDrop(512, 64 * 1024), 32 * MiB);
  assert.ok(process.memoryUsage().arrayBuffers >= before + 30 * MiB, 'the dead buffers still count');
  assert.equal(scavenge(), true, 'gc is exposed at run time');
  // V8 may finish freeing on another thread: a few turns of the event loop. Without the scavenge
  // the buffers stay until the loop's own allocations fill the young generation (~85 turns here).
  let turns = 0;
  while (process.memoryUsage().arrayBuffers > before + 8 * MiB && turns < 10) {
    turns += 1;
    await turn();
  }
  assert.ok(process.memoryUsage().arrayBuffers < before + 8 * MiB, 'the scavenge freed them');
});

/** Buffers that die as this returns, as a push's socket reads do; answers their bytes. */
function allocateAndDrop(count: number, size: number): number {
  return Array.from({ length: count }, () => Buffer.allocUnsafe(size)).reduce((sum, buffer) => sum + buffer.length, 0);
}
