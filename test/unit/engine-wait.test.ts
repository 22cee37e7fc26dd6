/** A starting receiver's wait for its Docker engine, with the time faked: no test waits for real. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isFerryError } from '@ferry/protocol';
import { ENGINE_START_WAIT_MS, waitForEngine } from '../../services/receiver/src/readiness.ts';

function fakeTime(): { now: () => number; sleep: (ms: number) => Promise<void>; slept: number[] } {
  let t = 1_000_000;
  const slept: number[] = [];
  return { now: () => t, sleep: (ms) => { slept.push(ms); t += ms; return Promise.resolve(); }, slept };
}

const refused = (): Promise<never> => Promise.reject(Object.assign(new Error('connect ENOENT /nonexistent.sock'), { code: 'ENOENT' }));

describe('waitForEngine', () => {
  test('an engine that answers at once: no wait', async () => {
    const time = fakeTime();
    await waitForEngine(() => Promise.resolve('OK'), { dockerHost: 'unix:///run/docker.sock', ...time });
    assert.deepEqual(time.slept, []);
  });

  test('an engine that comes up while the receiver starts: pinged again until it answers', async () => {
    const time = fakeTime();
    let calls = 0;
    const told: string[] = [];
    await waitForEngine(() => (++calls < 5 ? refused() : Promise.resolve('OK')), { dockerHost: 'unix:///run/docker.sock', ...time, onWaiting: (cause) => told.push(cause) });
    assert.equal(calls, 5);
    assert.equal(time.slept.length, 4);
    assert.deepEqual(told, ['ENOENT'], 'the wait is told once');
  });

  test('no engine within the wait: FERRY_ERR_DOCKER_UNAVAILABLE naming DOCKER_HOST and the cause', async () => {
    const time = fakeTime();
    const started = time.now();
    let calls = 0;
    const err = await waitForEngine(() => { calls += 1; return refused(); }, { dockerHost: 'unix:///nonexistent.sock', ...time }).then(() => undefined, (e: unknown) => e);
    assert.ok(isFerryError(err, 'FERRY_ERR_DOCKER_UNAVAILABLE'), String(err));
    assert.match(err.message, /^The Docker engine at DOCKER_HOST=unix:\/\/\/nonexistent\.sock cannot be reached \(ENOENT; tried for 10 s\)/);
    assert.deepEqual(err.details, { dockerHost: 'unix:///nonexistent.sock', cause: 'ENOENT' });
    assert.ok(time.now() - started <= ENGINE_START_WAIT_MS, 'gives up within the wait');
    assert.ok(calls > 10, `kept asking (${calls} pings)`);
  });

  test('without DOCKER_HOST the message names the default socket', async () => {
    const err = await waitForEngine(refused, { dockerHost: undefined, waitMs: 0, ...fakeTime() }).then(() => undefined, (e: unknown) => e);
    assert.ok(isFerryError(err, 'FERRY_ERR_DOCKER_UNAVAILABLE'));
    assert.match(err.message, /DOCKER_HOST=unix:\/\/\/var\/run\/docker\.sock \(the default\) cannot be reached \(ENOENT/);
  });
});
