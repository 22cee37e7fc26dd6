/**
 * Start-first through a real HAProxy: a `ferry receiver` with its proxy (FERRY_PROXY_HTTP) on a
 * private engine with a Linux bridge, deploying a FROM-scratch busybox httpd whose answer names its
 * version. While `hey` sends 200 requests a second through the proxy, versions are deployed and
 * rolled back in a row: not one answer is other than 2xx and not one connection fails. A 5 s
 * request (a CGI script) begun before a switch ends with the old version's answer; a version that
 * fails its health check never gets a request (HAProxy has no server for it, its counters say
 * nothing) and the old container never stopped; a receiver killed while the old upstream drains
 * finishes the switch when it starts again, the route table and HAProxy agreeing with the
 * containers; one killed while the new container is checked removes it, the old one serving on.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdir, mkdtemp, copyFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { connect as connectUnix } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawn, type ChildProcess } from 'node:child_process';
import type { NatsConnection } from 'nats';
import { ContainerRunner, ImageStore, createDockerClient, type ContainerInfo } from '@ferry/docker';
import { FerryError, upstreamName, type DeploymentResult, type ManifestInput } from '@ferry/protocol';
import { killHaproxy, proxyPaths } from '@ferry/proxy';
import { buildPackage, inspectImage, uploadOneShot } from '@ferry/sender';
import { removeImages } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { EventWatcher } from '../helpers/events.ts';
import { capture, freePort, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { signedCall } from '../helpers/registry.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`sf-${run}`);
const hostId = `sf-${run}`;
const service = `sf-${run}`;
const repo = `ferry-sf-${run}`;
const HOST = `app-${run}.test`;
const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));

/** busybox httpd on 8080: `/` names the version, `/healthz` is ok (not in the `bad` version), `/cgi-bin/slow` answers after 5 s. */
async function buildVersion(variant: string, healthy: boolean): Promise<string> {
  const context = await mkdtemp(join(tmpdir(), 'ferry-sf-img-'));
  try {
    await copyFile(process.env.FERRY_BUSYBOX ?? '/bin/busybox', join(context, 'busybox'));
    await mkdir(join(context, 'www', 'cgi-bin'), { recursive: true });
    await writeFile(join(context, 'www', 'index.html'), `${variant}\n`);
    if (healthy) await writeFile(join(context, 'www', 'healthz'), 'ok\n');
    const slow = join(context, 'www', 'cgi-bin', 'slow');
    await writeFile(slow, `#!/bin/busybox sh\n/bin/busybox sleep 5\necho "Content-Type: text/plain"\necho\necho "${variant} slow"\n`);
    await chmod(slow, 0o755);
    await writeFile(join(context, 'Dockerfile'), [
      'FROM scratch', 'COPY busybox /bin/busybox', 'COPY www /www',
      'ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]', '',
    ].join('\n'));
    const ref = `${repo}:${variant}`;
    const env = { ...process.env, DOCKER_HOST: s.buildDockerHost, DOCKER_BUILDKIT: '0' };
    const built = await capture('docker', ['build', '-q', '-t', ref, context], env);
    if (built.code !== 0) throw new Error(`docker build failed: ${built.stderr}`);
    return ref;
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

/** One GET through the proxy on its own connection. */
function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { host: HOST }, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: body.trim() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** One command on HAProxy's admin socket. */
function admin(socket: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const c = connectUnix(socket, () => c.end(`${command}\n`));
    c.setEncoding('utf8').on('data', (d: string) => { out += d; });
    c.on('end', () => resolve(out));
    c.on('error', reject);
  });
}

/** HAProxy's servers now, by name: its `show stat` rows (sessions in all, 2xx and 5xx answered). */
async function servers(socket: string): Promise<Map<string, { total: number; current: number; status: string }>> {
  const text = await admin(socket, 'show stat');
  const [header, ...rows] = text.split('\n');
  const cols = (header ?? '').replace(/^# /, '').split(',');
  const at = (name: string): number => cols.indexOf(name);
  const out = new Map<string, { total: number; current: number; status: string }>();
  for (const line of rows) {
    const f = line.split(',');
    const name = f[at('svname')] ?? '';
    if (!/^[0-9a-f]{12}$/.test(name)) continue;
    out.set(name, { total: Number(f[at('stot')]), current: Number(f[at('scur')]), status: f[at('status')] ?? '' });
  }
  return out;
}

interface Load { ok: number; other: Record<string, number>; errors: number; total: number; output: string }

/**
 * `hey` through the proxy, 10 workers at 20 requests a second each,
 * until `stop()` (SIGINT: hey stops and prints its report); connections kept alive, as browsers and clients keep them; `-z` only bounds a run left behind.
 */
function load(port: number): { stop: () => Promise<Load>; running: () => boolean } {
  const child = spawn('hey', ['-z', '300s', '-q', '20', '-c', '10', '-host', HOST, `http://127.0.0.1:${port}/`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const done = new Promise<number | null>((resolve) => child.once('close', resolve));
  return {
    running: () => child.exitCode === null && child.signalCode === null,
    stop: async () => {
      child.kill('SIGINT');
      const code = await done;
      assert.equal(code, 0, stderr);
      const codes = [...stdout.matchAll(/\[(\d{3})\]\s+(\d+) responses/g)].map((m) => [m[1] ?? '', Number(m[2])] as const);
      const errorBlock = stdout.split('Error distribution:')[1] ?? '';
      const errors = [...errorBlock.matchAll(/\[(\d+)\]\s/g)].reduce((sum, m) => sum + Number(m[1]), 0);
      const ok = codes.filter(([c]) => c.startsWith('2')).reduce((sum, [, n]) => sum + n, 0);
      const other = Object.fromEntries(codes.filter(([c]) => !c.startsWith('2')));
      return { ok, other, errors, total: ok + Object.values(other).reduce((a, b) => a + b, 0) + errors, output: stdout };
    },
  };
}

function exited(child: ChildProcess): Promise<NodeJS.Signals | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.signalCode);
  return new Promise((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
}

describe('start-first through HAProxy', { timeout: 900_000 }, () => {
  let engine: PrivateDockerd;
  let containers: ContainerRunner;
  let rx: ReceiverProcess;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  let dataDir: string;
  let proxyDir: string;
  let proxyPort: number;
  const refs: string[] = [];

  const start = async (extra: Record<string, string> = {}): Promise<ReceiverProcess> => {
    const receiver = await startReceiverProcess({
      DOCKER_HOST: engine.host, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: hostId,
      FERRY_DATA_DIR: dataDir, FERRY_PROXY_HTTP: `127.0.0.1:${proxyPort}`, FERRY_PROXY_DIR: proxyDir, ...extra,
    });
    // A receiver with in-memory nonces refuses what was signed before it started (same second included).
    while ((await signedCall(receiver.url, { ...key, audience: hostId }, 'GET', '/v1/releases')).status === 401) await sleep(100);
    return receiver;
  };

  const deploy = async (url: string, ref: string, drain = '10s'): Promise<{ result?: DeploymentResult; error?: FerryError; lost?: boolean; deploymentId: string }> => {
    const facts = await inspectImage(buildImages, ref);
    const pkg = await buildPackage(buildImages, facts, 'none');
    const deploymentId = randomUUID();
    const manifest: ManifestInput = {
      schema: 'ferry.manifest/v1', deploymentId, createdAt: new Date().toISOString(),
      image: { ref: facts.ref, id: facts.id, diffIds: facts.diffIds },
      package: { format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest },
      service: {
        name: service, network: 'bridge', env: {}, route: { host: HOST, path: '/', port: 8080 }, drain,
        health: { type: 'http', url: 'http://localhost:8080/healthz', intervalMs: 200, timeoutMs: 1000, retries: 10, startPeriodMs: 0 },
      },
    };
    try {
      const outcome = await uploadOneShot({ url, credentials: key, audience: hostId, manifestJson: JSON.stringify(manifest), packagePath: pkg.path, packageSize: pkg.size });
      return { result: outcome.result, deploymentId };
    } catch (err) {
      // Not a FerryError: the receiver died under the request.
      return err instanceof FerryError ? { error: err, deploymentId } : { lost: true, deploymentId };
    } finally {
      await pkg.remove();
    }
  };

  const rollback = async (): Promise<DeploymentResult> => {
    const answer = await signedCall(rx.url, { ...key, audience: hostId }, 'POST', `/v1/services/${service}/rollback`);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    return answer.body as unknown as DeploymentResult;
  };

  const current = async (): Promise<ContainerInfo> => {
    const info = await containers.inspect(service);
    assert.ok(info?.running, `${service} runs`);
    return info;
  };

  /** The route's servers in HAProxy are exactly the running service container's upstream. */
  const agrees = async (): Promise<ContainerInfo> => {
    const info = await current();
    const names = [...(await servers(proxyPaths(proxyDir).adminSocket)).keys()];
    assert.deepEqual(names, [upstreamName(info.id)]);
    return info;
  };

  before(async () => {
    engine = await PrivateDockerd.start({ bridge: true });
    containers = new ContainerRunner(createDockerClient(engine.host));
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-sf-'));
    proxyDir = await mkdtemp('/tmp/fsp-');
    proxyPort = await freePort();
    for (const [variant, healthy] of [['v1', true], ['v2', true], ['v3', true], ['bad', false]] as const) refs.push(await buildVersion(variant, healthy));
    nc = await natsConnect(s.natsReaderUrl);
    watcher = new EventWatcher(nc, `ferry.events.${hostId}.>`);
    rx = await start();
  });

  after(async () => {
    await rx?.stop();
    await nc?.drain();
    if (proxyDir) await killHaproxy(proxyPaths(proxyDir));
    await engine?.stop();
    await removeImages(dockerodeFor(s.buildDockerHost), refs);
    for (const dir of [dataDir, proxyDir]) if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the first deployment is routed: the proxy answers with v1 from the published port', async () => {
    const first = await deploy(rx.url, `${repo}:v1`);
    assert.equal(first.result?.state, 'COMPLETED', first.error?.message);
    const info = await agrees();
    assert.ok(info.ports.some((p) => p.hostIp === '127.0.0.1' && p.containerPort === 8080), JSON.stringify(info.ports));
    assert.deepEqual(await get(proxyPort, '/'), { status: 200, body: 'v1' });
    const switched = await watcher.until(first.deploymentId, 'deployment.switched');
    assert.equal((switched.data as { to?: string }).to, upstreamName(info.id));
  });

  test('deploys and rollbacks in a row under 200 requests a second: no answer other than 2xx, no connection error', async (t) => {
    const traffic = load(proxyPort);
    await sleep(1000);
    const seen: string[] = [];
    const v2 = await deploy(rx.url, `${repo}:v2`);
    assert.equal(v2.result?.state, 'COMPLETED', v2.error?.message);
    seen.push((await get(proxyPort, '/')).body);
    assert.equal((await rollback()).state, 'ROLLED_BACK');
    seen.push((await get(proxyPort, '/')).body);
    assert.equal((await rollback()).state, 'ROLLED_BACK');
    seen.push((await get(proxyPort, '/')).body);
    const v3 = await deploy(rx.url, `${repo}:v3`);
    assert.equal(v3.result?.state, 'COMPLETED', v3.error?.message);
    seen.push((await get(proxyPort, '/')).body);
    assert.ok(traffic.running(), 'the load ran through every switch');
    const done = await traffic.stop();
    t.diagnostic(`load during the switches: ${done.total} requests, ${done.ok} 2xx, other ${JSON.stringify(done.other)}, ${done.errors} connection errors`);
    assert.deepEqual(seen, ['v2', 'v1', 'v2', 'v3']);
    assert.ok(done.ok > 1000, done.output);
    assert.deepEqual(done.other, {}, done.output);
    assert.equal(done.errors, 0, done.output);
    await agrees();
    assert.equal((await containers.inspect(`${service}.ferry-previous`))?.running, false);
  });

  test('a 5 s request begun before a switch ends with the old version\'s answer', async () => {
    const before = (await get(proxyPort, '/')).body;
    const slow = get(proxyPort, '/cgi-bin/slow');
    await sleep(500);
    const next = await deploy(rx.url, before === 'v3' ? `${repo}:v1` : `${repo}:v3`);
    assert.equal(next.result?.state, 'COMPLETED', next.error?.message);
    assert.deepEqual(await slow, { status: 200, body: `${before} slow` });
    const switched = await watcher.until(next.deploymentId, 'deployment.switched');
    assert.equal((switched.data as { openSessions?: number }).openSessions, 0);
  });

  test('a version that fails its check never gets a request, and the old container never stopped', async (t) => {
    const old = await agrees();
    const oldStarted = (await createDockerClient(engine.host).inspectContainer(old.id)).State as unknown as { StartedAt: string };
    const traffic = load(proxyPort);
    await sleep(500);
    const bad = await deploy(rx.url, `${repo}:bad`);
    assert.equal(bad.error?.code, 'FERRY_ERR_HEALTHCHECK_FAILED', bad.error?.message);
    assert.ok(traffic.running(), 'the load ran through the failed deployment');
    const done = await traffic.stop();
    t.diagnostic(`load during the failed deployment: ${done.total} requests, ${done.ok} 2xx, other ${JSON.stringify(done.other)}, ${done.errors} connection errors`);
    assert.deepEqual(done.other, {});
    assert.equal(done.errors, 0);
    const deployment = (bad.error?.details as { deployment?: DeploymentResult } | undefined)?.deployment;
    const badId = deployment?.failure?.container?.id;
    assert.ok(badId, JSON.stringify(deployment));
    // Never a server of the route: HAProxy counted nothing for it.
    assert.equal((await servers(proxyPaths(proxyDir).adminSocket)).get(upstreamName(badId)), undefined);
    assert.equal(await containers.inspect(badId), undefined);
    const still = await agrees();
    assert.equal(still.id, old.id);
    const oldNow = (await createDockerClient(engine.host).inspectContainer(old.id)).State as unknown as { StartedAt: string; Running: boolean };
    assert.equal(oldNow.Running, true);
    assert.equal(oldNow.StartedAt, oldStarted.StartedAt);
  });

  test('killed while the old upstream drains, a restarted receiver finishes the switch', async () => {
    const old = await agrees();
    const before = (await get(proxyPort, '/')).body;
    await rx.stop();
    rx = await start({ FERRY_TEST_CRASH_AT: 'during-drain' });
    const doomed = rx;
    const attempt = await deploy(doomed.url, before === 'v3' ? `${repo}:v1` : `${repo}:v3`);
    assert.equal(attempt.result, undefined, 'the deployment lost its receiver');
    assert.equal(await exited(doomed.child), 'SIGKILL');
    // HAProxy outlives the receiver and already sends to the new container.
    rx = await start();
    const now = await agrees();
    assert.notEqual(now.id, old.id);
    assert.equal((await containers.inspect(`${service}.ferry-previous`))?.id, old.id);
    assert.equal((await containers.inspect(`${service}.ferry-previous`))?.running, false);
    assert.equal((await containers.inspect(`${service}.ferry-next`)), undefined);
    assert.notEqual((await get(proxyPort, '/')).body, before);
    const record = await signedCall(rx.url, { ...key, audience: hostId }, 'GET', `/v1/deployments/${attempt.deploymentId}`);
    assert.equal((record.body as { state?: string }).state, 'COMPLETED', JSON.stringify(record.body));
  });

  test('killed while the new container is checked, a restarted receiver removes it and the old one serves on', async () => {
    const old = await agrees();
    const before = (await get(proxyPort, '/')).body;
    await rx.stop();
    rx = await start({ FERRY_TEST_CRASH_AT: 'during-validate' });
    const doomed = rx;
    const attempt = await deploy(doomed.url, before === 'v3' ? `${repo}:v1` : `${repo}:v3`);
    assert.equal(attempt.result, undefined, 'the deployment lost its receiver');
    assert.equal(await exited(doomed.child), 'SIGKILL');
    assert.equal((await get(proxyPort, '/')).body, before);
    rx = await start();
    const now = await agrees();
    assert.equal(now.id, old.id);
    assert.equal(await containers.inspect(`${service}.ferry-next`), undefined);
    assert.equal((await get(proxyPort, '/')).body, before);
  });
});
