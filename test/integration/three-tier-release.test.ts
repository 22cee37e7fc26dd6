/**
 * The three-tier example (deploy/examples/three-tier: db → api → web, each with a health check)
 * as `ferry deploy` runs it, against two real receivers — one on the stack's target engine, one on
 * a private engine of this test's own — and the real build engine: a release goes in phase
 * order on both hosts; a release whose api never passes its health check halts there, web is
 * neither built nor started, and what the release deployed (db) is rolled back on both hosts to
 * what ran before. Release events tell each step. A release that brings a service new to the
 * hosts and then halts takes that service off them again (`DELETE /v1/services/:name?release=`),
 * which only the release's own deploy key can ask; a key granted one service reads only that
 * service's retained releases and capacity.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NatsConnection } from 'nats';
import { parse, stringify } from 'yaml';
import { FerryError } from '@ferry/protocol';
import { ReceiverClient } from '@ferry/sender';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { EventWatcher } from '../helpers/events.ts';
import { runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`tt-${run}`);
const reader = testKey(`ttr-${run}`);
const dbReader = testKey(`ttd-${run}`);
const build = dockerodeFor(s.buildDockerHost);
const EXAMPLE = new URL('../../deploy/examples/three-tier/', import.meta.url);
/** The example's services under names of this run's own (the stack's engine is shared). */
const names = { db: `db-${run}`, api: `api-${run}`, web: `web-${run}`, cache: `cache-${run}` };
const images = Object.values(names).map((name) => `three-tier-${name}:1`);
const hostIds = [`tta-${run}`, `ttb-${run}`];

interface TargetLine { url: string; host?: string; state: string; ok: boolean }
interface ServiceLine { service: string; state: string; ok: boolean; imageId?: string; phase?: string; build?: unknown; targets: TargetLine[] }
interface Summary {
  ok: boolean; runId: string; releaseId: string; failed: string[];
  release: {
    id: string; project: string; state: string; phases: string[]; outcomes: Record<string, Record<string, string>>; error?: { code: string };
    services: Array<{ name: string; phase: number; hosts: string[] }>; previousId?: string; rolledBackTo?: string;
  };
}

function parseRun(stdout: string): { services: ServiceLine[]; summary: Summary } {
  const lines = stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  const summary = lines.at(-1) as unknown as Summary;
  // A service's line comes each time it reaches an end state; its last one tells where it ended.
  const last = new Map<string, ServiceLine>();
  for (const l of lines.slice(0, -1) as unknown as ServiceLine[]) last.set(l.service, l);
  return { services: [...last.values()], summary };
}

describe('a three-tier release on two hosts', { timeout: 600_000 }, () => {
  let engine: PrivateDockerd;
  let rx: ReceiverProcess[] = [];
  let dir: string;
  let file: string;
  let withCache: string;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  const docker = (): ReturnType<typeof dockerodeFor>[] => [dockerodeFor(s.targetDockerHost), dockerodeFor(engine.host)];
  const env = (extra: Record<string, string>): Record<string, string> => ({ DOCKER_HOST: s.buildDockerHost, FERRY_NATS_URL: s.natsUrl, ...keyEnv(key), ...extra });
  const releaseEvents = (id: string): string[] => watcher.events.filter((e) => e.data.releaseId === id).map((e) => e.type.replace(/^ferry\./, ''));

  before(async () => {
    engine = await PrivateDockerd.start();
    rx = await Promise.all([s.targetDockerHost, engine.host].map((dockerHost, i) => startReceiverProcess({
      DOCKER_HOST: dockerHost, FERRY_HOST_ID: hostIds[i] ?? '', FERRY_NATS_URL: s.natsUrl,
      FERRY_TRUST_FILE: trustFile([key, { key: reader, role: 'read' }, { key: dbReader, role: 'read', services: [names.db] }]),
    })));
    nc = await natsConnect(s.natsReaderUrl);
    watcher = new EventWatcher(nc, 'ferry.events.>');
    // The example as it is, its services renamed for this run and sent to this test's receivers;
    // the static busybox its images are made of goes next to it, as its header says.
    dir = await mkdtemp(join(tmpdir(), 'ferry-tt-'));
    await cp(EXAMPLE, dir, { recursive: true });
    await writeFile(join(dir, 'busybox'), await readFile(process.env.FERRY_BUSYBOX ?? '/bin/busybox'), { mode: 0o755 });
    const doc = parse(await readFile(join(dir, 'ferry.yaml'), 'utf8')) as { services: Record<string, Record<string, unknown>> };
    const renamed: Record<string, Record<string, unknown>> = {};
    for (const [name, entry] of Object.entries(doc.services)) {
      const dependsOn = entry.depends_on;
      renamed[names[name as keyof typeof names]] = {
        ...entry, image: `three-tier-${names[name as keyof typeof names]}:1`, targets: rx.map((r) => r.url),
        ...(dependsOn === undefined ? {} : {
          depends_on: Array.isArray(dependsOn)
            ? dependsOn.map((d: string) => names[d as keyof typeof names])
            : Object.fromEntries(Object.entries(dependsOn as Record<string, unknown>).map(([d, v]) => [names[d as keyof typeof names], v])),
        }),
      };
    }
    file = join(dir, 'ferry.yaml');
    await writeFile(file, stringify({ ...doc, services: renamed }));
    // The same release with one service more, in the first phase: new to both hosts.
    withCache = join(dir, 'ferry-cache.yaml');
    const cache = { ...renamed[names.db], image: `three-tier-${names.cache}:1` };
    await writeFile(withCache, stringify({ ...doc, services: { [names.cache]: cache, ...renamed } }));
  });

  after(async () => {
    for (const r of rx) await r.stop().catch(() => undefined);
    if (engine) {
      for (const d of docker()) for (const name of Object.values(names)) await removeService(d, name);
      await removeImages(dockerodeFor(s.targetDockerHost), images);
      await engine.stop().catch(() => undefined);
    }
    await removeImages(build, images);
    await nc?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** What runs as `service` on each host: its container id, image id and VERSION. */
  async function running(service: string): Promise<Array<{ id: string; image: string; version: string | undefined; running: boolean }>> {
    return await Promise.all(docker().map(async (d) => {
      const info = await d.getContainer(service).inspect();
      return { id: info.Id, image: info.Image, version: info.Config.Env.find((e) => e.startsWith('VERSION='))?.slice(8), running: info.State.Running };
    }));
  }

  let firstId = '';
  let first: { db: Awaited<ReturnType<typeof running>>; api: Awaited<ReturnType<typeof running>>; web: Awaited<ReturnType<typeof running>> };

  test('deploys db, then api, then web, each phase healthy on both hosts before the next starts', async () => {
    const result = await runFerry(['deploy', '-f', file, '--json'], env({ VERSION: '1' }));
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const { services, summary } = parseRun(result.stdout);
    const release = summary.release;
    assert.equal(summary.releaseId, release.id);
    assert.deepEqual([release.project, release.state, release.phases], ['three-tier', 'completed', ['phase-1', 'phase-2', 'phase-3']]);
    assert.deepEqual(release.services.map((x) => [x.name, x.phase, x.hosts]), [[names.db, 0, hostIds], [names.api, 1, hostIds], [names.web, 2, hostIds]]);
    const healthy = { [names.db]: 'healthy', [names.api]: 'healthy', [names.web]: 'healthy' };
    assert.deepEqual(release.outcomes, { [hostIds[0] ?? '']: healthy, [hostIds[1] ?? '']: healthy });
    assert.deepEqual(services.map((x) => [x.service, x.phase, x.state]), [[names.db, 'phase-1', 'succeeded'], [names.api, 'phase-2', 'succeeded'], [names.web, 'phase-3', 'succeeded']]);

    // The receivers' journals: every deployment of a phase finished before any of the next began.
    const journal = async (service: string): Promise<Array<{ createdAt: string; finishedAt?: string; state: string }>> =>
      (await Promise.all(rx.map((r) => new ReceiverClient({ url: r.url, credentials: key }).deployments({ service, limit: 1 })))).flat();
    const [db, api, web] = [await journal(names.db), await journal(names.api), await journal(names.web)];
    for (const records of [db, api, web]) assert.deepEqual(records.map((r) => r.state), ['COMPLETED', 'COMPLETED']);
    const latest = (records: typeof db): string => records.map((r) => r.finishedAt ?? '').sort().at(-1) ?? '';
    const earliest = (records: typeof db): string => records.map((r) => r.createdAt).sort()[0] ?? '';
    assert.ok(latest(db) <= earliest(api), `db finished (${latest(db)}) before api began (${earliest(api)})`);
    assert.ok(latest(api) <= earliest(web), `api finished (${latest(api)}) before web began (${earliest(web)})`);

    firstId = release.id;
    first = { db: await running(names.db), api: await running(names.api), web: await running(names.web) };
    for (const tier of Object.values(first)) assert.deepEqual(tier.map((c) => [c.running, c.version]), [[true, '1'], [true, '1']]);
    await waitFor(() => releaseEvents(release.id).includes('release.completed'));
    assert.deepEqual(releaseEvents(release.id), ['release.started', 'release.phase.completed', 'release.phase.completed', 'release.phase.completed', 'release.completed']);
  });

  test('an api that never passes its health check halts the release: web is neither built nor started, db goes back to the first release on both hosts', async () => {
    assert.ok(first, 'the first release ran');
    const result = await runFerry(['deploy', '-f', file, '--json'], env({ VERSION: '2', API_BROKEN: '1' }));
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const { services, summary } = parseRun(result.stdout);
    const release = summary.release;
    assert.deepEqual([summary.ok, summary.failed.sort()], [false, [names.db, names.api, names.web].sort()]);
    assert.equal(release.error?.code, 'FERRY_ERR_RELEASE_HALTED');
    assert.equal(release.state, 'rolled-back');
    const back = { [names.db]: 'rolled-back', [names.api]: 'failed', [names.web]: 'skipped' };
    assert.deepEqual(release.outcomes, { [hostIds[0] ?? '']: back, [hostIds[1] ?? '']: back });
    const web = services.find((x) => x.service === names.web);
    assert.deepEqual([web?.state, web?.build, web?.targets.map((t) => t.state)], ['skipped', undefined, ['SKIPPED', 'SKIPPED']]);
    assert.equal(services.find((x) => x.service === names.api)?.state, 'failed');
    assert.equal(services.find((x) => x.service === names.db)?.state, 'rolled-back');
    // Each host said it ran the first release; each went back to exactly that release.
    assert.deepEqual([release.previousId, release.rolledBackTo], [firstId, firstId]);
    const db = services.find((x) => x.service === names.db) as unknown as { targets: Array<{ rollback?: { toRelease?: string; ok: boolean } }> };
    assert.deepEqual(db.targets.map((t) => t.rollback), db.targets.map((t) => ({ ...t.rollback, ok: true, toRelease: firstId })));
    for (const r of rx) {
      const [newest] = await new ReceiverClient({ url: r.url, credentials: key }).deployments({ service: names.db, limit: 1 });
      assert.deepEqual([newest?.kind, newest?.state, newest?.toRelease], ['rollback', 'ROLLED_BACK', firstId]);
    }

    // db runs the first release's container again on both hosts; api's receivers put its previous
    // one back themselves; web was never touched.
    assert.deepEqual((await running(names.db)).map((c) => [c.running, c.image, c.version]), first.db.map((c) => [true, c.image, '1']));
    assert.deepEqual((await running(names.api)).map((c) => [c.running, c.image, c.version]), first.api.map((c) => [true, c.image, '1']));
    assert.deepEqual(await running(names.web), first.web);

    await waitFor(() => releaseEvents(release.id).includes('release.rolled_back'));
    assert.deepEqual(releaseEvents(release.id), ['release.started', 'release.phase.completed', 'release.failed', 'release.rollback.started', 'release.rolled_back']);
    const started = watcher.events.find((e) => e.data.releaseId === release.id && e.type === 'ferry.release.rollback.started');
    const rolledBack = watcher.events.find((e) => e.data.releaseId === release.id && e.type === 'ferry.release.rolled_back');
    assert.deepEqual([started?.data.to, rolledBack?.data.rolledBackTo], [firstId, firstId]);
    const failed = watcher.events.find((e) => e.data.releaseId === release.id && e.type === 'ferry.release.failed');
    assert.deepEqual([failed?.data.phase, failed?.data.rollback, (failed?.data.error as { code?: string } | undefined)?.code], [1, true, 'FERRY_ERR_RELEASE_HALTED']);
    // web's build never started: no build event of this run names its image.
    assert.ok(!watcher.events.some((e) => e.deploymentid === summary.runId && e.type === 'ferry.build.started' && e.data.image === `three-tier-${names.web}:1`));
    assert.ok(watcher.events.some((e) => e.deploymentid === summary.runId && e.type === 'ferry.build.started' && e.data.image === `three-tier-${names.api}:1`));
  });

  test('the terminal shows the release id, its phases, the rollback and every host × service outcome', async () => {
    const result = await runFerry(['deploy', '-f', file], env({ VERSION: '3', API_BROKEN: '1' }));
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const out = result.stdout;
    const id = /^release (rel-\d{8}T\d{6}Z-[0-9a-f]{8}) \(three-tier\): phase-1 \[(\S+)\] → phase-2 \[(\S+)\] → phase-3 \[(\S+)\]$/m.exec(out);
    assert.deepEqual(id?.slice(2), [names.db, names.api, names.web], out);
    assert.match(out, new RegExp(`^✔ phase phase-1: ${names.db} deployed on every host$`, 'm'));
    assert.match(out, /^✖ phase phase-2 failed: the release halts$/m);
    assert.match(out, new RegExp(`^- phase phase-3 skipped: ${names.web} neither built nor deployed$`, 'm'));
    assert.match(out, new RegExp(`^rolling the release back to ${firstId} on ${hostIds.join(', ')}, last phase first…$`, 'm'));
    for (const host of hostIds) assert.match(out, new RegExp(`^  ↩ ${names.db} on ${host}: rolled back$`, 'm'));
    assert.match(out, new RegExp(`^release ${id?.[1] ?? ''}: rolled-back$`, 'm'));
    for (const host of hostIds) assert.match(out, new RegExp(`^  ${host}\\s+rolled-back\\s+failed\\s+skipped$`, 'm'));
    assert.match(out, /FERRY_ERR_RELEASE_HALTED\]; release rolled-back$/m);
    assert.deepEqual((await running(names.db)).map((c) => [c.running, c.image, c.version]), first.db.map((c) => [true, c.image, '1']));
  });

  test('a service the halted release brought to the hosts is taken off them: no container of it is left', async () => {
    assert.ok(first, 'the first release ran');
    const result = await runFerry(['deploy', '-f', withCache, '--json'], env({ VERSION: '4', API_BROKEN: '1' }));
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const { services, summary } = parseRun(result.stdout);
    const release = summary.release;
    assert.equal(release.state, 'rolled-back', JSON.stringify(release));
    const back = { [names.cache]: 'rolled-back', [names.db]: 'rolled-back', [names.api]: 'failed', [names.web]: 'skipped' };
    assert.deepEqual(release.outcomes, { [hostIds[0] ?? '']: back, [hostIds[1] ?? '']: back });
    const cache = services.find((x) => x.service === names.cache) as unknown as { state: string; targets: Array<{ rollback?: { ok: boolean; removed?: boolean; toRelease?: string } }> };
    assert.equal(cache.state, 'rolled-back');
    assert.deepEqual(cache.targets.map((t) => [t.rollback?.ok, t.rollback?.removed, t.rollback?.toRelease]), [[true, true, undefined], [true, true, undefined]]);
    // Removing cache is going back to the first release too, which did not run it.
    assert.equal(release.rolledBackTo, firstId);
    // db, which ran before, went back to the first release; cache, which did not, is gone.
    assert.deepEqual((await running(names.db)).map((c) => [c.running, c.image, c.version]), first.db.map((c) => [true, c.image, '1']));
    for (const d of docker()) assert.deepEqual(await containersOf(d, names.cache), []);
    for (const r of rx) {
      const [newest] = await new ReceiverClient({ url: r.url, credentials: key }).deployments({ service: names.cache, limit: 1 });
      assert.deepEqual([newest?.kind, newest?.state, newest?.release?.id], ['remove', 'ROLLED_BACK', release.id]);
    }
    await waitFor(() => watcher.events.filter((e) => e.type === 'ferry.deployment.removed' && e.data.service === names.cache).length === 2);
    const removed = watcher.events.filter((e) => e.type === 'ferry.deployment.removed' && e.data.service === names.cache);
    assert.deepEqual(removed.map((e) => e.data.host).sort(), [...hostIds].sort());
    for (const e of removed) assert.equal((e.data.release as { id?: string } | undefined)?.id, release.id);
  });

  test('removing a service is refused unsigned, to a read key, for a bad name and for another release, and removes nothing then', async () => {
    const url = rx[0]?.url ?? '';
    const before = await running(names.db);
    const unsigned = await fetch(`${url}/v1/services/${names.db}`, { method: 'DELETE' });
    assert.equal(unsigned.status, 401);
    const refusal = async (ask: Promise<unknown>): Promise<string> => {
      try {
        await ask;
      } catch (err) {
        if (err instanceof FerryError) return `${err.status} ${err.code}`;
        throw err;
      }
      return 'answered';
    };
    const deployer = new ReceiverClient({ url, credentials: key });
    assert.equal(await refusal(new ReceiverClient({ url, credentials: reader }).remove(names.db)), '403 FERRY_ERR_NOT_GRANTED');
    assert.equal(await refusal(deployer.remove('Db.ferry-previous')), '400 FERRY_ERR_BAD_REQUEST');
    assert.equal(await refusal(deployer.remove('x'.repeat(64))), '400 FERRY_ERR_BAD_REQUEST');
    assert.equal(await refusal(deployer.remove(names.db, { release: 'not-a-release' })), '400 FERRY_ERR_BAD_REQUEST');
    // db runs the first release again, by a rollback to it: a call naming any other release removes nothing.
    assert.equal(await refusal(deployer.remove(names.db, { release: 'rel-20200101T000000Z-0badc0de' })), '409 FERRY_ERR_RELEASE_MISMATCH');
    assert.deepEqual(await running(names.db), before);
    assert.equal((await containersOf(dockerodeFor(s.targetDockerHost), names.db)).length > 0, true);
  });

  test('a key granted one service reads only that service in the retained releases and the capacity', async () => {
    const services = (releases: Awaited<ReturnType<ReceiverClient['releases']>>): string[] => [...new Set(releases.flatMap((r) => r.services.map((x) => x.service)))].sort();
    for (const r of rx) {
      const all = new ReceiverClient({ url: r.url, credentials: key });
      const narrow = new ReceiverClient({ url: r.url, credentials: dbReader });
      // cache too: the release that brought it completed its deployment, and is retained whatever came after.
      assert.deepEqual(services(await all.releases()), [names.api, names.cache, names.db, names.web].sort());
      const seen = await narrow.releases();
      assert.deepEqual(services(seen), [names.db]);
      assert.ok(seen.some((x) => x.id === firstId));
      const wide = await all.capacity();
      const one = await narrow.capacity();
      assert.ok(wide && one);
      assert.ok(wide.committed.services.some((x) => x.service === names.api));
      // The others are summed, unnamed, under `*`: the totals stay whole.
      assert.deepEqual(one.committed.services.map((x) => x.service).filter((n) => n !== names.db), ['*']);
      assert.deepEqual([one.committed.memoryBytes, one.committed.cpus], [wide.committed.memoryBytes, wide.committed.cpus]);
    }
  });
});

/** The containers of `service` on an engine, under any name Ferry gives them. */
async function containersOf(d: ReturnType<typeof dockerodeFor>, service: string): Promise<string[]> {
  const all = await d.listContainers({ all: true });
  return all.flatMap((c) => c.Names).map((n) => n.replace(/^\//, '')).filter((n) => n === service || n.startsWith(`${service}.`));
}

/** Events arrive a moment after the command that published them ended; a hang fails by the test's timeout. */
async function waitFor(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 50));
}
