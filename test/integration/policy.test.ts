/**
 * Receiver policy (RELIABILITY row 23) against a real `ferry receiver` process on the stack's
 * target engine: each forbidden request is refused 403 with its rule named, an audit event
 * reaches an independent NATS subscriber, and nothing is loaded or stopped. What the operator
 * allowed (a bind mount under an allowed source, an allowed capability) does run.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NatsConnection } from 'nats';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { NullSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { FerryError, HealthCheckSchema, type ServiceSpec } from '@ferry/protocol';
import { push } from '@ferry/sender';
import { buildTestImage, freePort, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { EventWatcher } from '../helpers/events.ts';
import { removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';
import { testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`pol-${run}`);
const hostId = `pol-${run}`;
const strictHostId = `pol-strict-${run}`;
const service = `pol-${run}`;
const repo = `ferry-pol-${run}`;
const evilRef = `evil-${run}/app:1`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const targetSocket = s.targetDockerHost.replace(/^unix:\/\//, '');


describe('receiver policy against a real receiver, engine and NATS', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  let strict: ReceiverProcess;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  let workDir: string;
  let bindDir: string;
  let port: number;
  let denyId: string;
  const logger = createLogger({ level: 'silent' });

  const deploy = (to: string, image: string, extra: Partial<ServiceSpec>) => push({
    image, to, compression: 'zstd',
    service: {
      name: service, network: 'host', env: { PORT: String(port) },
      health: HealthCheckSchema.parse({ type: 'http', url: `http://127.0.0.1:${port}/healthz`, intervalMs: 100, timeoutMs: 2000, retries: 50 }),
      ...extra,
    },
  }, { images: new ImageStore(createDockerClient(s.buildDockerHost)), events: new NullSink({ logger }), credentials: key, source: 'ferry://sender/test' });

  before(async () => {
    port = await freePort();
    workDir = await mkdtemp(join(tmpdir(), 'ferry-pol-'));
    bindDir = join(workDir, 'shared');
    await mkdir(bindDir);
    await writeFile(join(bindDir, 'note.txt'), `from the host ${run}\n`);
    const policyFile = join(workDir, 'policy.json');
    await writeFile(policyFile, JSON.stringify({ images: [repo], bindSources: [bindDir], capabilities: ['NET_ADMIN'] }));
    let okId: string;
    [okId, denyId] = await Promise.all([
      buildTestImage(s.buildDockerHost, `${repo}:ok`, `ok-${run}`),
      buildTestImage(s.buildDockerHost, `${repo}:deny`, `deny-${run}`),
    ]);
    assert.notEqual(okId, denyId);
    await build.getImage(denyId).tag({ repo: `evil-${run}/app`, tag: '1' });
    nc = await natsConnect(s.natsReaderUrl);
    watcher = new EventWatcher(nc, `ferry.events.*.${service}.>`);
    const env = { DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl };
    [receiver, strict] = await Promise.all([
      startReceiverProcess({ ...env, FERRY_HOST_ID: hostId, FERRY_POLICY_FILE: policyFile }),
      startReceiverProcess({ ...env, FERRY_HOST_ID: strictHostId, FERRY_POLICY_HOST_NETWORK: 'false' }),
    ]);
  });

  after(async () => {
    await receiver?.stop();
    await strict?.stop();
    await nc?.drain();
    await removeService(target, service);
    for (const ref of [`${repo}:ok`, `${repo}:deny`, evilRef]) {
      await target.getImage(ref).remove({ force: true }).catch(() => undefined);
      await build.getImage(ref).remove({ force: true }).catch(() => undefined);
    }
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  test('an allowed bind mount and an allowed capability run', async () => {
    const result = await deploy(receiver.url, `${repo}:ok`, { volumes: [`${bindDir}:/www/host:ro`], capAdd: ['NET_ADMIN'] });
    assert.equal(result.deployment.state, 'COMPLETED');
    const info = await target.getContainer(service).inspect();
    assert.equal(info.State.Running, true);
    assert.deepEqual(info.HostConfig.CapAdd, ['NET_ADMIN']);
    assert.equal(info.HostConfig.Privileged, false);
    const mount = info.Mounts.find((m) => m.Destination === '/www/host');
    assert.equal(mount?.Source, bindDir);
    assert.equal(mount?.RW, false);
    // The container serves the host's file through the bind mount.
    assert.equal(await (await fetch(`http://127.0.0.1:${port}/host/note.txt`)).text(), `from the host ${run}\n`);
  });

  const refusals: { name: string; rule: string; image?: string; strict?: boolean; spec: () => Partial<ServiceSpec> }[] = [
    { name: 'privileged', rule: 'privileged', spec: () => ({ privileged: true }) },
    { name: 'an extra capability', rule: 'cap_add:SYS_ADMIN', spec: () => ({ capAdd: ['SYS_ADMIN'] }) },
    { name: 'host PID', rule: 'pid:host', spec: () => ({ pid: 'host' }) },
    { name: 'host IPC', rule: 'ipc:host', spec: () => ({ ipc: 'host' }) },
    { name: 'a bind of /', rule: 'bind-source:/', spec: () => ({ volumes: ['/:/host'] }) },
    { name: 'the Docker socket', rule: 'docker-socket:/var/run/docker.sock', spec: () => ({ volumes: ['/var/run/docker.sock:/var/run/docker.sock'] }) },
    { name: "the receiver's own engine socket", rule: `docker-socket:${targetSocket}`, spec: () => ({ volumes: [`${targetSocket}:/docker.sock`] }) },
    { name: 'a bind outside the allowed sources', rule: 'bind-source:/etc', spec: () => ({ volumes: ['/etc:/host-etc:ro'] }) },
    { name: 'a device', rule: 'devices:/dev/mem', spec: () => ({ devices: ['/dev/mem'] }) },
    { name: 'unconfined seccomp', rule: 'security_opt:seccomp=unconfined', spec: () => ({ securityOpt: ['seccomp=unconfined'] }) },
    { name: 'unconfined AppArmor', rule: 'security_opt:apparmor=unconfined', spec: () => ({ securityOpt: ['apparmor=unconfined'] }) },
    { name: 'an image outside the allowed repositories', rule: `image-repository:evil-${run}/app`, image: evilRef, spec: () => ({}) },
    { name: 'the host network where it is not allowed', rule: 'network:host', strict: true, spec: () => ({}) },
  ];

  for (const refusal of refusals) {
    test(`${refusal.name} → 403 ${refusal.rule}, audit event, nothing loaded or stopped`, async () => {
      const running = await target.getContainer(service).inspect();
      const to = refusal.strict ? strict : receiver;
      let error: FerryError | undefined;
      await deploy(to.url, refusal.image ?? `${repo}:deny`, refusal.spec()).catch((err: unknown) => { error = err as FerryError; });
      assert.ok(error instanceof FerryError, `refused, not deployed: ${String(error)}`);
      assert.equal(error.code, 'FERRY_ERR_POLICY_DENIED');
      assert.equal(error.status, 403);
      assert.equal(error.details?.rule, refusal.rule);
      assert.ok(error.message.includes(refusal.rule), error.message);
      const deploymentId = String(error.details?.deploymentId);

      const audit = await watcher.until(deploymentId, 'policy.denied');
      assert.equal(audit.data.rule, refusal.rule);
      assert.equal(typeof audit.data.field, 'string');
      assert.equal(typeof audit.data.value, 'string');
      assert.equal(audit.data.host, refusal.strict ? strictHostId : hostId);
      const failed = await watcher.until(deploymentId, 'deployment.failed');
      assert.equal(failed.data.code, 'FERRY_ERR_POLICY_DENIED');
      assert.ok(!watcher.events.some((e) => e.deploymentid === deploymentId && ['ferry.package.verified', 'ferry.image.loaded', 'ferry.container.started'].includes(e.type)));

      await assert.rejects(target.getImage(denyId).inspect(), (err: { statusCode?: number }) => err.statusCode === 404, 'nothing was loaded');
      const after = await target.getContainer(service).inspect();
      assert.equal(after.Id, running.Id, 'the running container is the same');
      assert.equal(after.State.Running, true);
      assert.equal(after.State.StartedAt, running.State.StartedAt, 'and was not restarted');
      assert.deepEqual(await readdir(join(to.dataDir, 'ingest')), [], 'no package bytes were spooled');
    });
  }
});
