/**
 * The backoff schedule of stubborn delivery, on a fake clock: no test waits or rolls dice; and it
 * is the sender's only one.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { FerryError } from '@ferry/protocol';
import { DEFAULT_BACKOFF, backoffDelay, isRetryable, retry, type Clock } from '@ferry/sender';

function fakeClock(random: number): Clock & { slept: number[] } {
  const slept: number[] = [];
  return { slept, sleep: (ms) => { slept.push(ms); return Promise.resolve(); }, random: () => random };
}

const down = (): FerryError => new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE');

describe('retry with exponential backoff and full jitter', () => {
  test('the ceiling doubles from 500 ms and stops at 30 s; the pause is a uniform pick below it', () => {
    const ceilings = [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => backoffDelay(n, DEFAULT_BACKOFF, () => 0.999999));
    assert.deepEqual(ceilings, [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
    assert.equal(backoffDelay(4, DEFAULT_BACKOFF, () => 0), 0);
    assert.equal(backoffDelay(3, DEFAULT_BACKOFF, () => 0.5), 1000);
  });

  test('a receiver that stays down gets exactly `attempts` tries with the schedule between them', async () => {
    const clock = fakeClock(0.5);
    let calls = 0;
    await assert.rejects(retry(() => { calls += 1; return Promise.reject(down()); }, { policy: DEFAULT_BACKOFF, clock }), { code: 'FERRY_ERR_RECEIVER_UNREACHABLE' });
    assert.equal(calls, 8);
    assert.deepEqual(clock.slept, [250, 500, 1000, 2000, 4000, 8000, 15000]);
  });

  test('a receiver that comes back is used at once', async () => {
    const clock = fakeClock(0.25);
    let calls = 0;
    const value = await retry((n) => { calls += 1; return n < 3 ? Promise.reject(new FerryError('FERRY_ERR_REPLAY')) : Promise.resolve('deployed'); }, { policy: DEFAULT_BACKOFF, clock });
    assert.equal(value, 'deployed');
    assert.equal(calls, 3);
    assert.deepEqual(clock.slept, [125, 250]);
  });

  test('a 4xx verdict, an open breaker and a recorded deployment failure are not retried', async () => {
    for (const err of [
      new FerryError('FERRY_ERR_BAD_SIGNATURE'),
      new FerryError('FERRY_ERR_RECEIVER_CIRCUIT_OPEN'),
      new FerryError('FERRY_ERR_INTERNAL', { details: { deployment: { state: 'FAILED' } } }),
      new Error('not a FerryError'),
    ]) {
      const clock = fakeClock(0.5);
      let calls = 0;
      await assert.rejects(retry(() => { calls += 1; return Promise.reject(err); }, { policy: DEFAULT_BACKOFF, clock }));
      assert.equal(calls, 1, String(err));
      assert.deepEqual(clock.slept, []);
    }
    assert.equal(isRetryable(new FerryError('FERRY_ERR_REPLAY')), true);
    assert.equal(isRetryable(new FerryError('FERRY_ERR_INTERNAL')), true);
  });
});

describe('one backoff', () => {
  test('no module of the sender or the CLI but retry.ts computes a retry\'s pause or waits one out', () => {
    const root = new URL('../../', import.meta.url).pathname;
    const files: string[] = [];
    const walk = (dir: string): void => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) walk(path);
        else if (entry.name.endsWith('.ts')) files.push(path);
      }
    };
    for (const dir of ['services/sender/src', 'apps/cli/src']) walk(join(root, dir));
    assert.ok(files.length > 10);
    // A pause of the schedule (backoffDelay), a wait on the injected clock, or a doubling of its own.
    const backoff = /\bbackoffDelay\(|\bclock\.sleep\(|\*\s*2\s*\*\*\s*\(?\s*\w*(?:attempt|retr|failure)/i;
    const offenders = files.filter((file) => !file.endsWith('services/sender/src/retry.ts')).flatMap((file) => readFileSync(file, 'utf8').split('\n')
      .map((line, i) => [`${file.slice(root.length)}:${i + 1}`, line] as const)
      .filter(([, line]) => backoff.test(line) && !/^\s*(?:\/\/|\*)/.test(line)));
    assert.deepEqual(offenders, []);
  });
});
