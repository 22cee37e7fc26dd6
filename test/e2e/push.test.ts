/**
 * The whole product for real: an image built on the "build" engine is pushed with the `ferry`
 * command to a `ferry receiver` process that runs containers on the "target" engine, with events
 * on the stack's nats-server. Nothing here is mocked.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { NatsConnection } from 'nats';
import { buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { corruptingProxy } from '../helpers/proxy.ts';
import { EventWatcher, type WatchedEvent } from '../helpers/events.ts';
import { removeService } from '../helpers/cleanup.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`e2e-${run}`);
const hostId = `e2e-${run}`;
const service = `web-${run}`;
const repo = `ferry-e2e-${run}`;
const target = dockerodeFor(s.targetDockerHost);


const receiverTypes = (events: WatchedEvent[]): string[] => events.filter((e) => e.source.startsWith('ferry://receiver/')).map((e) => e.type.slice(6));

describe('ferry push, end to end against real Docker engines and NATS', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  let port: number;
  let v1: string;
  let v2: string;
  const senderEnv = (): Record<string, string> => ({
    DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), FERRY_NATS_URL: s.natsUrl,
  });
  const pushArgs = (image: string, to: string, extra: string[] = []): string[] => [
    'push', image, '--to', to, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
    '--health', `http://127.0.0.1:${port}/healthz`, '--json', ...extra,
  ];
  const page = async (): Promise<string> => (await fetch(`http://127.0.0.1:${port}/`)).text();

  before(async () => {
    port = await freePort();
    [v1, v2] = await Promise.all([buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`), buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`)]);
    nc = await natsConnect(s.natsReaderUrl);
    watcher = new EventWatcher(nc, `ferry.events.${hostId}.>`);
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: hostId,
    });
  });

  after(async () => {
    await receiver?.stop();
    await nc?.drain();
    await removeService(target, service);
    for (const ref of [`${repo}:1`, `${repo}:2`]) await target.getImage(ref).remove({ force: true }).catch(() => undefined);
    const build = dockerodeFor(s.buildDockerHost);
    for (const ref of [`${repo}:1`, `${repo}:2`]) await build.getImage(ref).remove({ force: true }).catch(() => undefined);
  });

  test('a multi-layer image is deployed, answers, and its whole lifecycle is on NATS under one id', async () => {
    const built = await dockerodeFor(s.buildDockerHost).getImage(v1).inspect();
    assert.ok(built.RootFS.Layers && built.RootFS.Layers.length >= 3, 'the test image has several layers');

    const result = await runFerry(pushArgs(`${repo}:1`, receiver.url), senderEnv());
    assert.equal(result.code, 0, result.stderr + result.stdout);
    const summary = JSON.parse(result.stdout) as { ok: boolean; deploymentId: string; imageId: string; deployment: { state: string } };
    assert.equal(summary.ok, true);
    assert.equal(summary.imageId, v1);
    assert.equal(summary.deployment.state, 'COMPLETED');

    assert.match(await page(), new RegExp(`v1-${run}`));
    const container = await target.getContainer(service).inspect();
    assert.equal(container.Name, `/${service}`);
    assert.equal(container.Config.Image, `${repo}:1`, 'docker ps on the target shows the image as pushed');
    assert.equal(container.Image, v1);
    assert.equal(container.State.Running, true);
    assert.equal(container.Config.Labels['ferry.deployment-id'], summary.deploymentId);
    assert.match(container.Config.Labels['ferry.config-hash'] ?? '', /^sha256:[0-9a-f]{64}$/);

    await watcher.until(summary.deploymentId, 'deployment.completed');
    const events = watcher.for(summary.deploymentId);
    assert.ok(events.every((e) => e.deploymentid === summary.deploymentId && e.data.deploymentId === summary.deploymentId));
    assert.equal(events[0]?.type, 'ferry.transfer.started', 'the sender announces the transfer before the receiver says anything');
    assert.ok(events.some((e) => e.type === 'ferry.transfer.completed' && e.source.startsWith('ferry://sender/')));
    assert.deepEqual(receiverTypes(events), ['package.verified', 'image.loaded', 'container.started', 'healthcheck.passed', 'deployment.completed']);
    assert.equal(new Set(events.map((e) => e.id)).size, events.length, 'every event has its own id');
  });

  test('a byte corrupted in flight is refused with a checksum error; nothing is loaded; the running service is untouched', async () => {
    const before = await target.getContainer(service).inspect();
    // Past the headers and the manifest part, inside the package.
    const proxy = await corruptingProxy(receiver.url, 200_000);
    try {
      // The whole image, so that the package is long enough to hold the corrupted byte: with
      // negotiation it would carry only v2's top layer. Spooled, so that the whole-package digest
      // is what catches it (a streamed part is checked on its own and sent again: streams.test.ts).
      const result = await runFerry(pushArgs(`${repo}:2`, proxy.url, ['--no-layer-negotiation', '--no-stream']), senderEnv());
      assert.ok(proxy.flipped, 'the proxy reached the byte it corrupts');
      assert.equal(result.code, 1, result.stderr);
      const answer = JSON.parse(result.stdout) as { ok: boolean; error: { code: string } };
      assert.equal(answer.ok, false);
      assert.equal(answer.error.code, 'FERRY_ERR_CHECKSUM_MISMATCH');
    } finally {
      await proxy.close();
    }
    await assert.rejects(target.getImage(v2).inspect(), (err: { statusCode?: number }) => err.statusCode === 404, 'the corrupted image is absent on the target');
    const after = await target.getContainer(service).inspect();
    assert.equal(after.Id, before.Id);
    assert.equal(after.State.Running, true);
    assert.equal(after.State.StartedAt, before.State.StartedAt, 'the running container was not restarted');
    assert.match(await page(), new RegExp(`v1-${run}`));
  });

  test('a deployment whose health check fails is rolled back: the old container serves, a failure event says why', async () => {
    const before = await target.getContainer(service).inspect();
    const wrongPort = await freePort();
    // v2 listens elsewhere, so its health URL never answers.
    const args = pushArgs(`${repo}:2`, receiver.url, ['--health-retries', '3', '--health-interval', '100']).map((a) => (a === `PORT=${port}` ? `PORT=${wrongPort}` : a));
    const result = await runFerry(args, senderEnv());
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const answer = JSON.parse(result.stdout) as { error: { code: string; details: { deployment: { deploymentId: string; state: string } } } };
    assert.equal(answer.error.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    assert.equal(answer.error.details.deployment.state, 'ROLLED_BACK');

    const after = await target.getContainer(service).inspect();
    assert.equal(after.Id, before.Id, 'the previous container is back under the service name');
    assert.equal(after.State.Running, true);
    assert.match(await page(), new RegExp(`v1-${run}`));
    const image = await target.getImage(`${repo}:2`).inspect().catch(() => undefined);
    assert.notEqual(image?.Id, undefined, 'the loaded image stays for inspection');

    const id = answer.error.details.deployment.deploymentId;
    await watcher.until(id, 'deployment.failed');
    const events = watcher.for(id);
    assert.deepEqual(receiverTypes(events), ['package.verified', 'image.loaded', 'container.started', 'healthcheck.failed', 'rollback.started', 'rollback.completed', 'deployment.failed']);
    const failed = events.find((e) => e.type === 'ferry.deployment.failed');
    assert.equal(failed?.data.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    assert.equal(failed?.data.state, 'ROLLED_BACK');
    assert.match(String(failed?.data.reason), /health check failed/i);
    const probeFailure = events.find((e) => e.type === 'ferry.healthcheck.failed');
    assert.equal((probeFailure?.data.probes as unknown[]).length, 3);
  });
});
