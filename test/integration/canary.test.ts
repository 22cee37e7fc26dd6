/**
 * Canaries through a real HAProxy: a routed service deployed start-first with a `canary` gets a
 * share of the requests beside the version serving, and HAProxy's own counters decide. Under `hey`
 * through the proxy: a version that answers 500 on every fifth request is rolled back by itself
 * (the counters in its events, the old upstream back at full weight, the new container gone); a
 * healthy one is promoted at the end of its window; `ferry release abort` and `promote` end one by
 * hand, and with none running say so.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NatsConnection } from 'nats';
import { ContainerRunner, ImageStore, createDockerClient, type ContainerInfo } from '@ferry/docker';
import { upstreamName, type DeploymentResult } from '@ferry/protocol';
import { killHaproxy, proxyPaths } from '@ferry/proxy';
import { removeImages } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { EventWatcher } from '../helpers/events.ts';
import { freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { signedCall } from '../helpers/registry.ts';
import { buildRoutedVersion, deployRouted, getVia, haproxyServers, heyLoad, type RoutedDeploy, type RoutedOutcome } from '../helpers/routed.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`cn-${run}`);
const reader = testKey(`cn-read-${run}`);
const hostId = `cn-${run}`;
const service = `cn-${run}`;
const repo = `ferry-cn-${run}`;
const HOST = `canary-${run}.test`;
const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));

interface Counters { responses: Record<string, number>; errors: number; total: number }
interface CanaryData { weight: number; counters?: Counters; errorRate?: number; reason?: string; by?: string }

describe('canaries through HAProxy', { timeout: 600_000 }, () => {
  let engine: PrivateDockerd;
  let containers: ContainerRunner;
  let rx: ReceiverProcess;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  let dataDir: string;
  let proxyDir: string;
  let proxyPort: number;
  const refs: string[] = [];

  const deploy = (ref: string, canary?: Record<string, unknown>): Promise<RoutedOutcome> => deployRouted({
    images: buildImages, url: rx.url, key, audience: hostId, ref,
    service: { name: service, route: { host: HOST, path: '/', port: 8080 }, drain: '5s', ...(canary ? { canary } : {}) } as RoutedDeploy['service'],
  });

  const serving = async (): Promise<ContainerInfo> => {
    const info = await containers.inspect(service);
    assert.ok(info?.running, `${service} runs`);
    return info;
  };

  /** HAProxy's servers for the route are exactly the serving container's, at full weight. */
  const onlyServing = async (): Promise<ContainerInfo> => {
    const info = await serving();
    const rows = await haproxyServers(proxyPaths(proxyDir).adminSocket);
    assert.deepEqual([...rows.keys()], [upstreamName(info.id)]);
    assert.equal(rows.get(upstreamName(info.id))?.weight, 100);
    return info;
  };

  before(async () => {
    engine = await PrivateDockerd.start({ bridge: true });
    containers = new ContainerRunner(createDockerClient(engine.host));
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-cn-'));
    proxyDir = await mkdtemp('/tmp/fcp-');
    proxyPort = await freePort();
    refs.push(await buildRoutedVersion(s.buildDockerHost, repo, 'v1'));
    refs.push(await buildRoutedVersion(s.buildDockerHost, repo, 'v2'));
    refs.push(await buildRoutedVersion(s.buildDockerHost, repo, 'flaky', { failEvery: 5 }));
    nc = await natsConnect(s.natsReaderUrl);
    watcher = new EventWatcher(nc, `ferry.events.${hostId}.>`);
    rx = await startReceiverProcess({
      DOCKER_HOST: engine.host, FERRY_TRUST_FILE: trustFile([key, { key: reader, role: 'read' }]), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: hostId,
      FERRY_DATA_DIR: dataDir, FERRY_PROXY_HTTP: `127.0.0.1:${proxyPort}`, FERRY_PROXY_DIR: proxyDir, FERRY_STABILITY_WINDOW_MS: '500',
    });
    // A receiver with in-memory nonces refuses what was signed before it started (same second included).
    while ((await signedCall(rx.url, { ...key, audience: hostId }, 'GET', '/v1/releases')).status === 401) await sleep(100);
    const first = await deploy(`${repo}:v1`);
    assert.equal(first.result?.state, 'COMPLETED', first.error?.message);
  });

  after(async () => {
    await rx?.stop();
    await nc?.drain();
    if (proxyDir) await killHaproxy(proxyPaths(proxyDir));
    await engine?.stop();
    await removeImages(dockerodeFor(s.buildDockerHost), refs);
    for (const dir of [dataDir, proxyDir]) if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a canary answering 500 on a fifth of its requests is rolled back by itself; the old version never stopped', async (t) => {
    const old = await onlyServing();
    const traffic = heyLoad(proxyPort, HOST, { path: '/cgi-bin/app', rate: 100 });
    await sleep(500);
    const flaky = await deploy(`${repo}:flaky`, { weight: '50%', forMs: '60s', maxErrorRate: '5%', minRequests: 30 });
    const done = await traffic.stop();
    t.diagnostic(`load during the canary: ${done.total} requests, ${done.ok} 2xx, other ${JSON.stringify(done.other)}, ${done.errors} connection errors`);
    assert.equal(flaky.error?.code, 'FERRY_ERR_CANARY_FAILED', flaky.error?.message);
    const deployment = (flaky.error?.details as { deployment?: DeploymentResult } | undefined)?.deployment;
    assert.equal(deployment?.state, 'ROLLED_BACK');
    const rolled = await watcher.until(flaky.deploymentId, 'canary.rolled_back');
    const data = rolled.data as unknown as CanaryData;
    t.diagnostic(`canary.rolled_back: ${JSON.stringify(data)}`);
    assert.equal(data.by, 'counters');
    assert.ok((data.counters?.responses['5xx'] ?? 0) > 0, JSON.stringify(data));
    assert.ok((data.errorRate ?? 0) > 5, JSON.stringify(data));
    // Its 500s reached users only through the canary's share, and the rest was the old version's 2xx.
    assert.equal(done.errors, 0, done.output);
    assert.ok((done.other['500'] ?? 0) > 0 && (done.other['500'] ?? 0) < done.ok, done.output);
    // Only the canary's own 500s: its requests in flight finished before it left the route (no 502).
    assert.deepEqual(Object.keys(done.other), ['500'], done.output);
    assert.equal((await onlyServing()).id, old.id);
    assert.equal(await containers.inspect(`${service}.ferry-next`), undefined);
    assert.deepEqual(await getVia(proxyPort, HOST, '/'), { status: 200, body: 'v1' });
    const types = watcher.for(flaky.deploymentId).map((e) => e.type);
    assert.ok(types.indexOf('ferry.canary.started') < types.indexOf('ferry.canary.rolled_back'), types.join(' '));
    assert.ok(types.includes('ferry.deployment.failed'), types.join(' '));
  });

  test('a healthy canary is promoted at the end of its window, its counters in the event', async (t) => {
    const traffic = heyLoad(proxyPort, HOST, { path: '/cgi-bin/app', rate: 100 });
    await sleep(500);
    const good = await deploy(`${repo}:v2`, { weight: '30%', forMs: '4s', maxErrorRate: '1%', minRequests: 10 });
    const done = await traffic.stop();
    t.diagnostic(`load during the canary: ${done.total} requests, ${done.ok} 2xx, other ${JSON.stringify(done.other)}, ${done.errors} connection errors`);
    assert.equal(good.result?.state, 'COMPLETED', good.error?.message);
    const promoted = await watcher.until(good.deploymentId, 'canary.promoted');
    const data = promoted.data as unknown as CanaryData;
    t.diagnostic(`canary.promoted: ${JSON.stringify(data)}`);
    assert.equal(data.by, 'counters');
    assert.equal(data.weight, 30);
    assert.ok((data.counters?.responses['2xx'] ?? 0) >= 10, JSON.stringify(data));
    assert.equal(data.counters?.responses['5xx'], 0);
    assert.deepEqual(done.other, {}, done.output);
    assert.equal(done.errors, 0, done.output);
    await onlyServing();
    assert.deepEqual(await getVia(proxyPort, HOST, '/'), { status: 200, body: 'v2' });
  });

  test('ferry release abort and promote end a canary by hand; with none running they say so', async () => {
    const cli = (command: string): Promise<{ code: number; stdout: string; stderr: string }> => runFerry(['release', command, service, '--to', rx.url, '--json'], keyEnv(key));
    const none = await cli('promote');
    assert.equal(none.code, 1, none.stdout + none.stderr);
    assert.equal((JSON.parse(none.stdout) as { hosts: Array<{ code?: string }> }).hosts[0]?.code, 'FERRY_ERR_NO_CANARY');
    const read = await runFerry(['release', 'abort', service, '--to', rx.url, '--json'], keyEnv(reader));
    assert.equal((JSON.parse(read.stdout) as { hosts: Array<{ code?: string }> }).hosts[0]?.code, 'FERRY_ERR_NOT_GRANTED', read.stdout + read.stderr);

    const old = await onlyServing();
    const long = { weight: '20%', forMs: '10m', maxErrorRate: '1%' };
    const aborted = deploy(`${repo}:v1`, long);
    await waitForCanary();
    const abort = await cli('abort');
    assert.equal(abort.code, 0, abort.stdout + abort.stderr);
    const a = await aborted;
    assert.equal(a.error?.code, 'FERRY_ERR_CANARY_ABORTED', a.error?.message);
    assert.equal(((await watcher.until(a.deploymentId, 'canary.rolled_back')).data as unknown as CanaryData).by, 'hand');
    assert.equal((await onlyServing()).id, old.id);

    const promoted = deploy(`${repo}:v1`, long);
    await waitForCanary();
    const promote = await cli('promote');
    assert.equal(promote.code, 0, promote.stdout + promote.stderr);
    const p = await promoted;
    assert.equal(p.result?.state, 'COMPLETED', p.error?.message);
    assert.equal(((await watcher.until(p.deploymentId, 'canary.promoted')).data as unknown as CanaryData).by, 'hand');
    assert.notEqual((await onlyServing()).id, old.id);
    assert.deepEqual(await getVia(proxyPort, HOST, '/'), { status: 200, body: 'v1' });
  });

  /** Until HAProxy has two servers for the route: the canary listens for commands before it adds its own. */
  async function waitForCanary(): Promise<void> {
    while ((await haproxyServers(proxyPaths(proxyDir).adminSocket)).size < 2) await sleep(100);
  }
});
