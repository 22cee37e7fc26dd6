/**
 * A release in waves across four real hosts — a receiver on the stack's target engine and three on
 * private engines — with a canary wave of one host, then the rest (`rollout:` in ferry.yaml), two
 * phases (db, then web): a release broken on purpose halts after the canary and leaves the other
 * three hosts untouched; a good one pauses after the canary until `ferry release continue`, then
 * completes on all four; `ferry rollback --to-release` returns all four to the first release's
 * images, the last phase first.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NatsConnection } from 'nats';
import { stringify } from 'yaml';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { EventWatcher } from '../helpers/events.ts';
import { buildLayeredImage, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`ro-${run}`);
const services = [`db-${run}`, `web-${run}`] as const;
const [db, web] = services;
const hostIds = ['a', 'b', 'c', 'd'].map((x) => `ro${x}-${run}`);
const tag = (version: number): string => `ferry-rollout-${run}:${version}`;

interface Summary {
  ok: boolean;
  paused?: boolean;
  release: { id: string; state: string; waves: string[][]; outcomes: Record<string, Record<string, string>>; previousId?: string; rolledBackTo?: string; error?: { code: string; message: string } };
}

describe('a release in waves on four hosts', { timeout: 600_000 }, () => {
  const engines: PrivateDockerd[] = [];
  let rx: ReceiverProcess[] = [];
  let dir: string;
  let file: string;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  const image: Record<number, string> = {};
  const docker = (): ReturnType<typeof dockerodeFor>[] => [s.targetDockerHost, ...engines.map((e) => e.host)].map(dockerodeFor);
  const env = (): Record<string, string> => ({ DOCKER_HOST: s.buildDockerHost, FERRY_NATS_URL: s.natsUrl, FERRY_DATA_DIR: join(dir, 'state'), ...keyEnv(key) });
  const steps = (id: string): string[] => watcher.events.filter((e) => e.data.releaseId === id).map((e) => e.type.replace(/^ferry\.release\./, ''));

  /** What runs of each service on each host: container id and image id. */
  async function running(): Promise<Array<Record<string, { id: string; image: string; running: boolean }>>> {
    return await Promise.all(docker().map(async (d) => Object.fromEntries(await Promise.all(services.map(async (name) => {
      const info = await d.getContainer(name).inspect();
      return [name, { id: info.Id, image: info.Image, running: info.State.Running }] as const;
    })))));
  }

  /**
   * ferry.yaml for one release: both services from the image `version`, a shell that ends on
   * SIGTERM (a bare `sleep` as PID 1 ignores it, and every swap would wait out the engine's stop
   * timeout); a broken web exits at once.
   */
  async function writeRelease(version: number, options: { broken?: boolean; pause?: 'manual' } = {}): Promise<void> {
    const targets = rx.map((r) => r.url);
    const entrypoint = ['/bin/busybox', 'sh', '-c', "trap 'exit 0' TERM; /bin/busybox sleep 86400 & wait"];
    await writeFile(file, stringify({
      version: 1, name: 'rollout',
      rollout: [{ name: 'canary', hosts: 1, ...(options.pause ? { pause: options.pause } : {}) }],
      services: {
        [db]: { image: tag(version), targets, network: 'none', entrypoint },
        [web]: { image: tag(version), targets, network: 'none', depends_on: [db], entrypoint: options.broken ? ['/bin/busybox', 'false'] : entrypoint },
      },
    }));
  }

  async function deploy(args: string[]): Promise<{ code: number; summary: Summary; stdout: string; stderr: string }> {
    const result = await runFerry([...args, '--json'], env());
    const last = result.stdout.trim().split('\n').at(-1) ?? '{}';
    return { code: result.code, summary: JSON.parse(last) as Summary, stdout: result.stdout, stderr: result.stderr };
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-rollout-'));
    file = join(dir, 'ferry.yaml');
    engines.push(...await Promise.all([PrivateDockerd.start(), PrivateDockerd.start(), PrivateDockerd.start()]));
    rx = await Promise.all([s.targetDockerHost, ...engines.map((e) => e.host)].map((dockerHost, i) => startReceiverProcess({
      DOCKER_HOST: dockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostIds[i] ?? '',
    })));
    const base = randomBytes(4096);
    for (const version of [1, 2]) image[version] = await buildLayeredImage(s.buildDockerHost, tag(version), base, `v${version} ${run}`);
    nc = await natsConnect(s.natsReaderUrl);
    watcher = new EventWatcher(nc, 'ferry.events._release.>');
  });

  after(async () => {
    for (const r of rx) await r.stop().catch(() => undefined);
    for (const d of docker()) for (const name of services) await removeService(d, name).catch(() => undefined);
    await removeImages(dockerodeFor(s.targetDockerHost), [tag(1), tag(2), image[1], image[2]]).catch(() => undefined);
    for (const e of engines) await e.stop().catch(() => undefined);
    await removeImages(dockerodeFor(s.buildDockerHost), [tag(1), tag(2)]);
    await nc?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  let first = '';
  let before1: Awaited<ReturnType<typeof running>> = [];

  test('a good release goes wave by wave: the canary, then the three others', async () => {
    await writeRelease(1);
    const { code, summary, stdout, stderr } = await deploy(['deploy', '-f', file]);
    assert.equal(code, 0, stdout + stderr);
    first = summary.release.id;
    assert.equal(summary.release.state, 'completed');
    assert.deepEqual(summary.release.waves, [hostIds.slice(0, 1), hostIds.slice(1)]);
    before1 = await running();
    for (const host of before1) for (const name of services) assert.deepEqual([host[name]?.image, host[name]?.running], [image[1], true]);
    await until(() => steps(first).includes('completed'));
    assert.deepEqual(steps(first), ['started', 'phase.completed', 'phase.completed', 'wave.completed', 'phase.completed', 'phase.completed', 'wave.completed', 'completed']);
  });

  test('a release broken on purpose halts after the canary, goes back there, and leaves the other three hosts untouched', async () => {
    assert.ok(first, 'the first release ran');
    await writeRelease(2, { broken: true });
    const { code, summary, stdout, stderr } = await deploy(['deploy', '-f', file]);
    assert.equal(code, 1, stdout + stderr);
    const { release } = summary;
    assert.equal(release.error?.code, 'FERRY_ERR_RELEASE_HALTED');
    assert.match(release.error?.message ?? '', new RegExp(`halted in wave canary, phase phase-2: ${web} failed on ${hostIds[0]} \\(1 unhealthy host, max_unhealthy 0\\); not deployed: wave wave-2$`));
    assert.deepEqual([release.state, release.previousId, release.rolledBackTo], ['rolled-back', first, first]);
    const untouched = { [db]: 'skipped', [web]: 'skipped' };
    assert.deepEqual(release.outcomes, {
      [hostIds[0] ?? '']: { [db]: 'rolled-back', [web]: 'failed' },
      [hostIds[1] ?? '']: untouched, [hostIds[2] ?? '']: untouched, [hostIds[3] ?? '']: untouched,
    });
    const now = await running();
    // The canary runs the first release again (db by the release's rollback, web by its receiver).
    for (const name of services) assert.deepEqual([now[0]?.[name]?.image, now[0]?.[name]?.running], [image[1], true]);
    // The other three: the very same containers.
    assert.deepEqual(now.slice(1), before1.slice(1));
    await until(() => steps(release.id).includes('rolled_back'));
    assert.deepEqual(steps(release.id), ['started', 'phase.completed', 'failed', 'rollback.started', 'rolled_back']);
  });

  let second = '';

  test('a good release pauses after the canary until "ferry release continue", then completes on all four', async () => {
    await writeRelease(2, { pause: 'manual' });
    const paused = await deploy(['deploy', '-f', file]);
    assert.equal(paused.code, 0, paused.stdout + paused.stderr);
    second = paused.summary.release.id;
    assert.deepEqual([paused.summary.paused, paused.summary.release.state], [true, 'paused']);
    const between = await running();
    for (const name of services) assert.equal(between[0]?.[name]?.image, image[2]);
    for (const host of between.slice(1)) for (const name of services) assert.equal(host[name]?.image, image[1]);
    await until(() => steps(second).includes('paused'));
    const pausedEvent = watcher.events.find((e) => e.data.releaseId === second && e.type === 'ferry.release.paused');
    assert.deepEqual([pausedEvent?.data.wave, pausedEvent?.data.reason], [1, 'continue']);

    const done = await deploy(['release', 'continue', second, '-f', file]);
    assert.equal(done.code, 0, done.stdout + done.stderr);
    assert.deepEqual([done.summary.release.id, done.summary.release.state], [second, 'completed']);
    for (const host of await running()) for (const name of services) assert.deepEqual([host[name]?.image, host[name]?.running], [image[2], true]);
    for (const host of hostIds) assert.deepEqual(done.summary.release.outcomes[host], { [db]: 'healthy', [web]: 'healthy' });
    // The paused release went on once: a second continue finds nothing to go on with.
    const again = await runFerry(['release', 'continue', second, '-f', file], env());
    assert.equal(again.code, 1, again.stdout + again.stderr);
    assert.match(again.stderr, /FERRY_ERR_NOT_FOUND/);
    await until(() => steps(second).includes('completed'));
    assert.deepEqual(steps(second), ['started', 'phase.completed', 'phase.completed', 'wave.completed', 'paused', 'phase.completed', 'phase.completed', 'wave.completed', 'completed']);
  });

  test('ferry rollback --to-release returns all four hosts to the first release, web before db', async () => {
    assert.ok(second, 'the second release completed');
    const result = await runFerry(['rollback', '--to-release', first, '-f', file], env());
    assert.equal(result.code, 0, result.stdout + result.stderr);
    for (const host of await running()) for (const name of services) assert.deepEqual([host[name]?.image, host[name]?.running], [image[1], true]);
    const lines = result.stdout.split('\n');
    const webLines = lines.flatMap((l, i) => (l.includes(`↩ ${web} on`) ? [i] : []));
    const dbLines = lines.flatMap((l, i) => (l.includes(`↩ ${db} on`) ? [i] : []));
    assert.deepEqual([webLines.length, dbLines.length], [4, 4], result.stdout);
    assert.ok(Math.max(...webLines) < Math.min(...dbLines), result.stdout);
    assert.match(result.stdout, new RegExp(`^✔ 8 services on 4 hosts run release ${first} again$`, 'm'));
  });
});

/** Events arrive a moment after the command that published them ended; a hang fails by the test's timeout. */
async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 50));
}
