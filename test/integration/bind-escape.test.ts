/**
 * Bind sources that a container allowed to write under an allowed source turned into symbolic
 * links to /, against the stack's real target engine. A link planted before the deployment is
 * refused with FERRY_ERR_POLICY_DENIED (`bind-source-symlink:<source>`) before anything changes:
 * the running container is untouched. The engine mounts a bind source when it starts a container,
 * not when it creates it, so the second link is planted in that gap, right after the new container
 * is created: the receiver looks again just before the start, refuses, and the previous container
 * runs again. Nothing ever starts with the host's / mounted.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, realpath, rename, rm, symlink, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ContainerRunner, ImageStore, createDockerClient, type ContainerSpec } from '@ferry/docker';
import { NullSink, type FerryEvent } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { FerryError, LABELS, parseManifest, type Manifest } from '@ferry/protocol';
import { DEFAULT_POLICY, Deployer, PackageStore, StreamedPackage, type Policy } from '@ferry/receiver';
import { Journal } from '../../services/receiver/src/journal/journal.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { buildTestImage } from '../helpers/ferry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const service = `bind-escape-${run}`;
const repo = `ferry-bind-escape-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const logger = createLogger({ level: 'silent' });

/** Keeps every event the deployer publishes, for the audit record. */
class RecordingSink extends NullSink {
  readonly events: FerryEvent[] = [];

  override publish(event: FerryEvent): void {
    this.events.push(event);
  }
}

/** The engine's container runner, with a moment of the test's choosing right after each create. */
class RunnerWithGap extends ContainerRunner {
  afterCreate: (() => Promise<void>) | undefined;

  override async create(spec: ContainerSpec): Promise<string> {
    const id = await super.create(spec);
    await this.afterCreate?.();
    return id;
  }
}

describe('bind sources turned into links to / under an allowed source', { timeout: 180_000 }, () => {
  let workDir: string;
  let allowed: string;
  let data: string;
  let deployer: Deployer;
  let runner: RunnerWithGap;
  const sink = new RecordingSink();
  const images = new ImageStore(createDockerClient(s.targetDockerHost));
  const ids: string[] = [];

  const manifest = async (tag: string, source = data): Promise<Manifest> => {
    const ref = `${repo}:${tag}`;
    const image = await images.inspect(ref);
    assert.ok(image, ref);
    const parsed = parseManifest({
      schema: 'ferry.manifest/v1', deploymentId: randomUUID(), createdAt: new Date().toISOString(),
      image: { ref, id: image.id, diffIds: image.diffIds },
      package: { format: 'docker-archive', compression: 'zstd', size: 1, digest: `blake3:${'a'.repeat(64)}` },
      service: { name: service, network: 'none', volumes: [`${source}:/mnt/data:ro`] },
    });
    assert.ok(parsed.ok, parsed.ok ? '' : parsed.problems.join('; '));
    return parsed.manifest;
  };
  // The images are on the engine already: the deployment's load is one that has completed.
  const deploy = (m: Manifest): ReturnType<Deployer['deploy']> => deployer.deploy(new StreamedPackage({ manifest: m, bytes: 1, receiveMs: 0, loading: Promise.resolve() }));

  before(async () => {
    ids.push(
      await buildTestImage(s.targetDockerHost, `${repo}:1`, `escape-1-${run}`),
      await buildTestImage(s.targetDockerHost, `${repo}:2`, `escape-2-${run}`),
    );
    // Its real path: a bind source with a symbolic link anywhere in it is refused.
    workDir = await realpath(await mkdtemp(join(tmpdir(), 'ferry-escape-')));
    allowed = join(workDir, 'shared');
    data = join(allowed, 'data');
    await mkdir(data, { recursive: true });
    const policy: Policy = {
      ...DEFAULT_POLICY, bindSources: [allowed], protectedSockets: [...DEFAULT_POLICY.protectedSockets, s.targetDockerHost.replace(/^unix:\/\//, '')],
    };
    runner = new RunnerWithGap(createDockerClient(s.targetDockerHost));
    deployer = new Deployer({
      images, containers: runner, events: sink, hostId: `escape-${run}`, logger, policy,
      packages: await PackageStore.open(join(workDir, 'receiver')),
      journal: await Journal.open(join(workDir, 'receiver', 'journal'), logger),
    });
    // The service as it runs before each refused deployment, with its bind of a plain directory.
    const first = await deploy(await manifest('1'));
    assert.equal(first.state, 'COMPLETED');
  });

  after(async () => {
    deployer?.close();
    await removeService(target, service);
    await removeImages(target, ids);
    // The links first, by themselves: nothing below may ever walk into the host's /.
    for (const link of [data, join(allowed, 'escape')]) if (link) await unlink(link).catch(() => undefined);
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  /** The deployment's own events, as the deployer published them. */
  const eventsOf = (deploymentId: string): FerryEvent[] => sink.events.filter((e) => e.deploymentid === deploymentId);
  const deniedRule = (deploymentId: string): string | undefined => {
    const denied = eventsOf(deploymentId).find((e) => e.type === 'ferry.policy.denied');
    return denied?.type === 'ferry.policy.denied' ? denied.data.rule : undefined;
  };
  const madeFor = (deploymentId: string) => target.listContainers({ all: true, filters: { label: [`${LABELS.deploymentId}=${deploymentId}`] } });

  test('a link planted before the deployment is refused, the running container untouched', async () => {
    const running = await target.getContainer(service).inspect();
    assert.equal(running.Mounts.find((m) => m.Destination === '/mnt/data')?.Source, data);

    const link = join(allowed, 'escape');
    await symlink('/', link);
    const next = await manifest('2', link);
    let error: FerryError | undefined;
    await deploy(next).catch((err: unknown) => { error = err as FerryError; });
    assert.ok(error instanceof FerryError, `refused, not deployed: ${String(error)}`);
    assert.equal(error.code, 'FERRY_ERR_POLICY_DENIED');
    assert.equal(error.status, 403);
    const rule = `bind-source-symlink:${link}`;
    assert.ok(error.message.includes(rule), error.message);
    assert.equal((error.details?.deployment as { state: string }).state, 'FAILED');
    assert.equal(deniedRule(next.deploymentId), rule);
    assert.ok(eventsOf(next.deploymentId).some((e) => e.type === 'ferry.deployment.failed'));
    assert.deepEqual(await madeFor(next.deploymentId), [], 'no container was created');

    const after = await target.getContainer(service).inspect();
    assert.equal(after.Id, running.Id, 'the running container is the same');
    assert.equal(after.State.Running, true);
    assert.equal(after.State.StartedAt, running.State.StartedAt, 'and was not restarted');
    assert.equal((await images.inspect(`${repo}:1`))?.id, ids[0], "the service's image name was not moved");
  });

  test('a link planted between create and start is refused, the previous container runs again', async () => {
    const running = await target.getContainer(service).inspect();

    // What a container that may write under the allowed source could do while the next one is made.
    runner.afterCreate = async () => {
      runner.afterCreate = undefined;
      await rename(data, `${data}.moved`);
      await symlink('/', data);
    };
    const next = await manifest('2');
    let error: FerryError | undefined;
    await deploy(next).catch((err: unknown) => { error = err as FerryError; });
    assert.ok(error instanceof FerryError, `refused, not deployed: ${String(error)}`);
    assert.equal(error.code, 'FERRY_ERR_POLICY_DENIED');
    const rule = `bind-source-symlink:${data}`;
    assert.ok(error.message.includes(rule), error.message);
    assert.equal((error.details?.deployment as { state: string }).state, 'ROLLED_BACK');

    assert.equal(deniedRule(next.deploymentId), rule);
    assert.ok(!eventsOf(next.deploymentId).some((e) => e.type === 'ferry.container.started'), 'the new container never started');
    assert.deepEqual(await madeFor(next.deploymentId), [], 'the refused container is gone');

    const after = await target.getContainer(service).inspect();
    assert.equal(after.Id, running.Id, 'the previous container is the service again');
    assert.equal(after.State.Running, true);
  });
});
