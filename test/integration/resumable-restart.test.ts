/**
 * A spooled `ferry push` over the resumable upload (docs/protocol.md §10) whose deploy call is cut
 * by the receiver being SIGKILLed in the middle of the deployment: the receiver, started again on
 * the same data directory and port, still holds the whole verified upload, and the push goes on
 * from there — the session answers with every byte acknowledged, no part is sent again, and the
 * repeated deploy call runs again the deployment the stop cut short (its journal record said
 * FERRY_ERR_INTERRUPTED) instead of answering that outcome.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { PushResult } from '@ferry/sender';
import { buildLayeredImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { signed } from '../helpers/raw-http.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`rr-${run}`);
const hostId = `rr-${run}`;
const repo = `ferry-rr-${run}`;
const service = `rr-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
/** Incompressible, so that the package is about this big. */
const BASE_BYTES = 24 * 1024 ** 2;

describe('resumable push across a receiver restart in the middle of its deployment', { timeout: 600_000 }, () => {
  let receiver: ReceiverProcess;
  let port = 0;
  let imageId = '';
  const env = (extra: Record<string, string> = {}): Record<string, string> => ({
    DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_LISTEN: `127.0.0.1:${port}`, ...extra,
  });

  before(async () => {
    imageId = await buildLayeredImage(s.buildDockerHost, `${repo}:1`, randomBytes(BASE_BYTES), `rr-${run}`);
    port = await freePort();
    // It kills itself once the deployment validates its new container.
    receiver = await startReceiverProcess(env({ FERRY_TEST_CRASH_AT: 'during-validate' }));
  });

  after(async () => {
    await receiver?.stop();
    await removeService(target, service);
    await removeImages(target, [imageId]);
    await removeImages(build, [`${repo}:1`]);
  });

  test('the deploy call is repeated after the restart and the deployment runs again; no part is sent twice', async () => {
    const crashed = new Promise((resolve) => receiver.child.once('exit', resolve));
    const done = runFerry([
      'push', `${repo}:1`, '--to', `http://127.0.0.1:${port}`, '--name', service, '--network', 'host', '--compression', 'none',
      // A push retries only when asked to; the retry reopens the session where the receiver holds it.
      '--no-stream', '--resumable-threshold', '1', '--retries', '8', '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) });
    await crashed;
    const uploads = join(receiver.dataDir, 'uploads');
    assert.equal((await readdir(uploads)).filter((name) => name.endsWith('.bin')).length, 1, 'the session\'s spool outlives the kill');

    receiver = await startReceiverProcess(env({ FERRY_DATA_DIR: receiver.dataDir }));
    const answer = await done;
    assert.equal(answer.code, 0, answer.stdout + answer.stderr);
    const result = JSON.parse(answer.stdout) as PushResult;
    assert.equal(result.streamed, false);
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.equal(result.imageId, imageId);
    assert.ok(result.bytes.sent <= result.bytes.package, `sent ${result.bytes.sent} bytes of a ${result.bytes.package}-byte package`);
    const container = await target.getContainer(service).inspect();
    assert.equal(container.Image, imageId);
    assert.equal(container.State.Running, true);

    // The journal's record of the deployment id is the run that completed.
    const path = `/v1/deployments/${result.deployment.deploymentId}`;
    const record = await (await fetch(`${receiver.url}${path}`, { headers: signed(key, hostId, { path }) })).json() as { state: string };
    assert.equal(record.state, 'COMPLETED');
    // Once the deployment has an outcome the session's spool goes.
    assert.deepEqual((await readdir(uploads)).filter((name) => name.endsWith('.bin')), []);
  });
});
