/**
 * Start-first through a real HAProxy: a `ferry receiver` with its proxy (FERRY_PROXY_HTTP) on a
 * private engine with a Linux bridge, deploying a FROM-scratch busybox httpd whose answer names its
 * version and that stops at SIGTERM at once (test/helpers/routed.ts). While `hey` sends 200
 * requests a second through the proxy, twenty deploys and rollbacks run in a row: not one answer is
 * other than 2xx and not one connection fails. A 5 s request (a CGI script) begun before a switch
 * ends with the old version's answer; a version that fails its health check never gets a request
 * (HAProxy has no server for it) and the old container never stopped; a receiver killed while the
 * old upstream drains finishes the switch when it starts again, the route table and HAProxy
 * agreeing with the containers; one killed while the new container is checked removes it, the old
 * one serving on. HAProxy killed (SIGKILL) in the middle of a drain is started again by the
 * receiver's check and the switch finished: its servers are the running container's alone; killed
 * while the receiver is away too, the next receiver starts it and finishes the switch.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NatsConnection } from 'nats';
import { ContainerRunner, ImageStore, createDockerClient, type ContainerInfo } from '@ferry/docker';
import { upstreamName, type DeploymentResult } from '@ferry/protocol';
import { haproxyPids, killHaproxy, proxyPaths } from '@ferry/proxy';
import { removeImages } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { EventWatcher } from '../helpers/events.ts';
import { freePort, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { signedCall } from '../helpers/registry.ts';
import { buildRoutedVersion, deployRouted, exited, getVia, haproxyServers, heyLoad, type RoutedOutcome } from '../helpers/routed.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`sf-${run}`);
const hostId = `sf-${run}`;
const service = `sf-${run}`;
const repo = `ferry-sf-${run}`;
const HOST = `app-${run}.test`;
const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));
/** Deploys and rollbacks in turn under the load. */
const SWITCHES = 20;

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
      FERRY_DATA_DIR: dataDir, FERRY_PROXY_HTTP: `127.0.0.1:${proxyPort}`, FERRY_PROXY_DIR: proxyDir,
      // A short window keeps twenty switches in a row short; the image stops at SIGTERM at once.
      FERRY_STABILITY_WINDOW_MS: '1000', ...extra,
    });
    // A receiver with in-memory nonces refuses what was signed before it started (same second included).
    while ((await signedCall(receiver.url, { ...key, audience: hostId }, 'GET', '/v1/releases')).status === 401) await sleep(100);
    return receiver;
  };

  const deploy = (url: string, ref: string, drain = '10s', strategy: 'start-first' | 'stop-first' = 'start-first'): Promise<RoutedOutcome> => deployRouted({
    images: buildImages, url, key, audience: hostId, ref, service: { name: service, route: { host: HOST, path: '/', port: 8080 }, drain, strategy },
  });

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
    const names = [...(await haproxyServers(proxyPaths(proxyDir).adminSocket)).keys()];
    assert.deepEqual(names, [upstreamName(info.id)]);
    return info;
  };

  before(async () => {
    engine = await PrivateDockerd.start({ bridge: true });
    containers = new ContainerRunner(createDockerClient(engine.host));
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-sf-'));
    proxyDir = await mkdtemp('/tmp/fsp-');
    proxyPort = await freePort();
    for (const [variant, healthy] of [['v1', true], ['v2', true], ['v3', true], ['bad', false]] as const) refs.push(await buildRoutedVersion(s.buildDockerHost, repo, variant, { healthy }));
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
    assert.deepEqual(await getVia(proxyPort, HOST, '/'), { status: 200, body: 'v1' });
    const switched = await watcher.until(first.deploymentId, 'deployment.switched');
    assert.equal((switched.data as { to?: string }).to, upstreamName(info.id));
  });

  test('twenty deploys and rollbacks in a row under 200 requests a second: no answer other than 2xx, no connection error', async (t) => {
    // What runs and what the next rollback goes back to, as the receiver should have it.
    let now = (await getVia(proxyPort, HOST, '/')).body;
    let previous = '';
    const versions = ['v2', 'v3', 'v1'];
    let next = 0;
    const traffic = heyLoad(proxyPort, HOST, { rate: 200 });
    await sleep(1000);
    const seen: string[] = [];
    const expected: string[] = [];
    for (let i = 0; i < SWITCHES; i++) {
      if (i % 2 === 0) {
        // The versions in turn, never the one that runs.
        if (versions[next % versions.length] === now) next++;
        const variant = versions[next++ % versions.length] ?? 'v1';
        const deployed = await deploy(rx.url, `${repo}:${variant}`);
        assert.equal(deployed.result?.state, 'COMPLETED', deployed.error?.message);
        [previous, now] = [now, variant];
      } else {
        assert.equal((await rollback()).state, 'ROLLED_BACK');
        [previous, now] = [now, previous];
      }
      expected.push(now);
      seen.push((await getVia(proxyPort, HOST, '/')).body);
    }
    assert.ok(traffic.running(), 'the load ran through every switch');
    const done = await traffic.stop();
    t.diagnostic(`load during ${SWITCHES} switches: ${done.total} requests, ${done.ok} 2xx, other ${JSON.stringify(done.other)}, ${done.errors} connection errors`);
    t.diagnostic(`versions after each switch: ${seen.join(' ')}`);
    assert.deepEqual(seen, expected);
    assert.ok(done.ok > 1000, done.output);
    assert.deepEqual(done.other, {}, done.output);
    assert.equal(done.errors, 0, done.output);
    await agrees();
    assert.equal((await containers.inspect(`${service}.ferry-previous`))?.running, false);
  });

  test('twenty stop-first deploys under load: each completes, and HAProxy never dies (a server it listed was never deleted under a stream)', async (t) => {
    const pids = (await haproxyPids(proxyPaths(proxyDir))).sort();
    const traffic = heyLoad(proxyPort, HOST, { rate: 200 });
    await sleep(500);
    for (let i = 0; i < SWITCHES; i++) {
      const deployed = await deploy(rx.url, `${repo}:${i % 2 === 0 ? 'v3' : 'v2'}`, '10s', 'stop-first');
      assert.equal(deployed.result?.state, 'COMPLETED', `deploy ${i + 1}: ${deployed.error?.message}`);
    }
    const done = await traffic.stop();
    // Stop-first has its gap (502/503 while no container serves): counted, not asserted.
    t.diagnostic(`load during ${SWITCHES} stop-first deploys: ${done.total} requests, ${done.ok} 2xx, other ${JSON.stringify(done.other)}, ${done.errors} connection errors`);
    assert.deepEqual((await haproxyPids(proxyPaths(proxyDir))).sort(), pids, 'the same HAProxy throughout');
    assert.equal(done.errors, 0, done.output);
    assert.equal((await getVia(proxyPort, HOST, '/')).body, 'v2');
    await agrees();
    // Back to start-first for the tests below.
    assert.equal((await deploy(rx.url, `${repo}:v1`)).result?.state, 'COMPLETED');
  });

  test('a 5 s request begun before a switch ends with the old version\'s answer', async () => {
    const before = (await getVia(proxyPort, HOST, '/')).body;
    const slow = getVia(proxyPort, HOST, '/cgi-bin/slow');
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
    const traffic = heyLoad(proxyPort, HOST, { rate: 200 });
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
    assert.equal((await haproxyServers(proxyPaths(proxyDir).adminSocket)).get(upstreamName(badId)), undefined);
    assert.equal(await containers.inspect(badId), undefined);
    const still = await agrees();
    assert.equal(still.id, old.id);
    const oldNow = (await createDockerClient(engine.host).inspectContainer(old.id)).State as unknown as { StartedAt: string; Running: boolean };
    assert.equal(oldNow.Running, true);
    assert.equal(oldNow.StartedAt, oldStarted.StartedAt);
  });

  test('killed while the old upstream drains, a restarted receiver finishes the switch', async () => {
    const old = await agrees();
    const before = (await getVia(proxyPort, HOST, '/')).body;
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
    assert.notEqual((await getVia(proxyPort, HOST, '/')).body, before);
    const record = await signedCall(rx.url, { ...key, audience: hostId }, 'GET', `/v1/deployments/${attempt.deploymentId}`);
    assert.equal((record.body as { state?: string }).state, 'COMPLETED', JSON.stringify(record.body));
  });

  test('killed while the new container is checked, a restarted receiver removes it and the old one serves on', async () => {
    const old = await agrees();
    const before = (await getVia(proxyPort, HOST, '/')).body;
    await rx.stop();
    rx = await start({ FERRY_TEST_CRASH_AT: 'during-validate' });
    const doomed = rx;
    const attempt = await deploy(doomed.url, before === 'v3' ? `${repo}:v1` : `${repo}:v3`);
    assert.equal(attempt.result, undefined, 'the deployment lost its receiver');
    assert.equal(await exited(doomed.child), 'SIGKILL');
    assert.equal((await getVia(proxyPort, HOST, '/')).body, before);
    rx = await start();
    const now = await agrees();
    assert.equal(now.id, old.id);
    assert.equal(await containers.inspect(`${service}.ferry-next`), undefined);
    assert.equal((await getVia(proxyPort, HOST, '/')).body, before);
  });

  /** Kills HAProxy's master by its pid file (its worker exits with it) and waits until it is gone. */
  const killProxy = async (): Promise<number> => {
    const pid = Number((await readFile(proxyPaths(proxyDir).pidFile, 'utf8')).trim().split('\n')[0]);
    assert.ok(Number.isInteger(pid) && pid > 1, 'HAProxy\'s pid file names it');
    process.kill(pid, 'SIGKILL');
    while (await haproxyServers(proxyPaths(proxyDir).adminSocket).then(() => true, () => false)) await sleep(20);
    return pid;
  };

  /** The deployment's record once it is final (a switch finished in the background gets there later). */
  const settled = async (deploymentId: string): Promise<string> => {
    for (;;) {
      const record = await signedCall(rx.url, { ...key, audience: hostId }, 'GET', `/v1/deployments/${deploymentId}`);
      const state = (record.body as { state?: string }).state ?? '';
      if (['COMPLETED', 'ROLLED_BACK', 'FAILED'].includes(state)) return state;
      await sleep(200);
    }
  };

  test('HAProxy killed with SIGKILL while the old upstream drains: started again and reconciled, the route is the new container alone', async (t) => {
    const paths = proxyPaths(proxyDir);
    const old = await agrees();
    const before = (await getVia(proxyPort, HOST, '/')).body;
    const target = before === 'v3' ? 'v1' : 'v3';
    // Slow requests begun one after another keep the old upstream busy, so its drain (60 s) is
    // still waiting when HAProxy dies; the kill cuts them, which is what a dead proxy does.
    let deploying = true;
    const slow: Promise<unknown>[] = [];
    const opener = (async () => {
      while (deploying) {
        slow.push(getVia(proxyPort, HOST, '/cgi-bin/slow').catch((err: unknown) => err));
        await sleep(300);
      }
    })();
    const attempt = deploy(rx.url, `${repo}:${target}`, '60s');
    // The drain has begun: the old server is sent nothing new and still has requests open.
    for (;;) {
      const row = (await haproxyServers(paths.adminSocket)).get(upstreamName(old.id));
      if (row && row.weight === 0 && row.current > 0) break;
      await sleep(20);
    }
    const killed = await killProxy();
    deploying = false;
    await opener;
    await Promise.all(slow);
    const outcome = await attempt;
    // The drain lost its proxy after the commit point: the switch is finished in the background
    // (or the 5 s check had started HAProxy again first and the drain ended there).
    t.diagnostic(`the deployment answered ${outcome.result?.state ?? outcome.error?.code ?? 'nothing'}`);
    assert.ok(outcome.result?.state === 'COMPLETED' || outcome.error?.code === 'FERRY_ERR_PROXY_UNAVAILABLE', outcome.error?.message);
    assert.equal(await settled(outcome.deploymentId), 'COMPLETED');
    // The receiver's check started a new HAProxy; wait for it to serve the route.
    while (await haproxyServers(paths.adminSocket).then(() => false, () => true)) await sleep(100);
    const now = await agrees();
    assert.notEqual(now.id, old.id);
    const pid = Number((await readFile(paths.pidFile, 'utf8')).trim().split('\n')[0]);
    assert.notEqual(pid, killed);
    assert.deepEqual(await getVia(proxyPort, HOST, '/'), { status: 200, body: target });
    assert.equal((await containers.inspect(`${service}.ferry-previous`))?.id, old.id);
    assert.equal((await containers.inspect(`${service}.ferry-previous`))?.running, false);
    const table = JSON.parse(await readFile(join(proxyDir, 'routes.json'), 'utf8')) as unknown;
    assert.match(JSON.stringify(table), new RegExp(upstreamName(now.id)));
    assert.doesNotMatch(JSON.stringify(table), new RegExp(upstreamName(old.id)));
  });

  test('the receiver killed during a drain and HAProxy killed while it is away: the next receiver starts HAProxy and finishes the switch', async () => {
    const paths = proxyPaths(proxyDir);
    const old = await agrees();
    const before = (await getVia(proxyPort, HOST, '/')).body;
    const target = before === 'v3' ? 'v1' : 'v3';
    await rx.stop();
    rx = await start({ FERRY_TEST_CRASH_AT: 'during-drain' });
    const doomed = rx;
    const attempt = await deploy(doomed.url, `${repo}:${target}`);
    assert.equal(attempt.result, undefined, 'the deployment lost its receiver');
    assert.equal(await exited(doomed.child), 'SIGKILL');
    await killProxy();
    await assert.rejects(getVia(proxyPort, HOST, '/'));
    rx = await start();
    const now = await agrees();
    assert.notEqual(now.id, old.id);
    assert.equal(await settled(attempt.deploymentId), 'COMPLETED');
    assert.deepEqual(await getVia(proxyPort, HOST, '/'), { status: 200, body: target });
    assert.equal((await containers.inspect(`${service}.ferry-previous`))?.id, old.id);
    assert.equal(await containers.inspect(`${service}.ferry-next`), undefined);
    assert.equal((await haproxyServers(paths.adminSocket)).size, 1);
  });
});
