/**
 * A failed deployment never uses up the rollback target, against a real `ferry receiver` on the
 * stack's target engine: versions 1 and 2 are deployed, a third fails and is rolled back to 2,
 * and `POST /v1/services/:name/rollback` then still finds version 1 — before, the failure had
 * removed it and the rollback answered "nothing to roll back".
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { buildTestImage, runFerry, startReceiverProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { buildFromDockerfile } from '../helpers/images.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { signedCall, type Answer } from '../helpers/registry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`rt-${run}`);
const hostId = `rt-${run}`;
const service = `rt-${run}`;
const repo = `ferry-rt-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
const refs = [`${repo}:1`, `${repo}:2`, `${repo}:crash`];

/** A signed request without a body, as any client of the deployments API sends it. */
function call(url: string, method: 'GET' | 'POST', path: string): Promise<Answer> {
  return signedCall(url, { ...key, audience: hostId }, method, path);
}

const idOf = async (name: string): Promise<string | undefined> => (await target.getContainer(name).inspect().catch(() => undefined))?.Id;

describe('a failed deployment leaves the rollback target where it was', { timeout: 300_000 }, () => {
  let rx: ReceiverProcess;

  const push = async (ref: string): Promise<RunResult> => {
    // A receiver refuses what was signed before it started (the same second included): push until it takes it.
    for (;;) {
      const result = await runFerry(['push', ref, '--to', rx.url, '--name', service, '--network', 'none', '--json'], senderEnv);
      if (!/FERRY_ERR_STALE_TIMESTAMP|FERRY_ERR_REPLAY/.test(result.stdout)) return result;
      await sleep(500);
    }
  };

  before(async () => {
    await buildTestImage(s.buildDockerHost, refs[0] ?? '', `v1-${run}`);
    await buildTestImage(s.buildDockerHost, refs[1] ?? '', `v2-${run}`);
    // Exec form: the image has busybox and no /bin/sh.
    await buildFromDockerfile(s.buildDockerHost, refs[2] ?? '', `FROM ${repo}:1\nENTRYPOINT ["/bin/busybox", "sh", "-c", "echo broken ${run}; exit 1"]\n`);
    rx = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId });
  });

  after(async () => {
    await rx?.stop();
    await removeService(target, service);
    await removeImages(target, refs);
    await removeImages(build, refs);
  });

  test('versions 1 and 2, a failed 3, then a rollback: version 1 runs', async () => {
    const one = await push(`${repo}:1`);
    assert.equal(one.code, 0, one.stdout + one.stderr);
    const first = await idOf(service);
    const two = await push(`${repo}:2`);
    assert.equal(two.code, 0, two.stdout + two.stderr);
    const second = await idOf(service);
    assert.equal(await idOf(`${service}.ferry-previous`), first, 'version 1 is kept for a rollback');

    const broken = await push(`${repo}:crash`);
    assert.equal(broken.code, 1, broken.stdout + broken.stderr);
    assert.match(broken.stdout, /ROLLED_BACK/);
    assert.equal(await idOf(service), second, 'the failure restored version 2');
    assert.equal(await idOf(`${service}.ferry-previous`), first, 'and version 1 is the rollback target still');
    assert.equal(await idOf(`${service}.ferry-older`), undefined, 'nothing is left aside');

    const rollback = await call(rx.url, 'POST', `/v1/services/${service}/rollback`);
    assert.equal(rollback.status, 200, JSON.stringify(rollback.body));
    assert.equal(rollback.body.state, 'ROLLED_BACK');
    assert.equal(rollback.body.containerId, first);
    const now = await target.getContainer(service).inspect();
    assert.equal(now.Id, first, 'version 1 runs again');
    assert.equal(now.State.Running, true);
    assert.equal(await idOf(`${service}.ferry-previous`), second, 'and version 2 is kept: a second rollback rolls forward');
  });

  test('a deployment that passes drops what it kept aside', async () => {
    const three = await push(`${repo}:2`);
    assert.equal(three.code, 0, three.stdout + three.stderr);
    assert.equal(await idOf(`${service}.ferry-older`), undefined);
    const containers = await target.listContainers({ all: true, filters: { label: [`ferry.service=${service}`] } });
    assert.deepEqual(containers.flatMap((c) => c.Names).sort(), [`/${service}`, `/${service}.ferry-previous`], 'the service and one previous container, no more');
  });
});
