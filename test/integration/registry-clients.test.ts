/**
 * Everything that talks to the registry, against a real `ferry registry` process and real
 * `ferry receiver` processes on the stack's engines: registration (also when the registry comes up
 * after the receiver), heartbeats carrying what really runs, `--to selector:…` pushes (`=` and `!=`), the desired
 * state the sender records, `ferry hosts`, `ferry status SERVICE`, `ferry drift` after a container
 * is stopped behind Ferry's back, a stopped receiver going lost and coming back online, and a
 * container that crash-loops after its deployment passed showing as drift by its restart count.
 * Receiver A runs on the target engine, B on the build engine, so a selector's choice shows in
 * which engine got the container. The registry here is private (in memory, TTL 3 s; its enrolled
 * keys and join tokens in its data directory). Each receiver enrolls its host key with a join
 * token an admin asked for, and keeps that token in its environment after it was used.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { RegistryClient, type HostRecord, type ServiceState } from '@ferry/auth';
import { LABELS } from '@ferry/protocol';
import { buildFromDockerfile } from '../helpers/images.ts';
import { buildTestImage, freePort, runFerry, startFerryProcess, startReceiverProcess, type FerryProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { until } from '../helpers/registry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
/** Deploys (the CLI) and reads the registry. */
const key = testKey(`reg-${run}`);
/** Asks the registry for join tokens. */
const admin = testKey(`reg-admin-${run}`);
const registryTrust = trustFile([{ key: admin, role: 'admin' }, key]);
const repo = `ferry-reg-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const hostA = `rega-${run}`;
const hostB = `regb-${run}`;
const web = `regweb-${run}`;
const both = `regboth-${run}`;
const notProd = `regnp-${run}`;
const crash = `regcrash-${run}`;
const dirs: string[] = [];

/** `ferry registry` on a given port (in memory, no NATS), once it says it listens. */
function startRegistry(port: number, dataDir: string): Promise<FerryProcess> {
  return startFerryProcess('registry', {
    FERRY_LISTEN: `127.0.0.1:${port}`, FERRY_TRUST_FILE: registryTrust, FERRY_DATA_DIR: dataDir,
    FERRY_HOST_ID: `registry-${run}`, FERRY_HOST_TTL_SECONDS: '3',
  });
}

async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `ferry-reg-${label}-`));
  dirs.push(dir);
  return dir;
}

describe('registry clients: receiver registration, selectors, desired state, drift', { timeout: 600_000 }, () => {
  let registry: FerryProcess;
  let registryPort: number;
  let registryDir: string;
  let a: ReceiverProcess;
  let b: ReceiverProcess;
  let envA: Record<string, string>;
  let cli: Record<string, string>;
  let imageId: string;

  const ferry = async (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => runFerry(args, cli);
  // Waits poll the registry in-process (the same client the CLI uses); each CLI output is checked once.
  let client: RegistryClient;
  const hosts = async (): Promise<HostRecord[]> => client.hosts({ selector: `suite=${run}` });
  const states = async (service: string): Promise<ServiceState[]> => client.services({ service });

  before(async () => {
    registryPort = await freePort();
    registryDir = await tempDir('registry');
    const registryUrl = `http://127.0.0.1:${registryPort}`;
    cli = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), FERRY_REGISTRY_URL: registryUrl };
    client = new RegistryClient(registryUrl, key);
    imageId = await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    // Exec form: the image has busybox and no /bin/sh. It runs two seconds, then exits 3.
    await buildFromDockerfile(s.buildDockerHost, `${repo}:crash`, `FROM ${repo}:1\nENTRYPOINT ["/bin/busybox", "sh", "-c", "/bin/busybox sleep 2; exit 3"]\n`);
    // The tokens are asked for first; the registry then stops, and its key file keeps them.
    const issuing = await startRegistry(registryPort, registryDir);
    const admins = new RegistryClient(registryUrl, admin);
    const tokenA = (await admins.joinToken({ host: hostA })).token;
    // B's token the way an operator gets one: "ferry hosts join-token" with an admin key; the
    // deploy key is refused it.
    const adminCli = { ...keyEnv(admin), FERRY_REGISTRY_URL: registryUrl };
    const refused = await runFerry(['hosts', 'join-token', hostB, '--json'], cli);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stdout + refused.stderr, /FERRY_ERR_NOT_GRANTED/);
    const issued = await runFerry(['hosts', 'join-token', hostB, '--labels', `suite=${run},role=db,env=prod`, '--ttl', '600'], adminCli);
    assert.equal(issued.code, 0, issued.stderr);
    const tokenB = issued.stdout.trim();
    assert.match(tokenB, /^[A-Za-z0-9_-]{22,256}$/);
    assert.match(issued.stderr, new RegExp(`host ${hostB}, until .*not shown again`));
    const badLabels = await runFerry(['hosts', 'join-token', hostB, '--labels', 'no-equals'], adminCli);
    assert.equal(badLabels.code, 2, badLabels.stderr);
    await issuing.stop();
    const common = { FERRY_TRUST_FILE: trustFile(key), FERRY_REGISTRY_URL: registryUrl };
    // A looks once at a new container (no stability window), so a crash loop can pass a deployment.
    envA = { ...common, DOCKER_HOST: s.targetDockerHost, FERRY_STABILITY_WINDOW_MS: '0', FERRY_HOST_ID: hostA, FERRY_LABELS: `suite=${run},role=web,env=staging`, FERRY_DATA_DIR: await tempDir('a'), FERRY_JOIN_TOKEN: tokenA };
    // A starts while nothing listens at the registry's address yet.
    a = await startReceiverProcess(envA);
    b = await startReceiverProcess({ ...common, DOCKER_HOST: s.buildDockerHost, FERRY_HOST_ID: hostB, FERRY_LABELS: `suite=${run},role=db,env=prod`, FERRY_DATA_DIR: await tempDir('b'), FERRY_JOIN_TOKEN: tokenB });
  });

  after(async () => {
    await a?.stop().catch(() => undefined);
    await b?.stop().catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    for (const engine of [target, build]) {
      for (const name of [web, both, notProd, crash]) {
        for (const suffix of ['', '.ferry-previous', '.ferry-next', '.ferry-parked']) {
          await engine.getContainer(`${name}${suffix}`).remove({ force: true }).catch(() => undefined);
        }
      }
      await engine.getImage(`${repo}:crash`).remove({ force: true }).catch(() => undefined);
      await engine.getImage(`${repo}:1`).remove({ force: true }).catch(() => undefined);
    }
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  test('a receiver whose registry is down serves and reports degraded, then enrolls its host key and registers once the registry is up', async () => {
    const health = await fetch(`${a.url}/healthz`);
    assert.equal(health.status, 200);
    type Ready = { status: string; checks: Record<string, { status: string; reason?: string }> };
    // The first attempt runs just after the receiver listens; its failure is what /readyz then shows.
    const { ready, body } = await until(async () => {
      const answer = await fetch(`${a.url}/readyz`);
      const json = await answer.json() as Ready;
      return json.checks.registry?.reason === 'FERRY_ERR_REGISTRY_UNREACHABLE' ? { ready: answer, body: json } : undefined;
    });
    assert.equal(ready.status, 503);
    assert.equal(body.status, 'degraded');
    assert.equal(body.checks.registry?.status, 'down');
    assert.equal(body.checks.registry?.reason, 'FERRY_ERR_REGISTRY_UNREACHABLE');

    registry = await startRegistry(registryPort, registryDir);
    const registered = await until(async () => {
      const list = await hosts();
      return list.length === 2 ? list : undefined;
    });
    const byId = new Map(registered.map((h) => [h.id, h]));
    const recordA = byId.get(hostA);
    assert.ok(recordA, JSON.stringify(registered));
    assert.equal(recordA.status, 'online');
    assert.equal(recordA.url, a.url);
    assert.deepEqual(recordA.labels, { suite: run, role: 'web', env: 'staging' });
    assert.ok(recordA.capabilities.includes('resumable') && recordA.capabilities.includes('layers'), recordA.capabilities.join(','));
    assert.match(recordA.engine.version, /^\d+\./);
    assert.ok(['legacy', 'containerd'].includes(recordA.engine.imageStore));
    assert.equal(byId.get(hostB)?.labels.role, 'db');
    // Each enrolled the key it proves in GET /v1/identity.
    for (const [record, receiver] of [[recordA, a], [byId.get(hostB), b]] as const) {
      const identity = await (await fetch(`${receiver.url}/v1/identity?challenge=${'c'.repeat(22)}`)).json() as { identity: { payload: string } };
      const { fingerprint } = JSON.parse(Buffer.from(identity.identity.payload, 'base64').toString('utf8')) as { fingerprint: string };
      assert.equal(record?.hostKey, fingerprint);
    }
    assert.ok(a.logs.some((l) => l.msg === 'host key enrolled with the registry'), 'A enrolled with its token');

    const readyAgain = await until(async () => {
      const answer = await (await fetch(`${a.url}/readyz`)).json() as Ready;
      return answer.checks.registry?.status === 'up' ? answer : undefined;
    });
    assert.equal(readyAgain.checks.registry?.status, 'up');
  });

  test('ferry hosts prints one row per host with its status, URL, labels and version', async () => {
    const table = await ferry(['hosts', '--selector', `suite=${run}`]);
    assert.equal(table.code, 0, table.stderr);
    const [header, ...rows] = table.stdout.trim().split('\n');
    assert.match(header ?? '', /^ID\s+STATUS\s+URL\s+LABELS\s+VERSION\s+LAST SEEN$/);
    const rowA = rows.find((r) => r.startsWith(hostA));
    assert.ok(rowA, table.stdout);
    assert.match(rowA, new RegExp(`online\\s+${a.url.replace(/[.]/g, '\\.')}\\s+\\S*role=web\\S*\\s+0\\.1\\.0\\s+\\d+s ago`));
    const onlyWeb = await ferry(['hosts', '--selector', `suite=${run},role=web`, '--json']);
    assert.deepEqual((JSON.parse(onlyWeb.stdout) as { hosts: HostRecord[] }).hosts.map((h) => h.id), [hostA]);
  });

  test('--to selector: deploys to the matching online hosts only, and the sender records the desired state', async () => {
    // A resumable upload (threshold 1 byte) on the one-target path.
    const pushed = await ferry(['push', `${repo}:1`, '--to', `selector:suite=${run},role=web`, '--name', web, '--network', 'none', '--resumable-threshold', '1', '--json']);
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    const result = JSON.parse(pushed.stdout) as { host: string; deploymentId: string; imageId: string };
    assert.equal(result.host, hostA);
    assert.equal(pushed.stderr.includes('warning'), false, pushed.stderr);
    assert.equal((await target.getContainer(web).inspect()).State.Running, true);
    await assert.rejects(build.getContainer(web).inspect(), { statusCode: 404 }, 'the db host got nothing');

    const label = (await target.getContainer(web).inspect()).Config.Labels[LABELS.configHash];
    // Desired (from the sender) and actual (from A's heartbeat, read off the real container) agree.
    const state = await until(async () => {
      const found = (await states(web)).find((st) => st.host === hostA);
      return found?.desired && found.actual?.deploymentId === result.deploymentId ? found : undefined;
    });
    assert.equal(state.desired?.deploymentId, result.deploymentId);
    assert.equal(state.desired?.imageId, imageId);
    assert.equal(state.desired?.configHash, label);
    assert.equal(state.actual?.configHash, label);
    assert.equal(state.actual?.imageId, imageId);
    assert.equal(state.actual?.deploymentId, result.deploymentId);
    assert.equal(state.actual?.state, 'running');
    assert.equal(state.drift, null);
  });

  test('a selector matching several hosts fans out to each, and each deployment is recorded', async () => {
    const pushed = await ferry(['push', `${repo}:1`, '--to', `selector:suite=${run}`, '--name', both, '--network', 'none', '--json']);
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    const result = JSON.parse(pushed.stdout) as { ok: boolean; targets: { host: string; state: string; deploymentId: string }[] };
    assert.deepEqual(result.targets.map((t) => [t.host, t.state]).sort(), [[hostA, 'COMPLETED'], [hostB, 'COMPLETED']]);
    const recorded = await until(async () => {
      const list = (await states(both)).filter((st) => st.desired && st.actual?.configHash && st.drift === null);
      return list.length === 2 ? list : undefined;
    });
    for (const st of recorded) assert.equal(st.desired?.deploymentId, result.targets.find((t) => t.host === st.host)?.deploymentId);
  });

  test('--to selector:env!=prod deploys to the hosts without env=prod only; the CLI and the registry refuse a malformed selector', async () => {
    const listed = await ferry(['hosts', '--selector', `suite=${run},env!=prod`, '--json']);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual((JSON.parse(listed.stdout) as { hosts: HostRecord[] }).hosts.map((h) => h.id), [hostA]);

    const pushed = await ferry(['push', `${repo}:1`, '--to', `selector:suite=${run},env!=prod`, '--name', notProd, '--network', 'none', '--json']);
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    const result = JSON.parse(pushed.stdout) as { host: string; deploymentId: string };
    assert.equal(result.host, hostA);
    assert.equal((await target.getContainer(notProd).inspect()).State.Running, true);
    await assert.rejects(build.getContainer(notProd).inspect(), { statusCode: 404 }, 'the env=prod host got nothing');
    const recorded = await until(async () => {
      const list = await states(notProd);
      return list.some((st) => st.desired?.deploymentId === result.deploymentId) ? list : undefined;
    });
    assert.deepEqual(recorded.map((st) => st.host), [hostA]);

    // A malformed selector is refused by the CLI before anything is asked or packaged (exit 2),
    // and by the registry itself (400) when asked directly.
    for (const bad of [`selector:suite=${run},env==prod`, `selector:suite=${run},,env!=prod`, `selector:__proto__=x`]) {
      const refused = await ferry(['push', `${repo}:1`, '--to', bad, '--name', notProd]);
      assert.equal(refused.code, 2, refused.stdout + refused.stderr);
      assert.match(refused.stderr, /KEY!=VALUE.*FERRY_ERR_USAGE/s);
    }
    await assert.rejects(client.hosts({ selector: 'env==prod' }), { code: 'FERRY_ERR_BAD_REQUEST' });
    await assert.rejects(client.hosts({ selector: 'env=pr\u0000od' }), { code: 'FERRY_ERR_BAD_REQUEST' });
  });

  test('a selector no online host matches fails before anything is packaged', async () => {
    const pushed = await ferry(['push', `${repo}:1`, '--to', `selector:suite=${run},role=nothing`, '--name', web]);
    assert.equal(pushed.code, 1, pushed.stdout + pushed.stderr);
    assert.match(pushed.stderr, /FERRY_ERR_NO_MATCHING_HOSTS/);
    assert.match(pushed.stderr, /next: "ferry hosts --selector/);
  });

  test('ferry status SERVICE without --to shows desired against actual per host; ferry drift is clean', async () => {
    const status = await ferry(['status', web]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, new RegExp(`^${web} on 1 host`));
    assert.match(status.stdout, new RegExp(`${hostA}\\s+${repo}:1 \\(${imageId.slice(7, 19)}\\)\\s+${repo}:1 \\(${imageId.slice(7, 19)}\\)\\s+running\\s+\\S+\\s+none`));
    const drift = await ferry(['drift']);
    assert.equal(drift.code, 0, drift.stdout + drift.stderr);
    assert.match(drift.stdout, /no drift/);
  });

  test('a container stopped behind Ferry\'s back shows in ferry drift, which then exits 1', async () => {
    await target.getContainer(web).stop();
    await until(async () => ((await client.drift()).some((st) => st.host === hostA && st.service === web) ? true : undefined));
    const json = await ferry(['drift', '--json']);
    assert.equal(json.code, 1);
    const body = JSON.parse(json.stdout) as { ok: boolean; drift: ServiceState[] };
    assert.equal(body.ok, false);
    const entry = body.drift.find((st) => st.service === web);
    assert.deepEqual(entry?.drift?.reasons, [{ field: 'state', desired: 'running', actual: 'exited' }]);
    const text = await ferry(['drift']);
    assert.equal(text.code, 1);
    assert.match(text.stdout, /✖ 1 service drifted/);
    assert.match(text.stdout, new RegExp(`${hostA}\\s+${web}\\s+state\\s+running\\s+exited`));

    await target.getContainer(web).remove({ force: true });
    const missing = await until(async () => {
      const st = (await states(web)).find((x) => x.host === hostA);
      return st?.drift?.reasons[0]?.field === 'missing' ? st : undefined;
    });
    assert.equal(missing.actual?.state, 'missing');
  });

  test('a stopped receiver goes lost; started again with its used join token still set, it registers with its key and is online', async () => {
    await a.stop();
    const lost = await until(async () => (await hosts()).find((h) => h.id === hostA && h.status === 'lost'));
    assert.equal(lost.status, 'lost');
    assert.equal((await hosts()).find((h) => h.id === hostB)?.status, 'online', 'the other host kept heartbeating');
    const onlineOnly = await ferry(['hosts', '--selector', `suite=${run}`, '--status', 'online', '--json']);
    assert.deepEqual((JSON.parse(onlineOnly.stdout) as { hosts: HostRecord[] }).hosts.map((h) => h.id), [hostB]);

    a = await startReceiverProcess(envA);
    const back = await until(async () => (await hosts()).find((h) => h.id === hostA && h.status === 'online'));
    assert.equal(back.url, a.url);
    assert.ok(!a.logs.some((l) => l.msg === 'host key enrolled with the registry'), 'an enrolled host does not enroll again');
    assert.ok(!a.logs.some((l) => (l.err as { code?: string } | undefined)?.code === 'FERRY_ERR_JOIN_TOKEN_INVALID'), 'nor tries its used token');
  });

  test('a container that crash-loops after its deployment passed is drift by its restart count, whatever its state reads', async () => {
    const pushed = await ferry(['push', `${repo}:crash`, '--to', `selector:suite=${run},role=web`, '--name', crash, '--network', 'none', '--restart', 'always', '--json']);
    assert.equal(pushed.code, 0, pushed.stdout + pushed.stderr);
    const result = JSON.parse(pushed.stdout) as { host: string; deploymentId: string };
    assert.equal(result.host, hostA);
    // The restart policy, not Ferry, brings it back: a heartbeat after the first exit carries the count.
    const drifted = await until(async () => {
      const st = (await states(crash)).find((x) => x.host === hostA);
      return st?.desired?.deploymentId === result.deploymentId && st.drift?.reasons.some((r) => r.field === 'restarts') ? st : undefined;
    });
    assert.equal(drifted.actual?.deploymentId, result.deploymentId);
    const restarts = drifted.drift?.reasons.find((r) => r.field === 'restarts');
    assert.equal(restarts?.desired, 0);
    assert.equal(typeof restarts?.actual, 'number');
    assert.ok((restarts?.actual as number) >= 1, JSON.stringify(drifted.drift));
    assert.equal(drifted.actual?.restarts, restarts?.actual);
    assert.ok((await target.getContainer(crash).inspect()).RestartCount >= (restarts?.actual as number), 'read off the real container');
    const text = await ferry(['drift']);
    assert.equal(text.code, 1, text.stdout + text.stderr);
    assert.match(text.stdout, new RegExp(`${hostA}\\s+${crash}\\s+restarts\\s+0\\s+\\d+`));
  });
});
