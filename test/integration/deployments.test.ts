/**
 * The deployment engine against real `ferry receiver` processes and real Docker engines: the
 * on-disk journal and its API, idempotent deployment ids (also across a restart), one deployment
 * per service at a time, reconcile after a SIGKILL between stopping the old container and
 * starting the new, manual rollback, image retention, the disk-space guard, and a private dockerd
 * restarted while an image loads. Nothing is mocked.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { signRequest } from '@ferry/auth';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { digestOf } from '@ferry/integrity';
import { FerryError, type DeploymentResult, type ManifestInput } from '@ferry/protocol';
import { buildPackage, inspectImage, uploadOneShot } from '@ferry/sender';
import { ROOT, buildTestImage, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { healthGate } from '../helpers/health-gate.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`dep-${run}`);
const hostId = `dep-${run}`;
const repo = `ferry-dep-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));
const services: string[] = [];
const receivers: ReceiverProcess[] = [];
const dataDirs: string[] = [];

interface Answer { status: number; body: Record<string, unknown> }
interface Journalled {
  deploymentId: string; kind: string; service: string; state: string; imageId: string;
  states: { state: string; at: string }[]; events: { type: string }[]; envNames?: string[];
  containerId?: string; error?: { code: string }; finishedAt?: string;
}
type Outcome = { ok: true; result: DeploymentResult } | { ok: false; status: number; code: string; details: Record<string, unknown> | undefined };

function serviceName(label: string): string {
  const name = `${label}-${run}`;
  services.push(name);
  return name;
}

/** A signed request without a body, as any client of the deployments API sends it. */
function call(url: string, method: 'GET' | 'POST', path: string): Promise<Answer> {
  const headers = signRequest({ method, path, contentDigest: digestOf(''), audience: hostId, ...key });
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path, method, headers: { ...headers, 'content-length': '0' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function record(url: string, id: string): Promise<Journalled> {
  const answer = await call(url, 'GET', `/v1/deployments/${id}`);
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  return answer.body as unknown as Journalled;
}

async function latest(url: string, service: string, limit = 1): Promise<Journalled[]> {
  const answer = await call(url, 'GET', `/v1/deployments?service=${service}&limit=${limit}`);
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  return (answer.body as { deployments: Journalled[] }).deployments;
}

async function receiver(extra: Record<string, string> = {}, dockerHost = s.targetDockerHost): Promise<ReceiverProcess> {
  const rx = await startReceiverProcess({ DOCKER_HOST: dockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, ...extra });
  receivers.push(rx);
  // A receiver with in-memory nonces refuses what was signed before it started (same second included).
  while ((await call(rx.url, 'GET', '/v1/deployments?limit=1')).status === 401) await new Promise((r) => setTimeout(r, 100));
  return rx;
}

async function dataDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-dep-'));
  dataDirs.push(dir);
  return dir;
}

const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };

/** `ferry push` as a user runs it; the container needs no network for these tests. */
async function push(url: string, image: string, service: string, extra: string[] = []): Promise<{ code: number; json: Record<string, unknown> }> {
  const result = await runFerry(['push', image, '--to', url, '--name', service, '--network', 'none', '--json', ...extra], senderEnv);
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(result.stdout) as Record<string, unknown>;
  } catch {
    json = { stdout: result.stdout, stderr: result.stderr };
  }
  return { code: result.code, json };
}

function errorCode(json: Record<string, unknown>): string | undefined {
  return (json.error as { code?: string } | undefined)?.code;
}

/** A deployment under an id the test chooses, through the sender's own package and upload modules. */
async function deployWithId(url: string, image: string, service: ManifestInput['service'], deploymentId: string): Promise<Outcome> {
  const facts = await inspectImage(buildImages, image);
  const pkg = await buildPackage(buildImages, facts, 'zstd');
  try {
    const manifest: ManifestInput = {
      schema: 'ferry.manifest/v1', deploymentId, createdAt: new Date().toISOString(),
      image: { ref: facts.ref, id: facts.id, diffIds: facts.diffIds },
      package: { format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest },
      service,
    };
    const outcome = await uploadOneShot({
      url, credentials: key, audience: hostId, manifestJson: JSON.stringify(manifest), packagePath: pkg.path, packageSize: pkg.size,
    });
    return { ok: true, result: outcome.result };
  } catch (err) {
    if (err instanceof FerryError) return { ok: false, status: err.status, code: err.code, details: err.details };
    throw err;
  } finally {
    await pkg.remove();
  }
}

async function inspect(name: string, engine = target): Promise<{ Id: string; Image: string; State: { Running: boolean; StartedAt: string }; Config: { Labels: Record<string, string> } } | undefined> {
  return engine.getContainer(name).inspect().catch(() => undefined);
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

describe('deployment engine: journal, API, idempotency, locking, reconcile, rollback, retention', { timeout: 900_000 }, () => {
  let v1: string;
  let v2: string;

  before(async () => {
    [v1, v2] = await Promise.all([
      buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`),
      buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`),
      buildTestImage(s.buildDockerHost, `${repo}:3`, `v3-${run}`),
    ]);
  });

  after(async () => {
    for (const rx of receivers) await rx.stop().catch(() => undefined);
    for (const name of services) {
      for (const suffix of ['', '.ferry-previous', '.ferry-next', '.ferry-parked']) {
        await target.getContainer(`${name}${suffix}`).remove({ force: true }).catch(() => undefined);
      }
    }
    for (const tag of ['1', '2', '3', 'r1', 'r2', 'r3', 'r4']) {
      await target.getImage(`${repo}:${tag}`).remove({ force: true }).catch(() => undefined);
      await build.getImage(`${repo}:${tag}`).remove({ force: true }).catch(() => undefined);
    }
    for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
  });

  test('API: a record holds every state with its time, env names but no env value, and lists newest first', async () => {
    const rx = await receiver();
    const service = serviceName('api');
    const secret = `s3cr3t-${randomBytes(12).toString('hex')}`;
    const first = await push(rx.url, `${repo}:1`, service, ['--env', `TOKEN=${secret}`, '--env', 'PORT=8080']);
    assert.equal(first.code, 0, JSON.stringify(first.json));
    const id = first.json.deploymentId as string;

    const r = await record(rx.url, id);
    assert.equal(r.state, 'COMPLETED');
    assert.equal(r.kind, 'deploy');
    assert.equal(r.imageId, v1);
    assert.deepEqual(r.states.map((x) => x.state), ['RECEIVING', 'VERIFYING', 'LOADING', 'DEPLOYING', 'VALIDATING', 'COMPLETED']);
    assert.ok(r.states.every((x, i) => i === 0 || x.at >= (r.states[i - 1]?.at ?? '')), 'timestamps in order');
    assert.deepEqual(r.envNames, ['PORT', 'TOKEN']);
    assert.equal(r.containerId, (await inspect(service))?.Id);
    assert.ok(r.finishedAt);

    const journalDir = join(rx.dataDir, 'journal');
    for (const file of await readdir(journalDir)) {
      assert.ok(!(await readFile(join(journalDir, file), 'utf8')).includes(secret), 'no env value on disk');
    }

    const second = await push(rx.url, `${repo}:2`, service);
    assert.equal(second.code, 0, JSON.stringify(second.json));
    const listed = await latest(rx.url, service, 5);
    assert.deepEqual(listed.map((x) => x.deploymentId), [second.json.deploymentId, id], 'newest first');
    assert.equal((await latest(rx.url, service, 1)).length, 1);

    const missing = await call(rx.url, 'GET', `/v1/deployments/${randomUUID()}`);
    assert.equal(missing.status, 404);
    assert.equal((missing.body.error as { code: string }).code, 'FERRY_ERR_NOT_FOUND');
    const badLimit = await call(rx.url, 'GET', `/v1/deployments?service=${service}&limit=0`);
    assert.equal(badLimit.status, 400);
    const unsigned = await fetch(`${rx.url}/v1/deployments/${id}`);
    assert.equal(unsigned.status, 401, 'the API is signed like every /v1 path');
  });

  test('row 27: the same deployment id twice, also after a restart, returns the stored result and deploys once', async () => {
    const dir = await dataDir();
    let rx = await receiver({ FERRY_DATA_DIR: dir });
    const service = serviceName('idem');
    const id = randomUUID();
    const spec = { name: service, network: 'none' as const, env: {} };
    const first = await deployWithId(rx.url, `${repo}:1`, spec, id);
    assert.ok(first.ok, JSON.stringify(first));
    assert.equal(first.result.state, 'COMPLETED');
    const container = await inspect(service);
    assert.equal(container?.Id, first.result.containerId);

    const again = await deployWithId(rx.url, `${repo}:1`, spec, id);
    assert.ok(again.ok, JSON.stringify(again));
    assert.deepEqual(again.result, first.result, 'the stored answer, unchanged');
    const after1 = await inspect(service);
    assert.equal(after1?.Id, container?.Id);
    assert.equal(after1?.State.StartedAt, container?.State.StartedAt, 'the container was not touched');

    await rx.stop();
    rx = await receiver({ FERRY_DATA_DIR: dir });
    const afterRestart = await deployWithId(rx.url, `${repo}:1`, spec, id);
    assert.ok(afterRestart.ok, JSON.stringify(afterRestart));
    assert.deepEqual(afterRestart.result, first.result, 'the journal answers across a restart');
    const after2 = await inspect(service);
    assert.equal(after2?.Id, container?.Id);
    assert.equal(after2?.State.StartedAt, container?.State.StartedAt);
    assert.equal((await latest(rx.url, service, 10)).length, 1, 'one deployment in the journal');

    const reused = await deployWithId(rx.url, `${repo}:2`, spec, id);
    assert.equal(reused.ok, false);
    assert.equal(!reused.ok && reused.code, 'FERRY_ERR_DEPLOYMENT_CONFLICT', 'the same id for another image is not a retry');
    assert.equal((await inspect(service))?.Id, container?.Id);

    // A failed deployment's retry gets the same failure back, not a second attempt.
    const failing = randomUUID();
    const bad = { name: service, network: 'none' as const, env: {}, health: { type: 'http' as const, url: 'http://127.0.0.1:9/never', retries: 2, intervalMs: 50, timeoutMs: 200 } };
    const failed = await deployWithId(rx.url, `${repo}:2`, bad, failing);
    assert.equal(!failed.ok && failed.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    const failedAgain = await deployWithId(rx.url, `${repo}:2`, bad, failing);
    assert.equal(!failedAgain.ok && failedAgain.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    assert.deepEqual(!failedAgain.ok && failedAgain.details, !failed.ok && failed.details);
    assert.equal((await inspect(service))?.Id, container?.Id, 'rolled back once, not deployed again');
  });

  test('row 26: a second deployment of a busy service gets 409; concurrent pushes never leave two containers', async () => {
    const rx = await receiver();
    const service = serviceName('lock');
    const gate = await healthGate();
    try {
      const id = randomUUID();
      const held = deployWithId(rx.url, `${repo}:1`, {
        name: service, network: 'none', env: {},
        health: { type: 'http', url: gate.url, timeoutMs: 60_000, intervalMs: 100, retries: 1000 },
      }, id);
      await Promise.race([gate.firstProbe, held.then((o) => { throw new Error(`the deployment ended before its health check: ${JSON.stringify(o)}`); })]);
      assert.equal((await record(rx.url, id)).state, 'VALIDATING');

      const second = await push(rx.url, `${repo}:2`, service);
      assert.equal(second.code, 1, JSON.stringify(second.json));
      assert.equal(errorCode(second.json), 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS');
      const sameId = await deployWithId(rx.url, `${repo}:1`, { name: service, network: 'none', env: {} }, id);
      assert.equal(!sameId.ok && sameId.code, 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS', 'a retry of a running deployment');
      const rollback = await call(rx.url, 'POST', `/v1/services/${service}/rollback`);
      assert.equal(rollback.status, 409);
      assert.equal((rollback.body.error as { code: string }).code, 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS');

      gate.release();
      const first = await held;
      assert.ok(first.ok, JSON.stringify(first));
      assert.equal(first.result.state, 'COMPLETED');
      assert.equal((await inspect(service))?.Config.Labels['ferry.deployment-id'], id);
    } finally {
      gate.release();
      await gate.close();
    }

    // Three pushes at once: each deploys or is refused, and exactly one container runs afterwards.
    const burst = await Promise.all([`${repo}:2`, `${repo}:3`, `${repo}:1`].map((image) => push(rx.url, image, service)));
    for (const result of burst) {
      if (result.code === 0) assert.equal((result.json.deployment as { state: string }).state, 'COMPLETED');
      else assert.equal(errorCode(result.json), 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS', JSON.stringify(result.json));
    }
    const completed = burst.filter((r) => r.code === 0).map((r) => r.json.deploymentId);
    assert.ok(completed.length >= 1);
    const running = await target.listContainers({ filters: { label: [`ferry.service=${service}`] } });
    assert.equal(running.length, 1, 'one running container for the service');
    const newest = (await latest(rx.url, service, 10)).find((r) => r.state === 'COMPLETED');
    assert.equal(running[0]?.Labels['ferry.deployment-id'], newest?.deploymentId);
    assert.ok(completed.includes(newest?.deploymentId));
    assert.equal(await inspect(`${service}.ferry-next`), undefined);
  });

  test('row 25: a receiver SIGKILLed between stopping the old container and starting the new reconciles on boot', async () => {
    const dir = await dataDir();
    const service = serviceName('crash');
    let rx = await receiver({ FERRY_DATA_DIR: dir });
    const first = await push(rx.url, `${repo}:1`, service);
    assert.equal(first.code, 0, JSON.stringify(first.json));
    const original = await inspect(service);
    assert.ok(original?.State.Running);
    await rx.stop();

    for (const point of ['after-stop-old', 'before-start-new'] as const) {
      const doomed = await receiver({ FERRY_DATA_DIR: dir, FERRY_TEST_CRASH_AT: point });
      const attempt = await push(doomed.url, `${repo}:2`, service);
      assert.notEqual(attempt.code, 0, 'the push lost its receiver');
      const death = await exited(doomed.child);
      assert.equal(death.signal, 'SIGKILL', point);
      receivers.splice(receivers.indexOf(doomed), 1);

      // The engine shows the exact step: the old container stopped and kept aside, the new not running.
      const previous = await inspect(`${service}.ferry-previous`);
      assert.equal(previous?.Id, original.Id);
      assert.equal(previous?.State.Running, false);
      if (point === 'after-stop-old') {
        assert.equal(await inspect(service), undefined);
        assert.equal((await inspect(`${service}.ferry-next`))?.State.Running, false);
      } else {
        const fresh = await inspect(service);
        assert.notEqual(fresh?.Id, original.Id);
        assert.equal(fresh?.State.Running, false);
      }
      // A write torn by the kill: the journal must read past it.
      const journalDir = join(dir, 'journal');
      for (const file of await readdir(journalDir)) await appendFile(join(journalDir, file), '{"type":"state","at":"2026-');

      rx = await receiver({ FERRY_DATA_DIR: dir });
      const now = await inspect(service);
      assert.equal(now?.Id, original.Id, `${point}: the previous version runs again`);
      assert.equal(now?.State.Running, true);
      assert.equal(await inspect(`${service}.ferry-next`), undefined);
      assert.equal(await inspect(`${service}.ferry-previous`), undefined);
      const [interrupted] = await latest(rx.url, service);
      assert.ok(interrupted);
      assert.equal(interrupted.imageId, v2);
      assert.equal(interrupted.state, 'ROLLED_BACK');
      assert.equal(interrupted.error?.code, 'FERRY_ERR_INTERRUPTED');
      const states = interrupted.states.map((x) => x.state);
      assert.deepEqual(states.slice(-3), ['DEPLOYING', 'ROLLING_BACK', 'ROLLED_BACK'], states.join(','));
      // The stored outcome is what a retry of that deployment gets.
      const retried = await call(rx.url, 'GET', `/v1/deployments/${interrupted.deploymentId}`);
      assert.equal((retried.body.result as { error: { code: string } }).error.code, 'FERRY_ERR_INTERRUPTED');
      await rx.stop();
    }

    rx = await receiver({ FERRY_DATA_DIR: dir });
    const again = await push(rx.url, `${repo}:2`, service);
    assert.equal(again.code, 0, `deployable after the reconcile: ${JSON.stringify(again.json)}`);
    assert.equal((await inspect(service))?.Image, v2);
  });

  test('manual rollback: swaps back to the kept container, journalled with its events; idempotent by id; 409 without a previous', async () => {
    const rx = await receiver();
    const service = serviceName('rb');
    assert.equal((await push(rx.url, `${repo}:1`, service)).code, 0);
    const one = await inspect(service);
    assert.equal((await push(rx.url, `${repo}:2`, service)).code, 0);
    const two = await inspect(service);
    assert.equal(two?.Image, v2);

    const id = randomUUID();
    const answer = await call(rx.url, 'POST', `/v1/services/${service}/rollback?deploymentId=${id}`);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.state, 'ROLLED_BACK');
    assert.equal(answer.body.containerId, one?.Id);
    assert.equal(answer.body.imageId, v1);
    const now = await inspect(service);
    assert.equal(now?.Id, one?.Id);
    assert.equal(now?.State.Running, true);
    assert.equal((await inspect(`${service}.ferry-previous`))?.Id, two?.Id, 'the replaced one is kept for a roll forward');
    assert.equal((await target.getImage(`${repo}:1`).inspect()).Id, v1);

    const journalled = await record(rx.url, id);
    assert.equal(journalled.kind, 'rollback');
    assert.equal(journalled.state, 'ROLLED_BACK');
    assert.deepEqual(journalled.events.map((e) => e.type), ['rollback.started', 'rollback.completed']);

    const retried = await call(rx.url, 'POST', `/v1/services/${service}/rollback?deploymentId=${id}`);
    assert.equal(retried.status, 200);
    assert.deepEqual(retried.body, answer.body);
    const still = await inspect(service);
    assert.equal(still?.Id, one?.Id, 'a retried rollback does not swap again');
    assert.equal(still?.State.StartedAt, now?.State.StartedAt);

    const forward = await call(rx.url, 'POST', `/v1/services/${service}/rollback`);
    assert.equal(forward.status, 200);
    assert.equal((await inspect(service))?.Id, two?.Id, 'a second rollback rolls forward');

    const lone = serviceName('rb-lone');
    assert.equal((await push(rx.url, `${repo}:1`, lone)).code, 0);
    const nothing = await call(rx.url, 'POST', `/v1/services/${lone}/rollback`);
    assert.equal(nothing.status, 409);
    assert.equal((nothing.body.error as { code: string }).code, 'FERRY_ERR_NOTHING_TO_ROLL_BACK');
    assert.equal((await inspect(lone))?.State.Running, true);
  });

  test('retention: only the newest FERRY_RETAIN_IMAGES images of a service stay; the disk guard answers 507', async () => {
    const ids = await Promise.all(['r1', 'r2', 'r3', 'r4'].map((tag) => buildTestImage(s.buildDockerHost, `${repo}:${tag}`, `${tag}-${run}`)));
    const rx = await receiver({ FERRY_RETAIN_IMAGES: '2' });
    const service = serviceName('keep');
    for (const tag of ['r1', 'r2', 'r3', 'r4']) {
      const result = await push(rx.url, `${repo}:${tag}`, service);
      assert.equal(result.code, 0, JSON.stringify(result.json));
    }
    const present = await Promise.all(ids.map((id) => target.getImage(id).inspect().then(() => true, () => false)));
    assert.deepEqual(present, [false, false, true, true], 'r1 and r2 removed; r3 (kept for rollback) and r4 (running) stay');
    assert.equal((await inspect(service))?.Image, ids[3]);
    assert.equal((await inspect(`${service}.ferry-previous`))?.Image, ids[2]);

    const full = await receiver({ FERRY_MIN_FREE_BYTES: String(2 ** 52) });
    const refused = await push(full.url, `${repo}:1`, serviceName('full'));
    assert.equal(refused.code, 1, JSON.stringify(refused.json));
    assert.equal(errorCode(refused.json), 'FERRY_ERR_DISK_FULL');
    assert.deepEqual(await readdir(join(full.dataDir, 'journal')), [], 'nothing journalled, nothing deployed');
  });
});

/** A dockerd of the test's own, so that restarting it disturbs no one else. */
class PrivateDockerd {
  readonly dir: string;
  readonly host: string;
  #child: ChildProcess | undefined;
  readonly #args: string[];

  constructor(dir: string) {
    this.dir = dir;
    this.host = `unix://${dir}/d.sock`;
    const ns = `fx-${run}-${randomBytes(2).toString('hex')}`;
    this.#args = [
      '--storage-driver=overlay2', '--iptables=false', '--ip-masq=false', '--bridge=none',
      '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--host', this.host,
      '--pidfile', join(dir, 'd.pid'), '--config-file', join(dir, 'empty.json'),
      '--containerd-namespace', ns, '--containerd-plugins-namespace', `${ns}-p`,
    ];
  }

  async start(): Promise<void> {
    await writeFile(join(this.dir, 'empty.json'), '{}');
    this.#child = spawn('dockerd', this.#args, { stdio: 'ignore' });
    const client = dockerodeFor(this.host);
    for (;;) {
      if (this.#child.exitCode !== null) throw new Error(`private dockerd exited with ${this.#child.exitCode}`);
      if (await client.ping().then(() => true, () => false)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(): Promise<void> {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const done = exited(child);
    child.kill('SIGTERM');
    await done;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }
}

describe('row 28: a Docker daemon restarted mid-load', { timeout: 600_000 }, () => {
  let dockerd: PrivateDockerd;
  let dir: string;
  let ctx: string;
  const bigRef = `${repo}:big`;

  before(async () => {
    dir = await mkdtemp('/tmp/fx-');
    dockerd = new PrivateDockerd(dir);
    await dockerd.start();
    // 96 MiB of random bytes in one layer: zstd cannot shrink it, so the load takes a while.
    ctx = await mkdtemp(join(tmpdir(), 'ferry-big-'));
    await mkdir(join(ctx, 'bin'));
    await writeFile(join(ctx, 'bin', 'busybox'), await readFile('/bin/busybox'), { mode: 0o755 });
    await writeFile(join(ctx, 'blob'), randomBytes(96 * 1024 * 1024));
    await writeFile(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY bin/ /bin/\nCOPY blob /blob\nENTRYPOINT ["/bin/busybox", "sleep", "100000"]\n');
    const built = await runProcess('docker', ['-H', s.buildDockerHost, 'build', '-q', '-t', bigRef, ctx], { DOCKER_BUILDKIT: '0' });
    assert.equal(built.code, 0, built.stderr);
  });

  after(async () => {
    for (const rx of receivers) await rx.stop().catch(() => undefined);
    await dockerd?.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    await rm(ctx, { recursive: true, force: true }).catch(() => undefined);
    await build.getImage(bigRef).remove({ force: true }).catch(() => undefined);
  });

  test('the deployment fails with a typed error (or completes), the journal says which, and a retry by id is safe', async () => {
    const rx = await receiver({}, dockerd.host);
    const engine = dockerodeFor(dockerd.host);
    const service = serviceName('restart');
    const id = randomUUID();
    const spec = { name: service, network: 'none' as const, env: {} };
    const pending = deployWithId(rx.url, bigRef, spec, id);
    // Restart the engine as soon as the journal says the image is loading.
    let seen: string | undefined;
    for (;;) {
      const answer = await call(rx.url, 'GET', `/v1/deployments/${id}`);
      seen = answer.status === 200 ? (answer.body as unknown as Journalled).state : undefined;
      if (seen !== undefined && seen !== 'RECEIVING' && seen !== 'VERIFYING') break;
      await new Promise((r) => setTimeout(r, 5));
    }
    await dockerd.restart();
    const outcome = await pending;

    const journalled = await record(rx.url, id);
    assert.ok(journalled.finishedAt, 'the deployment has an outcome, it does not hang');
    if (outcome.ok) {
      assert.equal(outcome.result.state, 'COMPLETED');
      assert.equal(journalled.state, 'COMPLETED');
    } else {
      assert.notEqual(outcome.code, 'FERRY_ERR_INTERNAL', `a typed error: ${JSON.stringify(outcome)}`);
      assert.ok(['FERRY_ERR_DOCKER_UNAVAILABLE', 'FERRY_ERR_LOAD_FAILED', 'FERRY_ERR_DOCKER', 'FERRY_ERR_BAD_ARCHIVE', 'FERRY_ERR_IMAGE_MISMATCH', 'FERRY_ERR_CONTAINER_FAILED'].includes(outcome.code), outcome.code);
      assert.equal(journalled.error?.code, outcome.code);
      assert.ok(['FAILED', 'ROLLED_BACK'].includes(journalled.state), journalled.state);
    }

    const before = await inspect(service, engine);
    const retry = await deployWithId(rx.url, bigRef, spec, id);
    assert.equal(retry.ok, outcome.ok);
    if (retry.ok && outcome.ok) assert.deepEqual(retry.result, outcome.result);
    if (!retry.ok && !outcome.ok) assert.equal(retry.code, outcome.code);
    const afterRetry = await inspect(service, engine);
    assert.equal(afterRetry?.Id, before?.Id, 'the retry deployed nothing');
    assert.equal(afterRetry?.State.StartedAt, before?.State.StartedAt);

    // The engine is back: a new deployment of the same package goes through.
    const fresh = await deployWithId(rx.url, bigRef, spec, randomUUID());
    assert.ok(fresh.ok, JSON.stringify(fresh));
    assert.equal(fresh.result.state, 'COMPLETED');
    assert.equal((await inspect(service, engine))?.State.Running, true);
  });
});

describe('row 28: a Docker daemon restarted mid-run', { timeout: 600_000 }, () => {
  let dockerd: PrivateDockerd;
  let dir: string;

  before(async () => {
    dir = await mkdtemp('/tmp/fx-');
    dockerd = new PrivateDockerd(dir);
    await Promise.all([
      dockerd.start(),
      buildTestImage(s.buildDockerHost, `${repo}:m1`, `m1-${run}`),
      buildTestImage(s.buildDockerHost, `${repo}:m2`, `m2-${run}`),
    ]);
  });

  after(async () => {
    for (const rx of receivers) await rx.stop().catch(() => undefined);
    await dockerd?.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    for (const tag of ['m1', 'm2']) await build.getImage(`${repo}:${tag}`).remove({ force: true }).catch(() => undefined);
  });

  test('the engine gone during the health check: the deployment rolls back once it is back, with a typed error; a retry by id is safe', async () => {
    const rx = await receiver({}, dockerd.host);
    const engine = dockerodeFor(dockerd.host);
    const service = serviceName('midrun');
    const first = await deployWithId(rx.url, `${repo}:m1`, { name: service, network: 'none', env: {} }, randomUUID());
    assert.ok(first.ok, JSON.stringify(first));
    const original = await inspect(service, engine);

    const gate = await healthGate();
    try {
      const id = randomUUID();
      const spec = { name: service, network: 'none' as const, env: {}, health: { type: 'http' as const, url: gate.url, timeoutMs: 300, intervalMs: 100, retries: 1000 } };
      const pending = deployWithId(rx.url, `${repo}:m2`, spec, id);
      await Promise.race([gate.firstProbe, pending.then((o) => { throw new Error(`the deployment ended before its health check: ${JSON.stringify(o)}`); })]);
      await dockerd.stop();
      // The check fails (engine gone, or the container stopped with it); the rollback then waits
      // for the engine to come back.
      while ((await record(rx.url, id)).state === 'VALIDATING') await new Promise((r) => setTimeout(r, 50));
      await dockerd.start();
      // The rollback waits for the restored container to pass the same check: held, it would take
      // all 1000 retries (~7 minutes) before the outcome came.
      gate.release();
      const outcome = await pending;
      assert.equal(outcome.ok, false);
      const code = !outcome.ok ? outcome.code : '';
      assert.ok(['FERRY_ERR_DOCKER_UNAVAILABLE', 'FERRY_ERR_DOCKER', 'FERRY_ERR_HEALTHCHECK_FAILED'].includes(code), JSON.stringify([outcome, rx.logs.filter((l) => l.level === 50)]));
      const journalled = await record(rx.url, id);
      assert.equal(journalled.state, 'ROLLED_BACK', JSON.stringify(journalled.error));
      assert.equal(journalled.error?.code, code);

      const now = await inspect(service, engine);
      assert.equal(now?.Id, original?.Id, 'the previous version runs again');
      assert.equal(now?.State.Running, true);
      const retry = await deployWithId(rx.url, `${repo}:m2`, spec, id);
      assert.equal(!retry.ok && retry.code, code, 'the stored outcome');
      const afterRetry = await inspect(service, engine);
      assert.equal(afterRetry?.Id, original?.Id);
      assert.equal(afterRetry?.State.StartedAt, now?.State.StartedAt, 'the retry touched nothing');
    } finally {
      gate.release();
      await gate.close();
    }
  });
});

function runProcess(command: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, stderr }));
  });
}
