/**
 * Releases in the registry, from real parts only: a registry (in this process) projecting the
 * stack's NATS stream into the stack's Redis; release events published through JetStream as a
 * sender publishes them (signed with an operator's key), deployment events as a receiver does
 * (signed with its enrolled host key); then the registry's API and `ferry releases` /
 * `ferry release show` read them back.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { JetStreamPublisher, ReleaseEvents, createEvent, createReleaseEvent, keySigner, type EventSigner } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { newReleaseId } from '@ferry/protocol';
import { startRegistry, type ProjectedRelease, type ReleaseSummary, type RunningRegistry, type ServiceQuality } from '@ferry/registry';
import { Redis } from 'ioredis';
import { runFerry } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { enrolledHost, signedCall, until, type Answer, type Signer } from '../helpers/registry.ts';
import { natsConnect, stack } from '../helpers/stack.ts';

const SUITE = { timeout: 300_000 };
const RUN = randomBytes(3).toString('hex');
const ID = `registry-rel-${RUN}`;
const s = stack();
const silent = createLogger({ level: 'silent' });
const admin = { ...testKey(`rel-admin-${RUN}`), audience: ID };
/** Runs releases: may deploy everything. */
const ops = { ...testKey(`rel-ops-${RUN}`), audience: ID };
/** May deploy `web` only: its release of db and api is not believed. */
const webOnly = testKey(`rel-web-${RUN}`);
const PROJECT = `Shop.${RUN}`;
const HOSTS = [`edge-a-${RUN}`, `edge-b-${RUN}`];
const IMAGE = `sha256:${'c'.repeat(64)}`;

async function call(base: string, path: string, signer: Signer = ops): Promise<Answer> {
  return signedCall(base, signer, 'GET', path);
}

describe('releases in the registry (NATS, Redis, CLI)', SUITE, () => {
  let dataDir: string;
  let registry: RunningRegistry | undefined;
  let publisher: JetStreamPublisher;
  const hostSigners = new Map<string, EventSigner>();

  const start = async (): Promise<RunningRegistry> => startRegistry({
    FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }, ops, { key: webOnly, services: ['web'] }]),
    FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: ID, FERRY_NATS_URL: s.natsRegistryUrl, FERRY_REDIS_URL: s.redisUrl,
    FERRY_DATA_DIR: dataDir, FERRY_LOG_LEVEL: 'error',
  }, { logger: silent, dashboard: false });

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'fx-registry-releases-'));
    registry = await start();
    for (const host of HOSTS) {
      const signer = await enrolledHost(registry.url, admin, host);
      hostSigners.set(host, keySigner(signer.keyId, signer.privateKey));
    }
    publisher = await JetStreamPublisher.connect({ url: s.natsUrl, name: `rel-test-${RUN}` });
  });

  after(async () => {
    await publisher?.close();
    await registry?.close();
    const nc = await natsConnect(s.natsAdminUrl);
    await (await nc.jetstreamManager()).consumers.delete('FERRY_EVENTS', `ferry-registry-${ID}`).catch(() => undefined);
    await nc.drain();
    const redis = new Redis(s.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0 });
    await redis.connect();
    const keys = await redis.keys(`ferry:registry:${ID}:*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
    rmSync(dataDir, { recursive: true, force: true });
  });

  /** A receiver's deployment event of a release, signed with that host's enrolled key. */
  function deployment(type: 'package.verified' | 'deployment.completed' | 'deployment.failed' | 'rollback.completed', host: string, service: string, release: string, phase: number, wave: number): void {
    const data = {
      'package.verified': { digest: 'd', bytes: 1, durationMs: 1 },
      'deployment.completed': { timings: { total: 1200 + phase * 100 } },
      'deployment.failed': { code: 'FERRY_ERR_HEALTHCHECK_FAILED', reason: 'no answer', state: 'ROLLED_BACK' },
      'rollback.completed': { restoredContainerId: 'c0ffee', durationMs: 40 },
    }[type];
    const event = createEvent(type, {
      source: `ferry://receiver/${host}`, host, service, deploymentId: `${release}-${host}-${service}`,
      data: { ...data, image: `${service}:1`, imageId: IMAGE, release: { id: release, phase, wave } } as never,
    });
    publisher.publish(event, { signer: hostSigners.get(host) });
  }

  const plan = {
    phases: ['data', 'apps'],
    waves: [[HOSTS[0] ?? ''], [HOSTS[1] ?? '']],
    services: [
      { name: 'db', image: 'db:1', imageId: IMAGE, phase: 0, dependsOn: [], hosts: HOSTS },
      { name: 'api', image: 'api:1', imageId: IMAGE, phase: 1, dependsOn: [{ service: 'db', condition: 'healthy' as const }], hosts: HOSTS },
    ],
  };
  const good = newReleaseId(new Date(Date.now() - 60_000));
  const broken = newReleaseId();

  it('projects a release from the sender\'s signed steps and the receivers\' deployment events, and keeps it in Redis', async () => {
    const url = registry?.url ?? '';
    // Not believed: unsigned, and signed by a key that may not deploy what the release names.
    const forged = newReleaseId();
    publisher.publish(createReleaseEvent('release.started', { source: 'ferry://sender/x', releaseId: forged, project: PROJECT, data: plan }));
    new ReleaseEvents({ sink: publisher, source: 'ferry://sender/x', releaseId: forged, project: PROJECT, signer: keySigner(webOnly.keyId, webOnly.privateKey) })
      .publish('release.started', plan);

    const events = new ReleaseEvents({ sink: publisher, source: 'ferry://sender/laptop', releaseId: good, project: PROJECT, signer: keySigner(ops.keyId, ops.privateKey) });
    events.publish('release.started', plan);
    for (const [wave, host] of HOSTS.entries()) {
      deployment('package.verified', host, 'db', good, 0, wave);
      deployment('deployment.completed', host, 'db', good, 0, wave);
      events.publish('release.phase.completed', { phase: 0, name: 'data', wave, outcomes: { [host]: { db: 'healthy' } } });
      deployment('deployment.completed', host, 'api', good, 1, wave);
      events.publish('release.phase.completed', { phase: 1, name: 'apps', wave, outcomes: { [host]: { api: 'healthy' } } });
      events.publish('release.wave.completed', { wave, name: wave === 0 ? 'canary' : 'rest', hosts: [host], outcomes: {} });
      if (wave === 0) events.publish('release.paused', { wave: 1, reason: 'continue' });
    }
    events.publish('release.completed', { outcomes: {}, durationMs: 4000 });
    await publisher.flush();

    const release = await until(async () => {
      const answer = await call(url, `/v1/releases/${good}`);
      const r = answer.body.release as ProjectedRelease | undefined;
      return r?.state === 'completed' ? r : undefined;
    });
    assert.equal(release.project, PROJECT);
    assert.equal(release.startedBy, ops.keyId);
    assert.deepEqual(release.phases, ['data', 'apps']);
    assert.deepEqual(release.waves, plan.waves);
    assert.deepEqual(release.outcomes, Object.fromEntries(HOSTS.map((h) => [h, { db: 'healthy', api: 'healthy' }])));
    assert.deepEqual(release.completed.waves.map((w) => w.name), ['canary', 'rest']);
    assert.equal(release.paused, undefined);

    const list = await call(url, `/v1/releases?project=${encodeURIComponent(PROJECT)}`);
    const releases = list.body.releases as ReleaseSummary[];
    assert.deepEqual(releases.map((r) => r.id), [good], 'neither the unsigned nor the out-of-scope release was believed');
    assert.deepEqual(releases[0]?.outcomes, { healthy: 4 });
    assert.equal((await call(url, `/v1/releases/${forged}`)).status, 404);

    // Redis holds it: a registry started again has it before it reads the stream.
    const redis = new Redis(s.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0 });
    await redis.connect();
    const stored = JSON.parse(await redis.hget(`ferry:registry:${ID}:p:releases`, good) ?? 'null') as ProjectedRelease | null;
    redis.disconnect();
    assert.equal(stored?.state, 'completed');
  });

  it('shows a halted release rolled back, per host per service', async () => {
    const url = registry?.url ?? '';
    const events = new ReleaseEvents({ sink: publisher, source: 'ferry://sender/laptop', releaseId: broken, project: PROJECT, signer: keySigner(ops.keyId, ops.privateKey) });
    const host = HOSTS[0] ?? '';
    events.publish('release.started', { ...plan, previousId: good });
    deployment('deployment.completed', host, 'db', broken, 0, 0);
    events.publish('release.phase.completed', { phase: 0, name: 'data', wave: 0, outcomes: { [host]: { db: 'healthy' } } });
    deployment('rollback.completed', host, 'api', broken, 1, 0);
    deployment('deployment.failed', host, 'api', broken, 1, 0);
    events.publish('release.failed', {
      error: { code: 'FERRY_ERR_HEALTHCHECK_FAILED', message: 'api did not answer its health check' }, phase: 1, wave: 0, failedService: 'api', failedHost: host,
      outcomes: { [host]: { api: 'failed' }, [HOSTS[1] ?? '']: { db: 'skipped', api: 'skipped' } }, rollback: true,
    });
    events.publish('release.rollback.started', { reason: 'api failed on the canary', hosts: [host], to: good });
    events.publish('release.rolled_back', { rolledBackTo: good, outcomes: { [host]: { db: 'rolled-back', api: 'rolled-back' } }, durationMs: 900 });
    await publisher.flush();

    const release = await until(async () => {
      const r = (await call(url, `/v1/releases/${broken}`)).body.release as ProjectedRelease | undefined;
      return r?.state === 'rolled-back' ? r : undefined;
    });
    assert.equal(release.rolledBackTo, good);
    assert.equal(release.previousId, good);
    assert.equal(release.error?.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    assert.deepEqual(release.outcomes, { [host]: { db: 'rolled-back', api: 'rolled-back' }, [HOSTS[1] ?? '']: { db: 'skipped', api: 'skipped' } });

    const page = await call(url, `/v1/releases?project=${encodeURIComponent(PROJECT)}&limit=1`);
    assert.deepEqual((page.body.releases as ReleaseSummary[]).map((r) => r.id), [broken], 'newest first');
    assert.equal(page.body.next, broken);
    const rest = await call(url, `/v1/releases?project=${encodeURIComponent(PROJECT)}&limit=1&before=${broken}`);
    assert.deepEqual((rest.body.releases as ReleaseSummary[]).map((r) => r.id), [good]);

    // Quality of api from the receivers' events: 2 of 3 succeeded, its one rollback restored a container.
    const quality = (await call(url, '/v1/quality?service=api')).body.quality as ServiceQuality[];
    assert.equal(quality.length, 1);
    assert.equal(quality[0]?.successRate, 0.6667);
    assert.equal(quality[0]?.p50DurationMs, 1300);
    assert.equal(quality[0]?.rollbacks, 1);
    assert.equal(quality[0]?.rollbackEffectiveness, 1);
  });

  it('refuses ids and pages that are not ones', async () => {
    const url = registry?.url ?? '';
    for (const path of ['/v1/releases/nope', '/v1/releases/rel-20260101T000000Z-ZZZZZZZZ', '/v1/releases?limit=0', '/v1/releases?limit=201', '/v1/releases?before=x', '/v1/quality?last=1e3', '/v1/quality?service=__proto__']) {
      const answer = await call(url, path);
      assert.equal(answer.status, 400, path);
      assert.equal((answer.body.error as { code: string }).code, 'FERRY_ERR_BAD_REQUEST', path);
    }
    const unknown = await call(url, '/v1/releases/rel-20200101T000000Z-00000000');
    assert.equal(unknown.status, 404);
    assert.equal((unknown.body.error as { code: string }).code, 'FERRY_ERR_NOT_FOUND');
  });

  it('ferry releases and ferry release show read them from the registry', async () => {
    const url = registry?.url ?? '';
    const env = { ...keyEnv(ops), FERRY_REGISTRY_URL: url };
    const listed = await runFerry(['releases', '--project', PROJECT], env);
    assert.equal(listed.code, 0, listed.stderr);
    const lines = listed.stdout.trim().split('\n');
    assert.match(lines[0] ?? '', /^ID\s+PROJECT\s+STATE\s+SERVICES\s+HOSTS\s+WHEN/);
    assert.match(lines[1] ?? '', new RegExp(`^${broken}\\s+${PROJECT.replace('.', '\\.')}\\s+rolled-back\\s+2\\s+2\\s`));
    assert.match(lines[2] ?? '', new RegExp(`^${good}\\s+\\S+\\s+completed\\s`));

    const json = await runFerry(['releases', '--project', PROJECT, '--json'], env);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual((JSON.parse(json.stdout) as { releases: ReleaseSummary[] }).releases.map((r) => r.id), [broken, good]);

    const shown = await runFerry(['release', 'show', broken], env);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, new RegExp(`release ${broken}`));
    assert.match(shown.stdout, /state\s+rolled-back/);
    assert.match(shown.stdout, new RegExp(`rolled back to\\s+${good}`));
    assert.match(shown.stdout, /FERRY_ERR_HEALTHCHECK_FAILED/);
    assert.match(shown.stdout, /phase 1\s+data\s+db/);
    assert.match(shown.stdout, /phase 2\s+apps\s+api/);
    assert.match(shown.stdout, new RegExp(`${HOSTS[0]}\\s+rolled-back\\s+rolled-back`));
    assert.match(shown.stdout, new RegExp(`${HOSTS[1]}\\s+skipped\\s+skipped`));

    const shownJson = await runFerry(['release', 'show', good, '--json'], env);
    assert.equal(shownJson.code, 0, shownJson.stderr);
    assert.equal((JSON.parse(shownJson.stdout) as { release: ProjectedRelease }).release.state, 'completed');

    const missing = await runFerry(['release', 'show', 'rel-20200101T000000Z-00000000'], env);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /FERRY_ERR_NOT_FOUND|knows no release/);
    const bad = await runFerry(['release', 'show', 'nope'], env);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /release id/);
  });

  it('a registry started again has the releases from Redis', async () => {
    await registry?.close();
    registry = await start();
    const answer = await call(registry.url, `/v1/releases/${broken}`);
    assert.equal(answer.status, 200);
    assert.equal((answer.body.release as ProjectedRelease).state, 'rolled-back');
  });
});
