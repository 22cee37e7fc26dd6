/**
 * Retained releases against a real `ferry receiver` on the stack's target engine and the stack's
 * NATS: five releases of a service are deployed with signed manifests naming them, the receiver
 * keeps the newest four (FERRY_RETAIN_RELEASES=4) with their images while image retention
 * (FERRY_RETAIN_IMAGES=1) removes the rest, a failed release is never kept, `GET /v1/releases`
 * lists them, and `POST /v1/services/:name/rollback?toRelease=` returns to a release three back:
 * its image and spec run again, journalled as a rollback, its events naming the release. The old
 * release's manifest replayed afterwards is still a downgrade; a release no longer kept is 404;
 * what is kept survives a restart, in a 0600 file named after the service only.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NatsConnection } from 'nats';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { FerryError, newReleaseId, type DeploymentResult, type ManifestInput, type ReleaseRef } from '@ferry/protocol';
import { buildPackage, inspectImage, uploadOneShot } from '@ferry/sender';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import type { EventWatcher } from '../helpers/events.ts';
import { buildTestImage, startWatchedReceiver, type ReceiverProcess } from '../helpers/ferry.ts';
import { buildFromDockerfile } from '../helpers/images.ts';
import { testKey } from '../helpers/keys.ts';
import { signedCall, type Answer } from '../helpers/registry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`rr-${run}`);
const hostId = `rr-${run}`;
const service = `rr-${run}`;
const repo = `ferry-rr-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));
const targetImages = new ImageStore(createDockerClient(s.targetDockerHost));
const VERSIONS = [1, 2, 3, 4, 5] as const;
const refs = [...VERSIONS.map((v) => `${repo}:${v}`), `${repo}:crash`];
/** Release ids a day apart, oldest first: their text order is their age. */
const releases = VERSIONS.map((v) => newReleaseId(new Date(Date.UTC(2026, 0, v, 12))));

interface Signed { manifestJson: string; result?: DeploymentResult; error?: FerryError }
interface ReleasesAnswer { releases: { id: string; services: { service: string; imageId: string; image: string; configHash: string; deploymentId: string; state: string; at: string; phase: number; wave?: number }[] }[] }

/** A signed request without a body, as any client of the deployments API sends it. */
function call(url: string, method: 'GET' | 'POST', path: string): Promise<Answer> {
  return signedCall(url, { ...key, audience: hostId }, method, path);
}

describe('retained releases: kept, listed, and gone back to', { timeout: 600_000 }, () => {
  let rx: ReceiverProcess;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  let dataDir: string;
  const imageIds = new Map<string, string>();
  const signed = new Map<string, Signed>();

  const start = async (extra: Record<string, string> = {}): Promise<void> => {
    ({ receiver: rx, watcher, nc } = await startWatchedReceiver(hostId, key, {
      FERRY_DATA_DIR: dataDir, FERRY_RETAIN_RELEASES: '4', FERRY_RETAIN_IMAGES: '1', ...extra,
    }));
    // A receiver with in-memory nonces refuses what was signed before it started (same second included).
    while ((await call(rx.url, 'GET', '/v1/releases')).status === 401) await sleep(100);
  };

  /** Deploys `image` under a signed manifest naming `release`, through the sender's package and upload modules. */
  const deploy = async (image: string, release: ReleaseRef, createdAt = new Date().toISOString(), deploymentId = randomUUID(), extra: Partial<ManifestInput['service']> = {}): Promise<Signed> => {
    const facts = await inspectImage(buildImages, image);
    const pkg = await buildPackage(buildImages, facts, 'zstd');
    const manifest: ManifestInput = {
      schema: 'ferry.manifest/v1', deploymentId, createdAt,
      image: { ref: facts.ref, id: facts.id, diffIds: facts.diffIds },
      package: { format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest },
      service: { name: service, network: 'none', env: { RELEASE_TOKEN: `secret-${release.id}` }, ...extra },
      release,
    };
    const manifestJson = JSON.stringify(manifest);
    try {
      const outcome = await uploadOneShot({ url: rx.url, credentials: key, audience: hostId, manifestJson, packagePath: pkg.path, packageSize: pkg.size });
      return { manifestJson, result: outcome.result };
    } catch (err) {
      if (err instanceof FerryError) return { manifestJson, error: err };
      throw err;
    } finally {
      await pkg.remove();
    }
  };

  const listed = async (): Promise<ReleasesAnswer> => {
    const answer = await call(rx.url, 'GET', '/v1/releases');
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    return answer.body as unknown as ReleasesAnswer;
  };

  before(async () => {
    for (const v of VERSIONS) imageIds.set(`${repo}:${v}`, await buildTestImage(s.buildDockerHost, `${repo}:${v}`, `v${v}-${run}`));
    await buildFromDockerfile(s.buildDockerHost, `${repo}:crash`, `FROM ${repo}:1\nENTRYPOINT ["/bin/busybox", "sh", "-c", "echo broken ${run}; exit 1"]\n`);
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-rr-'));
    await start();
  });

  after(async () => {
    await rx?.stop();
    await nc?.drain();
    await removeService(target, service);
    await removeImages(target, refs);
    await removeImages(target, [...imageIds.values()]);
    await removeImages(build, refs);
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test('five releases deployed: the newest four are retained with their images, listed newest first', async () => {
    for (const [i, v] of VERSIONS.entries()) {
      const release = { id: releases[i] ?? '', phase: 0, phases: 1, wave: 0 };
      const done = await deploy(`${repo}:${v}`, release);
      assert.equal(done.result?.state, 'COMPLETED', String(done.error?.message));
      signed.set(release.id, done);
    }
    const { releases: kept } = await listed();
    assert.deepEqual(kept.map((r) => r.id), releases.slice(1).reverse(), 'newest first, the oldest no longer kept');
    for (const r of kept) {
      const v = releases.indexOf(r.id) + 1;
      const [entry] = r.services;
      assert.equal(r.services.length, 1);
      assert.equal(entry?.service, service);
      assert.equal(entry?.imageId, imageIds.get(`${repo}:${v}`));
      assert.equal(entry?.deploymentId, signed.get(r.id)?.result?.deploymentId);
      assert.equal(entry?.configHash, signed.get(r.id)?.result?.configHash);
      assert.equal(entry?.state, 'COMPLETED');
      assert.equal(entry?.wave, 0);
    }
    assert.ok(!JSON.stringify(kept).includes('secret-'), 'no env value in the answer');
    // FERRY_RETAIN_IMAGES=1: release 1's image went; release 2's is used by no container and stays, retained.
    assert.equal(await targetImages.inspect(imageIds.get(`${repo}:1`) ?? ''), undefined, 'the image of a release no longer kept is pruned');
    assert.ok(await targetImages.inspect(imageIds.get(`${repo}:2`) ?? ''), 'the image of a retained release is not');

    const last = signed.get(releases[4] ?? '')?.result?.deploymentId ?? '';
    const completed = await watcher.until(last, 'deployment.completed');
    assert.deepEqual(completed.data.release, { id: releases[4], phase: 0, wave: 0 }, 'the deployment events name the release');
    const journalled = await call(rx.url, 'GET', `/v1/deployments/${last}`);
    assert.deepEqual(journalled.body.release, { id: releases[4], phase: 0, phases: 1, wave: 0 }, 'and the journal files it under it');
  });

  test('a failed release is not retained', async () => {
    const failedId = newReleaseId(new Date(Date.UTC(2026, 0, 9, 12)));
    const failed = await deploy(`${repo}:crash`, { id: failedId, phase: 0, phases: 1 });
    // Exits at once: seen down right after its start, or within the stability window.
    assert.ok(['FERRY_ERR_CONTAINER_FAILED', 'FERRY_ERR_UNSTABLE'].includes(failed.error?.code ?? ''), String(failed.error?.message));
    assert.deepEqual((await listed()).releases.map((r) => r.id), releases.slice(1).reverse());
    const answer = await call(rx.url, 'POST', `/v1/services/${service}/rollback?toRelease=${failedId}`);
    assert.equal(answer.status, 404);
    assert.equal((answer.body.error as { code: string }).code, 'FERRY_ERR_RELEASE_NOT_RETAINED');
  });

  test('rollback?toRelease= goes to a release three back; its old manifest replayed is still a downgrade', async () => {
    const back = releases[1] ?? '';
    const latest = await target.getContainer(service).inspect();
    const id = randomUUID();
    const answer = await call(rx.url, 'POST', `/v1/services/${service}/rollback?toRelease=${back}&deploymentId=${id}`);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.state, 'ROLLED_BACK');
    assert.equal(answer.body.imageId, imageIds.get(`${repo}:2`));
    assert.equal(answer.body.configHash, signed.get(back)?.result?.configHash, 'its signed spec, as deployed then');
    const now = await target.getContainer(service).inspect();
    assert.equal(now.Id, answer.body.containerId);
    assert.equal(now.State.Running, true);
    assert.equal(now.Image, imageIds.get(`${repo}:2`), 'release 2\'s image runs');
    assert.ok(now.Config.Env.includes(`RELEASE_TOKEN=secret-${back}`), 'with release 2\'s env');
    assert.equal(now.Config.Labels['ferry.deployment-id'], id);
    assert.equal((await target.getContainer(`${service}.ferry-previous`).inspect()).Id, latest.Id, 'what ran before is kept for a plain rollback');
    assert.equal((await target.getImage(`${repo}:2`).inspect()).Id, imageIds.get(`${repo}:2`), 'the image name points at it');

    const record = (await call(rx.url, 'GET', `/v1/deployments/${id}`)).body;
    assert.equal(record.kind, 'rollback');
    assert.equal(record.toRelease, back);
    assert.deepEqual((record.states as { state: string }[]).map((st) => st.state), ['PENDING', 'ROLLING_BACK', 'ROLLED_BACK']);
    const started = await watcher.until(id, 'rollback.started');
    const completed = await watcher.until(id, 'rollback.completed');
    assert.equal((started.data.release as { id: string }).id, back);
    assert.equal(completed.data.restoredContainerId, now.Id);

    const again = await call(rx.url, 'POST', `/v1/services/${service}/rollback?toRelease=${back}&deploymentId=${id}`);
    assert.deepEqual(again.body, answer.body, 'a retry gets the stored answer');
    const other = await call(rx.url, 'POST', `/v1/services/${service}/rollback?toRelease=${releases[2]}&deploymentId=${id}`);
    assert.equal((other.body.error as { code: string }).code, 'FERRY_ERR_DEPLOYMENT_CONFLICT');

    // Release 3's signed manifest, played back under a new id: older than release 5, not a rollback.
    const replayed = JSON.parse(signed.get(releases[2] ?? '')?.manifestJson ?? '{}') as { createdAt: string; release: ReleaseRef };
    const downgrade = await deploy(`${repo}:3`, replayed.release, replayed.createdAt);
    assert.equal(downgrade.error?.code, 'FERRY_ERR_DOWNGRADE', 'a rollback to an old release does not lower the bar for replays');

    const forward = await call(rx.url, 'POST', `/v1/services/${service}/rollback`);
    assert.equal(forward.status, 200, JSON.stringify(forward.body));
    assert.equal((await target.getContainer(service).inspect()).Id, latest.Id, 'a plain rollback then returns to what ran before');
  });

  test('a release no longer kept, or never deployed here, is 404', async () => {
    for (const id of [releases[0], newReleaseId()]) {
      const answer = await call(rx.url, 'POST', `/v1/services/${service}/rollback?toRelease=${id}`);
      assert.equal(answer.status, 404, JSON.stringify(answer.body));
      assert.equal((answer.body.error as { code: string }).code, 'FERRY_ERR_RELEASE_NOT_RETAINED');
    }
    const elsewhere = await call(rx.url, 'POST', `/v1/services/other-${run}/rollback?toRelease=${releases[4]}`);
    assert.equal((elsewhere.body.error as { code: string }).code, 'FERRY_ERR_RELEASE_NOT_RETAINED', 'a release is retained per service');
  });

  test('a retained release that no longer passes its check: what ran before runs again, the rollback FAILED', async () => {
    // Its check passed when it was deployed (this server answered); by the rollback, nothing answers.
    const answering = createServer((socket) => socket.end());
    await new Promise<void>((r) => answering.listen(0, '127.0.0.1', r));
    const port = (answering.address() as { port: number }).port;
    const checked = newReleaseId(new Date(Date.UTC(2026, 0, 10, 12)));
    const health = { type: 'tcp' as const, host: '127.0.0.1', port, intervalMs: 100, timeoutMs: 500, retries: 3 };
    const first = await deploy(`${repo}:3`, { id: checked, phase: 0, phases: 1 }, undefined, undefined, { health });
    await new Promise((r) => answering.close(r));
    assert.equal(first.result?.state, 'COMPLETED', String(first.error?.message));
    const current = await deploy(`${repo}:4`, { id: newReleaseId(new Date(Date.UTC(2026, 0, 11, 12))), phase: 0, phases: 1 });
    assert.equal(current.result?.state, 'COMPLETED', String(current.error?.message));
    const running = await target.getContainer(service).inspect();

    const id = randomUUID();
    const answer = await call(rx.url, 'POST', `/v1/services/${service}/rollback?toRelease=${checked}&deploymentId=${id}`);
    assert.equal(answer.status, 422, JSON.stringify(answer.body));
    const error = answer.body.error as { code: string; details: { deployment: { state: string; failure: { stage: string; restored: unknown; health?: { attempts: number } } } } };
    assert.equal(error.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    assert.equal(error.details.deployment.state, 'FAILED');
    assert.equal(error.details.deployment.failure.stage, 'ROLLING_BACK');
    assert.equal(error.details.deployment.failure.health?.attempts, 3);
    assert.deepEqual(error.details.deployment.failure.restored, { outcome: 'previous', containerId: running.Id });
    const now = await target.getContainer(service).inspect();
    assert.equal(now.Id, running.Id, 'what ran before the rollback runs again');
    assert.equal(now.State.Running, true);
    assert.equal((await target.getImage(`${repo}:3`).inspect()).Id, imageIds.get(`${repo}:3`));
    const failed = await watcher.until(id, 'deployment.failed');
    assert.equal(failed.data.state, 'FAILED');
    assert.equal((failed.data.release as { id: string }).id, checked);
  });

  test('what is retained survives a restart, in a 0600 file named after the service', async () => {
    const before = await listed();
    await rx.stop();
    await nc.drain();
    await start();
    assert.deepEqual(await listed(), before);
    const dir = join(dataDir, 'releases');
    assert.deepEqual(await readdir(dir), [`${service}.json`]);
    assert.equal((await stat(join(dir, `${service}.json`))).mode & 0o777, 0o600);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
  });

  test('a receiver killed in the middle of a rollback to a release puts back what ran before', async () => {
    const [newest] = (await listed()).releases;
    const running = await target.getContainer(service).inspect();
    const back = (await listed()).releases.find((r) => r.id !== newest?.id && r.services[0]?.imageId !== running.Image)?.id ?? '';
    await rx.stop();
    await nc.drain();
    await start({ FERRY_TEST_CRASH_AT: 'during-validate' });
    const id = randomUUID();
    const cut = await call(rx.url, 'POST', `/v1/services/${service}/rollback?toRelease=${back}&deploymentId=${id}`).then(() => 'answered', (err: unknown) => String(err));
    assert.notEqual(cut, 'answered', 'the receiver died before it answered');
    while (rx.child.exitCode === null && rx.child.signalCode === null) await sleep(50);
    await nc.drain();
    await start();
    const record = (await call(rx.url, 'GET', `/v1/deployments/${id}`)).body as { kind: string; state: string; toRelease: string; error?: { code: string } };
    assert.deepEqual([record.kind, record.toRelease, record.state, record.error?.code], ['rollback', back, 'FAILED', 'FERRY_ERR_INTERRUPTED']);
    const now = await target.getContainer(service).inspect();
    assert.equal(now.Id, running.Id, 'what ran before runs again');
    assert.equal(now.State.Running, true);
    assert.equal(await target.getContainer(`${service}.ferry-next`).inspect().then(() => true, () => false), false);
  });
});
