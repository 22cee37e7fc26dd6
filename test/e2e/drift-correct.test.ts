/**
 * Drift correction end to end, with real parts only: a private nats-server, a `ferry registry`
 * process in correct mode, a `ferry sender` process on the stack's build engine that records what
 * it deploys in that registry, and a `ferry receiver` process on the stack's target engine that
 * registers and heartbeats there. A small image is deployed through the sender service; then the
 * container is changed by hand, twice — stopped, and replaced by another image under its name — and
 * each time the registry reports the drift, asks the sender to deploy the desired state again, and
 * the drift clears once the desired image runs again.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { RegistryClient, SignedClient, type ServiceState } from '@ferry/auth';
import { LABELS } from '@ferry/protocol';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { buildTestImage, freePort, runFerry, startFerryProcess, startReceiverProcess, type FerryProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { until } from '../helpers/registry.ts';
import { NatsServer } from '../helpers/servers.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
/** Operators (this test, the CLI) and the registry call the sender service and the registry with it. */
const ops = { keyId: `dc-ops-${run}`, secret: randomBytes(24).toString('base64url') };
/** The fleet's key: sender → receiver uploads, receiver and sender → registry. */
const fleet = { keyId: `dc-fleet-${run}`, secret: randomBytes(24).toString('base64url') };
const registryId = `dcreg-${run}`;
const senderId = `dcsend-${run}`;
const hostId = `dchost-${run}`;
const service = `dcweb-${run}`;
const image = `ferry-dc-${run}:1`;
const otherImage = `ferry-dc-other-${run}:1`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const dirs: string[] = [];

interface JobView {
  id: string;
  state: string;
  services: { service: string; state: string; targets: { url: string; host?: string; deploymentId?: string; state: string }[] }[];
}

async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `ferry-dc-${label}-`));
  dirs.push(dir);
  return dir;
}

describe('drift correction: registry (correct mode) → sender service → receiver, end to end', { timeout: 900_000 }, () => {
  let nats: NatsServer;
  let registry: FerryProcess;
  let sender: FerryProcess;
  let receiver: ReceiverProcess;
  let registryClient: RegistryClient;
  let senderClient: SignedClient;
  let imageId: string;
  let otherImageId: string;
  let firstDeploymentId: string;

  const state = async (): Promise<ServiceState | undefined> => (await registryClient.services({ host: hostId, service })).at(0);

  /** The drift of this service as `GET /v1/drift` lists it, once it satisfies `wanted`. */
  const driftUntil = (wanted: (st: ServiceState) => boolean): Promise<ServiceState> => until(async () => {
    const found = (await registryClient.drift()).find((st) => st.host === hostId && st.service === service);
    return found && wanted(found) ? found : undefined;
  });

  /**
   * Waits for the correction to close the loop: the registry asked the sender (its log names the
   * request id, which is the sender's job id), the job succeeded, the sender recorded a new desired
   * state, and the receiver reports that deployment running with the desired image: no drift.
   */
  async function corrected(previousDeploymentId: string): Promise<ServiceState> {
    const settled = await until(async () => {
      const st = await state();
      return st && st.drift === null && st.actual?.state === 'running' && st.desired?.deploymentId !== previousDeploymentId
        && st.actual.deploymentId === st.desired?.deploymentId && st.actual.configHash !== undefined ? st : undefined;
    });
    const asked = registry.logs.filter((l) => l.msg === 'asking the sender service to correct a drift' && l.service === service);
    const requestId = asked.at(-1)?.requestId;
    assert.equal(typeof requestId, 'string', 'the registry asked the sender service');
    const job = await senderClient.request('GET', `/v1/deployments/${String(requestId)}`) as JobView;
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.equal(job.services[0]?.targets[0]?.deploymentId, settled.desired?.deploymentId, 'the corrected deployment is the recorded desired state');
    assert.equal(settled.actual?.imageId, imageId);
    assert.equal(settled.actual?.configHash, settled.desired?.configHash);
    const container = await target.getContainer(service).inspect();
    assert.equal(container.State.Running, true);
    assert.equal(container.Image, imageId, 'the desired image runs again');
    assert.equal(container.Config.Labels[LABELS.deploymentId], settled.desired?.deploymentId);
    return settled;
  }

  before(async () => {
    nats = await NatsServer.create();
    await nats.start();
    imageId = await buildTestImage(s.buildDockerHost, image, `dc-${run}`);
    // The "other" image is built on the target engine itself, as someone working on the host would.
    otherImageId = await buildTestImage(s.targetDockerHost, otherImage, `dc-other-${run}`);
    assert.notEqual(otherImageId, imageId);

    // Each needs the other's address at start: both ports are chosen first.
    const registryUrl = `http://127.0.0.1:${await freePort()}`;
    const senderUrl = `http://127.0.0.1:${await freePort()}`;
    registry = await startFerryProcess('registry', {
      FERRY_LISTEN: new URL(registryUrl).host, FERRY_HOST_ID: registryId, FERRY_DATA_DIR: await tempDir('registry'),
      FERRY_KEYS: `${ops.keyId}:${ops.secret},${fleet.keyId}:${fleet.secret}`, FERRY_NATS_URL: nats.url,
      // Hosts beat every second here; the registry waits one of its own intervals (⌊TTL/3⌋ = 2 s) before correcting.
      FERRY_HOST_TTL_SECONDS: '6', FERRY_DRIFT_MODE: 'correct', FERRY_SENDER_URL: senderUrl,
      FERRY_KEY_ID: ops.keyId, FERRY_KEY: ops.secret,
    });
    const senderDir = await tempDir('sender');
    sender = await startFerryProcess('sender', {
      FERRY_LISTEN: new URL(senderUrl).host, FERRY_HOST_ID: senderId, FERRY_DATA_DIR: senderDir,
      FERRY_KEYS: `${ops.keyId}:${ops.secret}`, FERRY_KEY_ID: fleet.keyId, FERRY_KEY: fleet.secret,
      DOCKER_HOST: s.buildDockerHost, FERRY_NATS_URL: nats.url, FERRY_REGISTRY_URL: registryUrl,
      // Packages are spooled there, so they go with the data dir.
      TMPDIR: senderDir,
    });
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_HOST_ID: hostId, FERRY_DATA_DIR: await tempDir('receiver'),
      FERRY_KEYS: `${fleet.keyId}:${fleet.secret}`, FERRY_KEY_ID: fleet.keyId, FERRY_KEY: fleet.secret,
      FERRY_NATS_URL: nats.url, FERRY_REGISTRY_URL: registryUrl, FERRY_HEARTBEAT_SECONDS: '1', FERRY_LABELS: `suite=dc-${run}`,
    });
    registryClient = new RegistryClient(registry.url, ops);
    senderClient = new SignedClient({ url: sender.url, credentials: ops, peer: 'sender', unreachable: 'FERRY_ERR_SENDER_UNREACHABLE' });
    await until(async () => (await registryClient.hosts({ status: 'online' })).find((h) => h.id === hostId));
  });

  after(async () => {
    await sender?.stop().catch(() => undefined);
    await receiver?.stop().catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    await nats?.dispose().catch(() => undefined);
    await removeService(target, service);
    await removeImages(target, [image, otherImage, imageId, otherImageId]);
    await removeImages(build, [image]);
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  test('a deployment through the sender service: the registry shows desired = actual, no drift', async () => {
    const id = `dc-first-${run}`;
    const accepted = await senderClient.request('POST', '/v1/deployments', {
      version: 1, id, services: { [service]: { image, targets: [receiver.url], network: 'none' } },
    }) as { id: string };
    assert.equal(accepted.id, id);
    const job = await until(async () => {
      const view = await senderClient.request('GET', `/v1/deployments/${id}`) as JobView;
      return view.state === 'succeeded' || view.state === 'failed' ? view : undefined;
    });
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    firstDeploymentId = job.services[0]?.targets[0]?.deploymentId ?? '';
    assert.equal(job.services[0]?.targets[0]?.host, hostId);

    const st = await until(async () => {
      const found = await state();
      return found?.desired && found.actual?.deploymentId === firstDeploymentId && found.actual.configHash ? found : undefined;
    });
    assert.equal(st.desired?.deploymentId, firstDeploymentId);
    assert.equal(st.desired?.imageId, imageId);
    assert.equal(st.desired?.targetUrl, receiver.url);
    assert.equal(st.actual?.imageId, imageId);
    assert.equal(st.actual?.configHash, st.desired?.configHash);
    assert.equal(st.actual?.state, 'running');
    assert.equal(st.drift, null);
    const drift = await runFerry(['drift', '--json'], { FERRY_REGISTRY_URL: registry.url, FERRY_KEY_ID: ops.keyId, FERRY_KEY: ops.secret });
    assert.equal(drift.code, 0, drift.stdout + drift.stderr);
  });

  test('(a) a container stopped by hand: drift on state, then the sender re-deploys it and the drift clears', async () => {
    const before = await state();
    const previous = before?.desired?.deploymentId ?? '';
    assert.equal(previous, firstDeploymentId);
    await target.getContainer(service).stop({ t: 0 });

    const drifted = await driftUntil((st) => st.drift?.reasons.some((r) => r.field === 'state') === true);
    assert.deepEqual(drifted.drift?.reasons, [{ field: 'state', desired: 'running', actual: 'exited' }]);
    assert.equal(drifted.drift?.mode, 'correct');
    const cli = await runFerry(['drift', '--json'], { FERRY_REGISTRY_URL: registry.url, FERRY_KEY_ID: ops.keyId, FERRY_KEY: ops.secret });
    // Exit 1 while the drift lasts; 0 if the correction already closed it between the two reads.
    if (cli.code === 1) assert.ok((JSON.parse(cli.stdout) as { drift: ServiceState[] }).drift.some((st) => st.service === service), cli.stdout);
    else assert.equal(cli.code, 0, cli.stdout + cli.stderr);

    await corrected(previous);
  });

  test('(b) another image run by hand under the service\'s name: drift on imageId, corrected the same way', async () => {
    const previous = (await state())?.desired?.deploymentId ?? '';
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
    const drifted = await driftUntil((st) => st.drift?.reasons.length === 1 && st.drift.reasons[0]?.field === 'imageId');
    assert.deepEqual(drifted.drift?.reasons, [{ field: 'imageId', desired: imageId, actual: otherImageId }]);
    assert.equal(drifted.actual?.imageId, otherImageId);

    await corrected(previous);
    const done = await runFerry(['drift', '--json'], { FERRY_REGISTRY_URL: registry.url, FERRY_KEY_ID: ops.keyId, FERRY_KEY: ops.secret });
    assert.equal(done.code, 0, done.stdout + done.stderr);
  });
});
