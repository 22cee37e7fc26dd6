/**
 * One process at a time on a receiver's data directory: a running receiver's lock socket makes
 * `ferry bundle apply` (and a second receiver) on the same directory fail at once with
 * FERRY_ERR_DATA_DIR_LOCKED, before the bundle is read; a stopped receiver lets it go; a lock left
 * by a killed receiver, or a file planted in its place, is taken over; a directory planted there is
 * a typed configuration error.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runFerry, startReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`lock-${run}`);

describe('the data directory lock', { timeout: 120_000 }, () => {
  let dir: string;
  let trust: string;
  const env = (dataDir: string): Record<string, string> => ({ DOCKER_HOST: s.targetDockerHost, FERRY_DATA_DIR: dataDir, FERRY_TRUST_FILE: trust, FERRY_HOST_ID: `lock-${run}` });
  /** Not a bundle: whatever gets past the lock fails on it, with its own code. */
  let notABundle: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-lock-'));
    trust = trustFile([key]);
    notABundle = join(dir, 'not-a-bundle.ferry');
    await writeFile(notABundle, 'not a bundle');
  });
  after(async () => { if (dir) await rm(dir, { recursive: true, force: true }); });

  test('apply beside a running receiver fails at once, naming the directory; after it stops, apply gets past the lock', async () => {
    const dataDir = join(dir, 'a');
    const receiver = await startReceiverProcess(env(dataDir));
    try {
      assert.ok((await stat(join(dataDir, 'ferry.lock'))).isSocket());
      const refused = await runFerry(['bundle', 'apply', notABundle], env(dataDir));
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /FERRY_ERR_DATA_DIR_LOCKED/);
      assert.ok(refused.stderr.includes(dataDir), refused.stderr);
      // Refused before the bundle was read: the file's own fault is not what it says.
      assert.doesNotMatch(refused.stderr, /FERRY_ERR_BUNDLE_MALFORMED/);
      // A second receiver on the directory does not start either.
      await assert.rejects(startReceiverProcess(env(dataDir)), /FERRY_ERR_DATA_DIR_LOCKED/);
      // Another data directory is not held.
      const elsewhere = await runFerry(['bundle', 'apply', notABundle], env(join(dir, 'apply-own')));
      assert.match(elsewhere.stderr, /FERRY_ERR_BUNDLE_MALFORMED/);
    } finally {
      await receiver.stop();
    }
    const after = await runFerry(['bundle', 'apply', notABundle], env(dataDir));
    assert.equal(after.code, 1);
    assert.match(after.stderr, /FERRY_ERR_BUNDLE_MALFORMED/);
    assert.doesNotMatch(after.stderr, /FERRY_ERR_DATA_DIR_LOCKED/);
  });

  test('a killed receiver\'s lock is taken over, by apply and by the next receiver', async () => {
    const dataDir = join(dir, 'b');
    const receiver = await startReceiverProcess(env(dataDir));
    const exited = new Promise((resolve) => receiver.child.once('exit', resolve));
    receiver.child.kill('SIGKILL');
    await exited;
    assert.ok((await stat(join(dataDir, 'ferry.lock'))).isSocket(), 'the killed receiver left its socket');
    const applied = await runFerry(['bundle', 'apply', notABundle], env(dataDir));
    assert.match(applied.stderr, /FERRY_ERR_BUNDLE_MALFORMED/);
    const next = await startReceiverProcess(env(dataDir));
    await next.stop();
  });

  test('a file planted at the lock is replaced; a directory there is a configuration error', async () => {
    const planted = join(dir, 'c');
    await mkdir(planted, { recursive: true, mode: 0o700 });
    await writeFile(join(planted, 'ferry.lock'), 'x');
    const receiver = await startReceiverProcess(env(planted));
    await receiver.stop();
    const blocked = join(dir, 'd');
    await mkdir(join(blocked, 'ferry.lock', 'inside'), { recursive: true, mode: 0o700 });
    const refused = await runFerry(['bundle', 'apply', notABundle], env(blocked));
    // A configuration error: exit 2.
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /FERRY_ERR_CONFIG/);
    assert.match(refused.stderr, /ferry\.lock/);
  });
});
