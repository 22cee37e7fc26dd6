/**
 * `ferry rollback --to-release` told on the bus and seen in the registry, from real parts only: a
 * registry (in this process) projecting the stack's NATS stream into its Redis, a real `ferry
 * receiver` on the stack's target engine, `ferry deploy` and `ferry rollback` as processes. Two
 * releases of two services are deployed; returning the host to the first publishes, on the
 * second (the release left), `release.rollback.started` then `release.rolled_back` with each
 * service's outcome on the host, so that GET /v1/releases/:id shows it rolled back to the first.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NatsConnection } from 'nats';
import { stringify } from 'yaml';
import { createLogger } from '@ferry/log';
import { startRegistry, type ProjectedRelease, type RunningRegistry } from '@ferry/registry';
import { Redis } from 'ioredis';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { EventWatcher } from '../helpers/events.ts';
import { buildTestImage, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { signedCall, until } from '../helpers/registry.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`bt-${run}`);
const registryId = `bt-registry-${run}`;
const hostId = `bt-${run}`;
const services = [`db-${run}`, `web-${run}`] as const;
const [db, web] = services;
const tag = (version: number): string => `ferry-bt-${run}:${version}`;

interface Summary { ok: boolean; release: { id: string; state: string } }

describe('ferry rollback --to-release in the registry', { timeout: 600_000 }, () => {
  let rx: ReceiverProcess;
  let registry: RunningRegistry;
  let registryData: string;
  let dir: string;
  let file: string;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  const target = dockerodeFor(s.targetDockerHost);
  const env = (): Record<string, string> => ({
    DOCKER_HOST: s.buildDockerHost, FERRY_NATS_URL: s.natsUrl, FERRY_REGISTRY_URL: registry.url, FERRY_DATA_DIR: join(dir, 'state'), ...keyEnv(key),
  });
  const steps = (id: string): string[] => watcher.events.filter((e) => e.data.releaseId === id).map((e) => e.type.replace(/^ferry\.release\./, ''));
  const release = async (id: string): Promise<ProjectedRelease | undefined> => {
    const answer = await signedCall(registry.url, { ...key, audience: registryId }, 'GET', `/v1/releases/${id}`);
    return answer.status === 200 ? answer.body.release as ProjectedRelease : undefined;
  };

  async function deploy(version: number): Promise<string> {
    const entrypoint = ['/bin/busybox', 'sh', '-c', "trap 'exit 0' TERM; /bin/busybox sleep 86400 & wait"];
    await writeFile(file, stringify({
      version: 1, name: `bt-${run}`,
      services: {
        [db]: { image: tag(version), targets: [rx.url], network: 'none', entrypoint },
        [web]: { image: tag(version), targets: [rx.url], network: 'none', depends_on: [db], entrypoint },
      },
    }));
    const result = await runFerry(['deploy', '-f', file, '--json'], env());
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const summary = JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as Summary;
    assert.equal(summary.release.state, 'completed');
    return summary.release.id;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-bt-'));
    file = join(dir, 'ferry.yaml');
    registryData = await mkdtemp(join(tmpdir(), 'ferry-bt-registry-'));
    registry = await startRegistry({
      FERRY_TRUST_FILE: trustFile(key), FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: registryId,
      FERRY_NATS_URL: s.natsRegistryUrl, FERRY_REDIS_URL: s.redisUrl, FERRY_DATA_DIR: registryData, FERRY_LOG_LEVEL: 'error',
    }, { logger: createLogger({ level: 'silent' }), dashboard: false });
    rx = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId });
    for (const version of [1, 2]) await buildTestImage(s.buildDockerHost, tag(version), `v${version}-${run}`);
    nc = await natsConnect(s.natsReaderUrl);
    watcher = new EventWatcher(nc, `ferry.events._release.bt-${run}.>`);
  });

  after(async () => {
    await rx?.stop().catch(() => undefined);
    await registry?.close();
    const admin = await natsConnect(s.natsAdminUrl);
    await (await admin.jetstreamManager()).consumers.delete('FERRY_EVENTS', `ferry-registry-${registryId}`).catch(() => undefined);
    await admin.drain();
    const redis = new Redis(s.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0 });
    await redis.connect();
    const keys = await redis.keys(`ferry:registry:${registryId}:*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
    for (const name of services) await removeService(target, name).catch(() => undefined);
    await removeImages(target, [tag(1), tag(2)]).catch(() => undefined);
    await removeImages(dockerodeFor(s.buildDockerHost), [tag(1), tag(2)]);
    await nc?.close();
    for (const d of [dir, registryData]) if (d) await rm(d, { recursive: true, force: true });
  });

  test('the release left shows rolled back to the first, each service on the host rolled-back', async () => {
    const first = await deploy(1);
    const second = await deploy(2);
    const completed = await until(async () => ((await release(second))?.state === 'completed' ? true : undefined));
    assert.ok(completed);

    const result = await runFerry(['rollback', '--to-release', first, '-f', file], env());
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stdout, new RegExp(`^✔ 2 services on 1 host run release ${first} again$`, 'm'));

    const left = await until(async () => {
      const r = await release(second);
      return r?.state === 'rolled-back' ? r : undefined;
    });
    assert.equal(left.rolledBackTo, first);
    assert.deepEqual(left.outcomes, { [hostId]: { [db]: 'rolled-back', [web]: 'rolled-back' } });
    assert.equal(left.error, undefined);
    assert.equal((await release(first))?.state, 'completed', 'the release returned to is not changed');

    await until(() => (steps(second).includes('rolled_back') ? true : undefined));
    assert.deepEqual(steps(second), ['started', 'phase.completed', 'phase.completed', 'completed', 'rollback.started', 'rolled_back']);
    const started = watcher.events.find((e) => e.data.releaseId === second && e.type === 'ferry.release.rollback.started');
    assert.deepEqual([started?.data.to, started?.data.hosts, started?.data.project], [first, [hostId], `bt-${run}`]);
    assert.deepEqual(steps(first).filter((t) => t.startsWith('roll')), [], 'nothing told of the release returned to');
  });

  test('returning to the release the host runs already leaves no release: none is told', async () => {
    const first = watcher.events.find((e) => e.type === 'ferry.release.started')?.data.releaseId as string;
    const result = await runFerry(['rollback', '--to-release', first, '-f', file, '--json'], env());
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const answer = JSON.parse(result.stdout) as { ok: boolean; services: { service: string; from?: string }[] };
    // Each service ran the release it returns to: no release is left, so none gets rollback events.
    assert.deepEqual(answer.services.map((x) => [x.service, x.from]).sort(), [[db, first], [web, first]]);
    assert.equal((await release(first))?.state, 'completed');
  });
});
