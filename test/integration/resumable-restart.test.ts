/**
 * A spooled `ferry push` to one target over the resumable upload (docs/protocol.md §10), without
 * `--retries`, whose receiver is SIGKILLed and started again on the same data directory and port:
 * the call the kill cut short is sent again within the target's one attempt and the push deploys.
 * Killed in the middle of a part, the upload goes on from the offset the receiver held. Killed in
 * the middle of the deployment, the receiver still holds the whole verified upload: the session
 * answers with every byte acknowledged, no part is sent again, and the repeated deploy call runs
 * again the deployment the stop cut short (its journal record said FERRY_ERR_INTERRUPTED) instead
 * of answering that outcome.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { PushResult } from '@ferry/sender';
import { buildLayeredImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { stallingProxy } from '../helpers/proxy.ts';
import { signed } from '../helpers/raw-http.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`rr-${run}`);
const hostId = `rr-${run}`;
const repo = `ferry-rr-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
/** Incompressible, so that the package is about this big. */
const BASE_BYTES = 24 * 1024 ** 2;

describe('resumable push to one target across a receiver restart, without --retries', { timeout: 600_000 }, () => {
  let receiver: ReceiverProcess | undefined;
  let port = 0;
  /** One image per test, so that neither finds its layers on the target already. */
  const images = new Map<string, string>();
  const services: string[] = [];
  const env = (extra: Record<string, string> = {}): Record<string, string> => ({
    DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_LISTEN: `127.0.0.1:${port}`,
    ...(receiver ? { FERRY_DATA_DIR: receiver.dataDir } : {}), ...extra,
  });

  /** Starts the receiver again on its data dir and port, once the one before has exited. */
  const restart = async (extra: Record<string, string> = {}): Promise<ReceiverProcess> => {
    const child = receiver?.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    }
    receiver = await startReceiverProcess(env(extra));
    return receiver;
  };

  /** `ferry push` of an image as a spooled resumable upload, with no --retries: one attempt. */
  const push = (variant: string, to: string): { service: string; done: Promise<RunResult> } => {
    const service = `rr-${run}-${services.length}`;
    services.push(service);
    const done = runFerry([
      'push', `${repo}:${variant}`, '--to', to, '--name', service, '--network', 'host', '--compression', 'none',
      '--no-stream', '--resumable-threshold', '1', '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) });
    return { service, done };
  };

  const assertDeployed = async (answer: RunResult, variant: string, service: string): Promise<PushResult> => {
    const imageId = images.get(variant);
    assert.equal(answer.code, 0, answer.stdout + answer.stderr);
    const result = JSON.parse(answer.stdout) as PushResult;
    assert.equal(result.streamed, false);
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.equal(result.imageId, imageId);
    // The cut call was sent again inside the one attempt: no retry of the whole target.
    assert.deepEqual(result.path, ['spool', 'done']);
    const container = await target.getContainer(service).inspect();
    assert.equal(container.Image, imageId);
    assert.equal(container.State.Running, true);
    return result;
  };

  before(async () => {
    for (const variant of ['part', 'deploy']) {
      images.set(variant, await buildLayeredImage(s.buildDockerHost, `${repo}:${variant}`, randomBytes(BASE_BYTES), `${variant}-${run}`));
    }
    port = await freePort();
  });

  after(async () => {
    await receiver?.stop();
    if (receiver) await rm(receiver.dataDir, { recursive: true, force: true });
    for (const service of services) await removeService(target, service);
    await removeImages(target, [...images.values()]);
    await removeImages(build, [...images.keys()].map((variant) => `${repo}:${variant}`));
  });

  test('killed in the middle of a part: the upload goes on from the offset the receiver held and deploys', async () => {
    const first = await restart();
    // Its first 4 MiB pass; the rest of the part stalls on the way, and the receiver is killed then.
    const proxy = await stallingProxy(first.url, 4 * 1024 ** 2);
    try {
      const { service, done } = push('part', proxy.url);
      await proxy.held;
      await restart();
      const result = await assertDeployed(await done, 'part', service);
      assert.ok(result.bytes.sent >= result.bytes.package, `sent ${result.bytes.sent} bytes of a ${result.bytes.package}-byte package`);
    } finally {
      await proxy.close();
    }
  });

  test('killed in the middle of the deployment: the deploy call is repeated after the restart and the deployment runs again; no part is sent twice', async () => {
    // It kills itself once the deployment validates its new container.
    const crashing = await restart({ FERRY_TEST_CRASH_AT: 'during-validate' });
    const crashed = new Promise((resolve) => crashing.child.once('exit', resolve));
    const { service, done } = push('deploy', crashing.url);
    await crashed;
    const uploads = join(crashing.dataDir, 'uploads');
    assert.equal((await readdir(uploads)).filter((name) => name.endsWith('.bin')).length, 1, 'the session\'s spool outlives the kill');

    const restarted = await restart();
    const result = await assertDeployed(await done, 'deploy', service);
    assert.ok(result.bytes.sent <= result.bytes.package, `sent ${result.bytes.sent} bytes of a ${result.bytes.package}-byte package`);

    // The journal's record of the deployment id is the run that completed.
    const path = `/v1/deployments/${result.deployment.deploymentId}`;
    const record = await (await fetch(`${restarted.url}${path}`, { headers: signed(key, hostId, { path }) })).json() as { state: string };
    assert.equal(record.state, 'COMPLETED');
    // Once the deployment has an outcome the session's spool goes.
    assert.deepEqual((await readdir(uploads)).filter((name) => name.endsWith('.bin')), []);
  });
});
