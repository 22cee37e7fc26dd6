/**
 * Every way of deploying records the same desired state at the registry: deploy/ferry-push.sh
 * (with --registry), `ferry push`, `ferry deploy -f` and the sender service each deploy the same
 * image and service to a real `ferry receiver` registered with a real `ferry registry`, and each
 * leaves a desired record with the same image id, config hash (the container's
 * `ferry.config-hash`), env digests (keyed by the one signing key they share) and service, after
 * which the registry, fed by the receiver's heartbeats, reports no drift. The shell runs with
 * docker, zstd, b3sum, openssl and curl as a user would run it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RegistryClient, SignedClient, envDigests, type ServiceState } from '@ferry/auth';
import { LABELS } from '@ferry/protocol';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { ROOT, buildTestImage, capture, freePort, runFerry, startFerryProcess, startReceiverProcess, type FerryProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { until } from '../helpers/registry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';

const SCRIPT = join(ROOT, 'deploy/ferry-push.sh');
const run = randomBytes(4).toString('hex');
const s = stack();
/** Deploys by every path (the shell, the CLI, the sender service) and records desired state. */
const key = testKey(`dp-${run}`);
const admin = testKey(`dp-admin-${run}`);
const hostId = `dp-${run}`;
const repo = `ferry-dp-${run}`;
const service = `dp-${run}`;
const ENV = { GREETING: 'hello world', TOKEN: 's3cr=t "quoted"' };
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const dirs: string[] = [];

interface Recorded { path: string; deploymentId: string; state: ServiceState }

async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `ferry-dp-${label}-`));
  dirs.push(dir);
  return dir;
}

function succeeded(result: RunResult, path: string): void {
  assert.equal(result.code, 0, `${path}: ${result.stdout}${result.stderr}`);
  assert.doesNotMatch(result.stderr, /did not record|not recorded/, `${path}: ${result.stderr}`);
}

describe('every deployment path records the same desired state', { timeout: 600_000 }, () => {
  let registry: FerryProcess;
  let receiver: ReceiverProcess;
  let sender: FerryProcess;
  let registryUrl: string;
  let client: RegistryClient;
  let imageId: string;
  const recorded: Recorded[] = [];

  /**
   * After a deployment by `path`: the running container's deployment id, and the registry's state
   * once its desired record is that deployment and a heartbeat reported the container.
   */
  async function settle(path: string): Promise<void> {
    const container = await target.getContainer(service).inspect();
    assert.equal(container.State.Running, true, path);
    const deploymentId = container.Config.Labels[LABELS.deploymentId] ?? '';
    assert.ok(!recorded.some((r) => r.deploymentId === deploymentId), `${path} deployed anew`);
    const state = await until(async () => {
      const found = (await client.services({ host: hostId, service }))[0];
      return found?.desired?.deploymentId === deploymentId && found.actual?.deploymentId === deploymentId && found.actual.configHash ? found : undefined;
    });
    assert.equal(state.drift, null, `${path}: ${JSON.stringify(state.drift)}`);
    assert.equal(state.desired?.configHash, container.Config.Labels[LABELS.configHash], path);
    assert.equal(state.desired?.imageId, imageId, path);
    assert.ok(!(await client.drift()).some((st) => st.service === service), `${path}: the registry lists no drift`);
    recorded.push({ path, deploymentId, state });
  }

  before(async () => {
    const registryPort = await freePort();
    registryUrl = `http://127.0.0.1:${registryPort}`;
    registry = await startFerryProcess('registry', {
      FERRY_LISTEN: `127.0.0.1:${registryPort}`, FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }, key]),
      FERRY_DATA_DIR: await tempDir('registry'), FERRY_HOST_ID: `registry-${run}`, FERRY_HOST_TTL_SECONDS: '3',
    });
    client = new RegistryClient(registryUrl, key);
    const token = (await new RegistryClient(registryUrl, admin).joinToken({ host: hostId })).token;
    imageId = await buildTestImage(s.buildDockerHost, `${repo}:1`, `dp-${run}`);
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_DATA_DIR: await tempDir('rx'),
      FERRY_REGISTRY_URL: registryUrl, FERRY_JOIN_TOKEN: token,
    });
    await until(async () => ((await client.hosts()).some((h) => h.id === hostId && h.status === 'online') ? true : undefined));
    const senderDir = await tempDir('sender');
    sender = await startFerryProcess('sender', {
      FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: `dps-${run}`, FERRY_DATA_DIR: senderDir, FERRY_TRUST_FILE: trustFile(key),
      ...keyEnv(key), DOCKER_HOST: s.buildDockerHost, FERRY_REGISTRY_URL: registryUrl, TMPDIR: senderDir,
    });
  });

  after(async () => {
    await sender?.stop().catch(() => undefined);
    await receiver?.stop().catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    await removeService(target, service);
    await removeImages(target, [`${repo}:1`, imageId]);
    await removeImages(build, [`${repo}:1`]);
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  test('deploy/ferry-push.sh --registry records the deployment it made', async () => {
    const base: Record<string, string> = {};
    for (const [name, value] of Object.entries(process.env)) {
      if (value !== undefined && !name.startsWith('FERRY_') && name !== 'DOCKER_HOST') base[name] = value;
    }
    const env = Object.entries(ENV).flatMap(([name, value]) => ['--env', `${name}=${value}`]);
    const pushed = await capture('bash', [SCRIPT, `${repo}:1`, receiver.url, service, '--network', 'none', ...env, '--registry', registryUrl, '--json'], {
      ...base, DOCKER_HOST: s.buildDockerHost, FERRY_KEY_ID: key.keyId, FERRY_KEY_FILE: key.file,
    });
    succeeded(pushed, 'shell');
    assert.match(pushed.stderr, new RegExp(`recorded as the desired state of ${service} on ${hostId}`));
    const answer = JSON.parse(pushed.stdout) as { configHash?: string; state: string };
    assert.equal(answer.state, 'COMPLETED');
    assert.match(answer.configHash ?? '', /^sha256:[0-9a-f]{64}$/, 'the receiver answers the config hash it computed');
    await settle('shell');
  });

  test('ferry push records the same', async () => {
    const env = Object.entries(ENV).flatMap(([name, value]) => ['--env', `${name}=${value}`]);
    succeeded(await runFerry(['push', `${repo}:1`, '--to', receiver.url, '--name', service, '--network', 'none', ...env], {
      DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), FERRY_REGISTRY_URL: registryUrl,
    }), 'push');
    await settle('push');
  });

  test('ferry deploy -f records the same', async () => {
    const file = join(await tempDir('file'), 'ferry.yaml');
    await writeFile(file, JSON.stringify({ version: 1, services: { [service]: { image: `${repo}:1`, targets: [receiver.url], network: 'none', env: ENV } } }));
    succeeded(await runFerry(['deploy', '-f', file], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), FERRY_REGISTRY_URL: registryUrl }), 'deploy -f');
    await settle('deploy -f');
  });

  test('the sender service records the same', async () => {
    const api = new SignedClient({ url: sender.url, credentials: key, peer: 'sender', unreachable: 'FERRY_ERR_SENDER_UNREACHABLE', learn: 'healthz' });
    const id = `dp-job-${run}`;
    await api.request('POST', '/v1/deployments', { version: 1, id, services: { [service]: { image: `${repo}:1`, targets: [receiver.url], network: 'none', env: ENV } } });
    let job: { state: string };
    for (;;) {
      job = await api.request('GET', `/v1/deployments/${id}`) as { state: string };
      if (job.state === 'succeeded' || job.state === 'failed') break;
      await sleep(300);
    }
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    await settle('sender service');
  });

  test('the four records agree on image id, config hash, env digests and service', () => {
    assert.deepEqual(recorded.map((r) => r.path), ['shell', 'push', 'deploy -f', 'sender service']);
    const [first, ...rest] = recorded.map((r) => r.state.desired);
    assert.ok(first);
    // The digests are the signing key's: the same as envDigests computes, and never a value.
    assert.deepEqual((first.service as { env?: unknown }).env, envDigests(ENV, key.privateKey));
    assert.doesNotMatch(JSON.stringify(first), /hello world|s3cr/);
    for (const [i, desired] of rest.entries()) {
      const path = recorded[i + 1]?.path;
      assert.equal(desired?.imageId, first.imageId, path);
      assert.equal(desired?.configHash, first.configHash, path);
      assert.deepEqual(desired?.service, first.service, path);
      assert.equal(desired?.image, first.image, path);
      assert.equal(desired?.targetUrl, first.targetUrl, path);
      assert.equal(desired?.recordedBy, first.recordedBy, path);
    }
  });
});
