/**
 * Drift correction end to end, with real parts only: a private nats-server, a `ferry registry`
 * process in correct mode signing with a read-only key, and a `ferry receiver` process on the
 * stack's target engine that enrolls with a join token, registers and heartbeats there. A small
 * image is deployed with `ferry push`, which records the desired state. Then the container is
 * changed by hand: stopped — the registry notices it through the heartbeats, asks the host (at the
 * URL the host registered, never one from a desired record) to reconcile, and the very container
 * the signed deployment made runs again; replaced by another image under its name — the host
 * refuses to reconcile (nothing it was deployed with is left to start), the drift stays, and only
 * a new deployment ends it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RegistryClient, type ServiceState } from '@ferry/auth';
import { LABELS } from '@ferry/protocol';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { buildTestImage, freePort, runFerry, startFerryProcess, startReceiverProcess, type FerryProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { signedCall, until } from '../helpers/registry.ts';
import { NatsServer } from '../helpers/servers.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
/** Deploys (ferry push) and reads the registry. */
const ops = testKey(`dc-ops-${run}`);
/** Issues join tokens. */
const admin = testKey(`dc-admin-${run}`);
/** The registry's own key: the receiver grants it read, which is all a reconcile takes. */
const registryKey = testKey(`dc-registry-${run}`);
const registryId = `dcreg-${run}`;
const hostId = `dchost-${run}`;
const service = `dcweb-${run}`;
const image = `ferry-dc-${run}:1`;
const otherImage = `ferry-dc-other-${run}:1`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const dirs: string[] = [];

async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `ferry-dc-${label}-`));
  dirs.push(dir);
  return dir;
}

describe('drift correction: registry (correct mode) → the drifted host itself, end to end', { timeout: 900_000 }, () => {
  let nats: NatsServer;
  let registry: FerryProcess;
  let receiver: ReceiverProcess;
  let registryClient: RegistryClient;
  let imageId: string;
  let otherImageId: string;
  let deploymentId: string;
  let containerId: string;
  /** Every request to where the desired record says the deployment went. */
  const trapped: string[] = [];
  let trap: Server;
  let trapUrl: string;

  const cli = (): Record<string, string> => ({ DOCKER_HOST: s.buildDockerHost, FERRY_REGISTRY_URL: registry.url, ...keyEnv(ops) });
  const state = async (): Promise<ServiceState | undefined> => (await registryClient.services({ host: hostId, service })).at(0);
  const stateUntil = (wanted: (st: ServiceState) => boolean): Promise<ServiceState> => until(async () => {
    const found = await state();
    return found && wanted(found) ? found : undefined;
  });

  before(async () => {
    nats = await NatsServer.create();
    await nats.start();
    imageId = await buildTestImage(s.buildDockerHost, image, `dc-${run}`);
    // The "other" image is built on the target engine itself, as someone working on the host would.
    otherImageId = await buildTestImage(s.targetDockerHost, otherImage, `dc-other-${run}`);
    assert.notEqual(otherImageId, imageId);
    trap = createServer((req, res) => {
      trapped.push(`${req.method ?? ''} ${req.url ?? ''}`);
      res.statusCode = 500;
      res.end();
    });
    await new Promise<void>((resolve) => trap.listen(0, '127.0.0.1', resolve));
    trapUrl = `http://127.0.0.1:${(trap.address() as { port: number }).port}`;

    const registryPort = await freePort();
    registry = await startFerryProcess('registry', {
      FERRY_LISTEN: `127.0.0.1:${registryPort}`, FERRY_HOST_ID: registryId, FERRY_DATA_DIR: await tempDir('registry'),
      FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }, ops]), FERRY_NATS_URL: nats.url,
      // Hosts beat every second here; the registry waits one of its own intervals (⌊TTL/3⌋ = 2 s) before correcting.
      FERRY_HOST_TTL_SECONDS: '6', FERRY_DRIFT_MODE: 'correct', ...keyEnv(registryKey),
    });
    registryClient = new RegistryClient(registry.url, ops);
    const { token } = await new RegistryClient(registry.url, admin).joinToken({ host: hostId });
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_HOST_ID: hostId, FERRY_DATA_DIR: await tempDir('receiver'),
      FERRY_TRUST_FILE: trustFile([ops, { key: registryKey, role: 'read' }]),
      FERRY_NATS_URL: nats.url, FERRY_REGISTRY_URL: registry.url, FERRY_JOIN_TOKEN: token, FERRY_HEARTBEAT_SECONDS: '1', FERRY_LABELS: `suite=dc-${run}`,
    });
    await until(async () => (await registryClient.hosts({ status: 'online' })).find((h) => h.id === hostId));
  });

  after(async () => {
    await receiver?.stop().catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    await nats?.dispose().catch(() => undefined);
    await new Promise((resolve) => trap?.close(resolve));
    await removeService(target, service);
    await removeImages(target, [image, otherImage, imageId, otherImageId]);
    await removeImages(build, [image]);
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  test('ferry push records the desired state; the registry shows desired = actual, no drift', async () => {
    const pushed = await runFerry(['push', image, '--to', receiver.url, '--name', service, '--network', 'none', '--json'], cli());
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    deploymentId = (JSON.parse(pushed.stdout) as { deploymentId: string }).deploymentId;
    const st = await stateUntil((found) => found.desired !== null && found.actual?.deploymentId === deploymentId && found.actual.configHash !== undefined);
    assert.equal(st.desired?.deploymentId, deploymentId);
    assert.equal(st.desired?.imageId, imageId);
    assert.equal(st.actual?.configHash, st.desired?.configHash);
    assert.equal(st.actual?.state, 'running');
    assert.equal(st.drift, null);
    containerId = (await target.getContainer(service).inspect()).Id;

    // Someone with a deploy key rewrites the record's targetUrl: the registry must never follow it.
    const { recordedAt: _at, recordedBy: _by, ...record } = st.desired as unknown as Record<string, unknown>;
    const rewritten = await signedCall(registry.url, { ...ops, audience: registryId }, 'PUT', `/v1/desired/${hostId}/${service}`, { ...record, targetUrl: trapUrl });
    assert.equal(rewritten.status, 200, JSON.stringify(rewritten.body));
    assert.equal((await state())?.drift, null);
    const drift = await runFerry(['drift', '--json'], cli());
    assert.equal(drift.code, 0, drift.stdout + drift.stderr);
  });

  test('(a) a container stopped by hand: the registry sees it in a heartbeat and asks the host, which starts the same container again', async () => {
    await target.getContainer(service).stop({ t: 0 });
    const drifted = await until(async () => {
      const found = (await registryClient.drift()).find((st) => st.host === hostId && st.service === service);
      return found?.drift?.reasons.some((r) => r.field === 'state') === true ? found : undefined;
    });
    assert.deepEqual(drifted.drift?.reasons, [{ field: 'state', desired: 'running', actual: 'exited' }]);
    assert.equal(drifted.drift?.mode, 'correct');

    const settled = await stateUntil((st) => st.drift === null && st.actual?.state === 'running');
    const container = await target.getContainer(service).inspect();
    assert.equal(container.State.Running, true);
    assert.equal(container.Id, containerId, 'the container the signed deployment made, not a new one');
    assert.equal(container.Image, imageId);
    assert.equal(container.Config.Labels[LABELS.deploymentId], deploymentId);
    assert.equal(settled.actual?.deploymentId, deploymentId, 'no new deployment');
    assert.ok(receiver.logs.some((l) => l.msg === 'stopped service started again (reconcile)' && l.service === service), 'the receiver did it');
    assert.ok(registry.logs.some((l) => l.msg === 'asking the host to reconcile a drifted service' && l.service === service));
    assert.deepEqual(trapped, [], 'nothing went to the desired record\'s targetUrl');
  });

  test('(b) another image run by hand under the service\'s name: the host refuses to reconcile, and the drift stays until a deployment', async () => {
    const current = await target.getContainer(service).inspect();
    // Re-created by hand from the service's own labels (as a `docker run` copied from `docker
    // inspect` would be), so the receiver still reports it as the service — with another image.
    const replacement = await target.createContainer({
      name: `${service}-by-hand`, Image: otherImage, Labels: current.Config.Labels, HostConfig: { NetworkMode: 'none' },
    });
    // Started before it takes the name, so the name never holds a container that is not running.
    await replacement.start();
    await target.getContainer(service).remove({ force: true });
    await replacement.rename({ name: service });

    // A heartbeat between the removal and the rename may open the episode as `missing`; the next one updates it.
    const refused = await stateUntil((st) => st.drift?.correction?.outcome === 'failed' && st.drift.reasons.length === 1 && st.drift.reasons[0]?.field === 'imageId');
    assert.equal(refused.drift?.correction?.error?.code, 'FERRY_ERR_NOT_RECONCILABLE');
    assert.deepEqual(refused.drift?.reasons, [{ field: 'imageId', desired: imageId, actual: otherImageId }]);
    // Nothing was started or replaced: the container by hand still runs, and the drift stays.
    await sleep(3000);
    assert.equal((await target.getContainer(service).inspect()).Image, otherImageId);
    assert.notEqual((await state())?.drift, null);
    const cli1 = await runFerry(['drift', '--json'], cli());
    assert.equal(cli1.code, 1, cli1.stdout + cli1.stderr);

    const pushed = await runFerry(['push', image, '--to', receiver.url, '--name', service, '--network', 'none', '--json'], cli());
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    const fixed = (JSON.parse(pushed.stdout) as { deploymentId: string }).deploymentId;
    await stateUntil((st) => st.drift === null && st.actual?.deploymentId === fixed && st.actual.imageId === imageId);
    const done = await runFerry(['drift', '--json'], cli());
    assert.equal(done.code, 0, done.stdout + done.stderr);
    assert.deepEqual(trapped, []);
  });
});
