/**
 * `ferry deploy -f ferry.yaml` as a user runs it, against a real `ferry receiver` on the stack's
 * target engine and the real build engine: a file with an image service and a build service is
 * deployed whole; an invalid file is refused with line:column and field path before anything
 * runs; a target that cannot be reached fails its service (exit 1) without stopping the others.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`df-${run}`);
const repo = `ferry-df-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
const names = { web: `web-${run}`, api: `api-${run}`, lone: `lone-${run}` };

interface TargetLine { url: string; host?: string; deploymentId?: string; state: string; ok: boolean; error?: { code: string } }
interface ServiceLine { service: string; image: string; imageId?: string; state: string; ok: boolean; targets: TargetLine[]; error?: { code: string } }

function jsonLines(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('ferry deploy -f', { timeout: 600_000 }, () => {
  let rx: ReceiverProcess;
  let dir: string;

  before(async () => {
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    rx = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `df-${run}` });
    dir = await mkdtemp(join(tmpdir(), 'ferry-df-'));
    // The build service's context, relative to the file: FROM the test image, one file more.
    await mkdir(join(dir, 'api'));
    await writeFile(join(dir, 'api', 'Dockerfile'), `FROM ${repo}:1\nCOPY hello.txt /www/hello.txt\n`);
    await writeFile(join(dir, 'api', 'hello.txt'), `hello ${run}\n`);
  });

  after(async () => {
    await rx?.stop().catch(() => undefined);
    for (const name of Object.values(names)) await removeService(target, name);
    await removeImages(target, [`${repo}:1`, `${repo}-api:1`]);
    await removeImages(build, [`${repo}-api:1`, `${repo}:1`]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a file with an image service and a build service deploys both; env is filled from the environment', async () => {
    await writeFile(join(dir, 'ferry.yaml'), `version: 1
services:
  ${names.web}:
    image: ${repo}:1
    targets: [${rx.url}]
    network: none
    env:
      - GREETING=\${GREETING}
      - LEVEL=\${LEVEL:-info}
    labels: [team=web]
  ${names.api}:
    image: ${repo}-api:1
    build: ./api
    targets: [${rx.url}]
    network: none
    restart: unless-stopped
`);
    const result = await runFerry(['deploy', '-f', join(dir, 'ferry.yaml'), '--json'], { ...senderEnv, GREETING: `hi-${run}` });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const lines = jsonLines(result.stdout);
    const services = lines.filter((l) => 'service' in l) as unknown as ServiceLine[];
    assert.deepEqual(services.map((l) => [l.service, l.state, l.ok]), [[names.web, 'succeeded', true], [names.api, 'succeeded', true]]);
    for (const service of services) {
      assert.deepEqual(service.targets.map((t) => [t.url, t.host, t.state]), [[rx.url, `df-${run}`, 'COMPLETED']]);
    }
    const summary = lines.at(-1) as { ok: boolean; runId: string; releaseId: string; services: number; failed: string[]; release: { id: string; state: string; phases: string[]; outcomes: Record<string, Record<string, string>> } };
    assert.deepEqual([summary.ok, summary.services, summary.failed], [true, 2, []]);
    assert.match(summary.releaseId, /^rel-\d{8}T\d{6}Z-[0-9a-f]{8}$/);
    // No depends_on: one phase, both services at once; the file's directory names the project.
    assert.deepEqual([summary.release.id, summary.release.state, summary.release.phases], [summary.releaseId, 'completed', ['phase-1']]);
    assert.deepEqual(summary.release.outcomes, { [`df-${run}`]: { [names.web]: 'healthy', [names.api]: 'healthy' } });

    const web = await target.getContainer(names.web).inspect();
    assert.equal(web.State.Running, true);
    assert.ok(web.Config.Env.includes(`GREETING=hi-${run}`), web.Config.Env.join(' '));
    assert.ok(web.Config.Env.includes('LEVEL=info'));
    assert.equal(web.Config.Labels.team, 'web');
    const api = await target.getContainer(names.api).inspect();
    assert.equal(api.State.Running, true);
    assert.equal(api.Image, services[1]?.imageId, 'the container runs the image just built');
    assert.equal(api.HostConfig.RestartPolicy?.Name, 'unless-stopped');
  });

  test('an invalid file is refused with file:line:column and field path, exit 2, nothing deployed', async () => {
    const file = join(dir, 'bad.yaml');
    await writeFile(file, `version: 1
services:
  ${names.lone}:
    image: ${repo}:1
    targets: [${rx.url}]
    ports:
      - "80"
    enviroment: {A: b}
`);
    const result = await runFerry(['deploy', '-f', file], senderEnv);
    assert.equal(result.code, 2, result.stdout + result.stderr);
    assert.ok(result.stderr.includes(`${file}:7:9 services.${names.lone}.ports[0]: [hostIp:]hostPort:containerPort[/tcp|udp]`), result.stderr);
    assert.ok(result.stderr.includes(`${file}:8:5 services.${names.lone}.enviroment: unknown field (did you mean env?)`), result.stderr);
    assert.match(result.stderr, /FERRY_ERR_BAD_DEPLOYMENT_FILE/);
    await assert.rejects(target.getContainer(names.lone).inspect(), 'nothing was deployed');

    const json = await runFerry(['deploy', '-f', file, '--json'], senderEnv);
    assert.equal(json.code, 2);
    const body = JSON.parse(json.stdout) as { ok: boolean; error: { code: string; details: { problems: { path: string; line: number; column: number }[] } } };
    assert.equal(body.error.code, 'FERRY_ERR_BAD_DEPLOYMENT_FILE');
    assert.deepEqual(body.error.details.problems.map((p) => [p.path, p.line, p.column]), [[`services.${names.lone}.ports[0]`, 7, 9], [`services.${names.lone}.enviroment`, 8, 5]]);
  });

  test('--only picks one service; an unreachable target fails it (exit 1); with --no-rollback the reachable one stays deployed', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const file = join(dir, 'partial.yaml');
    await writeFile(file, `version: 1
services:
  ${names.lone}:
    image: ${repo}:1
    targets: [${rx.url}, ${dead}]
    network: none
  ${names.web}:
    image: ${repo}:1
    targets: [${dead}]
`);
    const result = await runFerry(['deploy', '-f', file, '--only', names.lone, '--retries', '1', '--no-rollback'], senderEnv);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    assert.match(result.stdout, new RegExp(`✖ ${names.lone}: ${repo}:1 on 1/2 targets`));
    assert.ok(result.stdout.split('\n').some((l) => l.includes(`✔ df-${run}`) && l.includes('COMPLETED')), result.stdout);
    assert.ok(result.stdout.split('\n').some((l) => l.includes(`✖ ${dead}`) && l.includes('FERRY_ERR_RECEIVER_UNREACHABLE')), result.stdout);
    assert.ok(!result.stdout.includes(`${names.web}:`), 'the other service was not touched');
    assert.match(result.stdout, /FERRY_ERR_RELEASE_HALTED\]; release failed/);
    assert.ok(!result.stdout.includes('rolling the release back'), result.stdout);
    assert.equal((await target.getContainer(names.lone).inspect()).State.Running, true);

    const unknown = await runFerry(['deploy', '-f', file, '--only', 'nope'], senderEnv);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /--only nope: no such service/);
  });

  test('a selector target without FERRY_REGISTRY_URL fails that service with a clear error', async () => {
    const file = join(dir, 'selector.yaml');
    await writeFile(file, `version: 1\nservices:\n  ${names.lone}:\n    image: ${repo}:1\n    targets: ["selector:env=prod"]\n`);
    const result = await runFerry(['deploy', '-f', file, '--json'], senderEnv);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const [service] = jsonLines(result.stdout) as unknown as ServiceLine[];
    assert.equal(service?.error?.code, 'FERRY_ERR_CONFIG');
  });
});
