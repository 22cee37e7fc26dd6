/**
 * Resource budgets against a real receiver on the stack's target engine and the real build
 * engine: the receiver reports its capacity (GET /v1/capacity), and `ferry deploy` refuses a
 * release that asks more memory than the host's budget (FERRY_BUDGET_MEMORY=64m) before anything
 * is built or sent — the image exists on neither engine afterwards — naming the host and the
 * numbers. Within the budget it deploys, and a service deployed again counts once: its new limit
 * replaces the one it runs with.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { ReceiverClient } from '@ferry/sender';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`budget-${run}`);
const service = `budget-${run}`;
const image = `budget-${run}:1`;
const hostId = `budget-${run}`;
const MiB = 1024 ** 2;

interface Summary { ok: boolean; release: { state: string; error?: { code: string; message: string } } }
interface ServiceLine { service: string; state: string; build?: unknown }

function parseRun(stdout: string): { services: ServiceLine[]; summary: Summary } {
  const lines = stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as unknown);
  return { services: lines.slice(0, -1) as ServiceLine[], summary: lines.at(-1) as Summary };
}

describe('resource budgets', { timeout: 300_000 }, () => {
  let rx: ReceiverProcess;
  let dir: string;
  const target = dockerodeFor(s.targetDockerHost);
  const build = dockerodeFor(s.buildDockerHost);
  const env = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };

  before(async () => {
    rx = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_BUDGET_MEMORY: '64m' });
    dir = await mkdtemp(join(tmpdir(), 'ferry-budget-'));
    await writeFile(join(dir, 'busybox'), await readFile(process.env.FERRY_BUSYBOX ?? '/bin/busybox'), { mode: 0o755 });
    await writeFile(join(dir, 'Dockerfile'), 'FROM scratch\nCOPY busybox /bin/busybox\nCMD ["/bin/busybox", "sleep", "3600"]\n');
  });

  after(async () => {
    await rx?.stop().catch(() => undefined);
    await removeService(target, service);
    await removeImages(target, [image]);
    await removeImages(build, [image]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function deploy(memory: string): Promise<{ code: number; stdout: string; stderr: string }> {
    const file = join(dir, 'ferry.yaml');
    await writeFile(file, stringify({ version: 1, name: 'budget', services: { [service]: { image, build: { context: '.' }, targets: [rx.url], network: 'none', memory } } }));
    return await runFerry(['deploy', '-f', file, '--json'], env);
  }

  const imageOn = async (docker: typeof target): Promise<boolean> => await docker.getImage(image).inspect().then(() => true, () => false);

  test('the receiver reports its capacity and its configured budget', async () => {
    const capacity = await new ReceiverClient({ url: rx.url, credentials: key }).capacity();
    assert.ok(capacity);
    assert.equal(capacity.hostId, hostId);
    assert.equal(capacity.budget.memoryBytes, 64 * MiB);
    assert.ok(capacity.engine && capacity.engine.memoryBytes > 0 && capacity.engine.cpus > 0, JSON.stringify(capacity.engine));
    assert.equal(capacity.budget.cpus, capacity.engine.cpus, 'CPUs default to the engine\'s');
    assert.ok(capacity.disk.dataDir.freeBytes > 0);
    assert.ok(!capacity.committed.services.some((x) => x.service === service));
  });

  test('a release asking more memory than the budget is refused before anything is built or sent', async () => {
    const result = await deploy('128m');
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const { services, summary } = parseRun(result.stdout);
    assert.equal(summary.release.error?.code, 'FERRY_ERR_OVER_BUDGET', result.stdout);
    assert.match(summary.release.error.message, new RegExp(`${hostId}: memory 128 MiB asked \\(${service} 128 MiB\\) \\+ [0-9.]+ [KMGT]?i?B running > budget 64 MiB`));
    assert.ok(services.every((x) => x.build === undefined && x.state === 'failed'), result.stdout);
    assert.equal(await imageOn(build), false, 'not built');
    assert.equal(await imageOn(target), false, 'not sent');
    assert.equal((await new ReceiverClient({ url: rx.url, credentials: key }).deployments({ service })).length, 0, 'no deployment on the host');
  });

  test('within the budget it deploys, and a service deployed again counts once', async () => {
    const first = await deploy('40m');
    assert.equal(first.code, 0, first.stdout + first.stderr);
    const capacity = await new ReceiverClient({ url: rx.url, credentials: key }).capacity();
    assert.deepEqual(capacity?.committed.services.find((x) => x.service === service), { service, memoryBytes: 40 * MiB, cpus: 0 });
    // 48m replaces the 40m it runs with: 48m, not 88m, against the 64m budget.
    const again = await deploy('48m');
    assert.equal(again.code, 0, again.stdout + again.stderr);
  });
});
