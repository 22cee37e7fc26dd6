/**
 * A streamed `ferry push` (docs/protocol.md §10.6) outlives a receiver SIGKILLed and restarted on
 * the same data directory and port: the receiver carries the stream over from its spool, the
 * sender asks where it stands and goes on from there. Killed half-way through the parts, or while
 * it serves the seal (in the middle of the deployment), the push completes with the signed image
 * on the stack's target engine, and well under 1.2× the package's bytes were sent in all.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import type { PushResult } from '@ferry/sender';
import { buildLayeredImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`sr-${run}`);
const hostId = `sr-${run}`;
const repo = `ferry-sr-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
/** Incompressible, so the package is about this big and takes a while on loopback. */
const BASE_BYTES = 96 * 1024 ** 2;

/** Polls `check` until it answers something; no timing is asserted, the suite's timeout bounds it. */
async function until<T>(check: () => Promise<T | undefined>): Promise<T> {
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function filesIn(dir: string, suffix: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).filter((name) => name.endsWith(suffix)).map((name) => join(dir, name));
}

describe('streamed push across a receiver restart', { timeout: 600_000 }, () => {
  let receiver: ReceiverProcess;
  let port = 0;
  const images = new Map<string, string>();
  const services: string[] = [];
  const env = (extra: Record<string, string> = {}): Record<string, string> => ({
    DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_LISTEN: `127.0.0.1:${port}`,
    ...(receiver ? { FERRY_DATA_DIR: receiver.dataDir } : {}), ...extra,
  });

  /** SIGKILLs the receiver (unless it already died) and starts it again on its data dir and port. */
  const restart = async (extra: Record<string, string> = {}): Promise<void> => {
    const { child } = receiver;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    }
    const dataDir = receiver.dataDir;
    receiver = await startReceiverProcess({ ...env(extra), FERRY_DATA_DIR: dataDir });
  };

  const push = (variant: string): { service: string; done: Promise<RunResult> } => {
    const service = `sr-${run}-${services.length}`;
    services.push(service);
    const done = runFerry(['push', `${repo}:${variant}`, '--to', `http://127.0.0.1:${port}`, '--name', service, '--network', 'host', '--compression', 'none', '--json'], senderEnv);
    return { service, done };
  };

  const assertDeployed = async (t: TestContext, answer: RunResult, variant: string, service: string): Promise<PushResult> => {
    assert.equal(answer.code, 0, answer.stdout + answer.stderr);
    const result = JSON.parse(answer.stdout) as PushResult;
    const imageId = images.get(variant);
    assert.equal(result.streamed, true);
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.equal(result.imageId, imageId);
    t.diagnostic(`sent ${result.bytes.sent} bytes of a ${result.bytes.package}-byte package (${(result.bytes.sent / result.bytes.package).toFixed(3)}×)`);
    assert.ok(result.bytes.sent <= 1.2 * result.bytes.package, `sent ${result.bytes.sent} bytes of a ${result.bytes.package}-byte package`);
    assert.equal((await target.getImage(imageId ?? '').inspect()).Id, imageId);
    const container = await target.getContainer(service).inspect();
    assert.equal(container.Image, imageId);
    assert.equal(container.State.Running, true);
    return result;
  };

  before(async () => {
    for (const variant of ['half', 'seal']) {
      images.set(variant, await buildLayeredImage(s.buildDockerHost, `${repo}:${variant}`, randomBytes(BASE_BYTES), `${variant}-${run}`));
    }
    port = await freePort();
    receiver = await startReceiverProcess(env());
  });

  after(async () => {
    await receiver?.stop();
    for (const service of services) await removeService(target, service);
    const ids = [...images.values()];
    await removeImages(target, ids);
    await removeImages(build, [...images.keys()].map((variant) => `${repo}:${variant}`));
  });

  test('SIGKILLed at half the package: the push goes on from the receiver\'s offset and deploys', async (t) => {
    const { service, done } = push('half');
    const streams = join(receiver.dataDir, 'streams');
    const offset = await until(async () => {
      for (const spool of await filesIn(streams, '.bin')) {
        const { size } = await stat(spool).catch(() => ({ size: 0 }));
        if (size >= BASE_BYTES / 2) return size;
      }
      return undefined;
    });
    await restart();
    assert.ok(receiver.logs.some((entry) => entry.msg === 'stream carried over from an earlier run' && typeof entry.offset === 'number' && entry.offset >= offset));
    const result = await assertDeployed(t, await done, 'half', service);
    assert.ok(result.bytes.package > BASE_BYTES);
  });

  test('SIGKILLed while it serves the seal, in the middle of the deployment: the seal is sent again and the deployment runs again', async (t) => {
    // The receiver kills itself once the seal's deployment validates its new container.
    await restart({ FERRY_TEST_CRASH_AT: 'during-validate' });
    const crashed = new Promise((resolve) => receiver.child.once('exit', resolve));
    const { service, done } = push('seal');
    await crashed;
    assert.ok((await filesIn(join(receiver.dataDir, 'streams'), '.bin')).length > 0, 'the spool outlives the kill');
    await restart();
    await assertDeployed(t, await done, 'seal', service);
    // The stream's bytes go once its deployment is journalled.
    await until(async () => ((await filesIn(join(receiver.dataDir, 'streams'), '.bin')).length === 0 ? true : undefined));
  });
});
