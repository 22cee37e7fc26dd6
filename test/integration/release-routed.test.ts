/**
 * A release of routed services on two hosts, each with its own HAProxy: `web` (start-first) comes
 * after `api` (no route), and in the second release a new `gate` after `web` that never passes its
 * check. Under `hey` through both hosts' proxies: the second release switches web to v2 on both
 * hosts, gate fails, and the whole-release rollback — in reverse phase order — takes gate off both
 * hosts and switches web back to v1 start-first: not one answer other than 2xx, not one connection
 * error, and each proxy's servers are exactly the container serving.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { ContainerRunner, createDockerClient } from '@ferry/docker';
import { upstreamName } from '@ferry/protocol';
import { killHaproxy, proxyPaths } from '@ferry/proxy';
import { removeImages } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { signedCall } from '../helpers/registry.ts';
import { buildRoutedVersion, getVia, haproxyServers, heyLoad } from '../helpers/routed.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`rr-${run}`);
const repo = `ferry-rr-${run}`;
const names = { api: `api-${run}`, web: `web-${run}`, gate: `gate-${run}` };
const WEB = `web-${run}.test`;
const GATE = `gate-${run}.test`;

interface Host { engine: PrivateDockerd; containers: ContainerRunner; rx: ReceiverProcess; proxyDir: string; dataDir: string; port: number; id: string }

describe('a release of routed services rolled back as a whole, start-first', { timeout: 900_000 }, () => {
  const hosts: Host[] = [];
  const refs: string[] = [];
  let dir: string;

  const file = async (name: string, web: string, withGate: boolean): Promise<string> => {
    const targets = hosts.map((h) => h.rx.url);
    const health = { type: 'http', url: 'http://localhost:8080/healthz', interval: '200ms', timeout: '1s', retries: 10 };
    const services: Record<string, unknown> = {
      // No check of its own: unpublished on the bridge, nothing on the host reaches its port.
      [names.api]: { image: `${repo}:v1`, targets },
      [names.web]: { image: `${repo}:${web}`, targets, depends_on: [names.api], route: { host: WEB, port: 8080 }, drain: '5s', health },
      ...(withGate ? { [names.gate]: { image: `${repo}:bad`, targets, depends_on: [names.web], route: { host: GATE, port: 8080 }, health: { ...health, retries: 3 } } } : {}),
    };
    const path = join(dir, `${name}.yaml`);
    await writeFile(path, stringify({ version: 1, name: `rr-${run}`, services }));
    return path;
  };

  const deploy = (path: string): ReturnType<typeof runFerry> => runFerry(['deploy', '-f', path, '--json'], { DOCKER_HOST: s.buildDockerHost, FERRY_NATS_URL: s.natsUrl, ...keyEnv(key) });

  /** On every host: the proxy's servers for web are exactly its serving container's, and it answers `version`. */
  const serves = async (version: string): Promise<void> => {
    for (const h of hosts) {
      const web = await h.containers.inspect(names.web);
      assert.ok(web?.running, `${names.web} runs on ${h.id}`);
      const rows = await haproxyServers(proxyPaths(h.proxyDir).adminSocket);
      assert.deepEqual([...rows.keys()], [upstreamName(web.id)], `${h.id}: the route's servers`);
      assert.deepEqual(await getVia(h.port, WEB, '/'), { status: 200, body: version });
    }
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-rr-'));
    for (const [variant, healthy] of [['v1', true], ['v2', true], ['bad', false]] as const) refs.push(await buildRoutedVersion(s.buildDockerHost, repo, variant, { healthy }));
    for (const i of [0, 1]) {
      const engine = await PrivateDockerd.start({ bridge: true });
      const id = `rr${i}-${run}`;
      const proxyDir = await mkdtemp('/tmp/frp-');
      const dataDir = await mkdtemp(join(tmpdir(), 'ferry-rr-data-'));
      const port = await freePort();
      const rx = await startReceiverProcess({
        DOCKER_HOST: engine.host, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: id, FERRY_DATA_DIR: dataDir,
        FERRY_PROXY_HTTP: `127.0.0.1:${port}`, FERRY_PROXY_DIR: proxyDir, FERRY_STABILITY_WINDOW_MS: '500',
      });
      while ((await signedCall(rx.url, { ...key, audience: id }, 'GET', '/v1/releases')).status === 401) await sleep(100);
      hosts.push({ engine, containers: new ContainerRunner(createDockerClient(engine.host)), rx, proxyDir, dataDir, port, id });
    }
  });

  after(async () => {
    for (const h of hosts) {
      await h.rx.stop().catch(() => undefined);
      await killHaproxy(proxyPaths(h.proxyDir));
      await h.engine.stop().catch(() => undefined);
      for (const d of [h.proxyDir, h.dataDir]) await rm(d, { recursive: true, force: true });
    }
    await removeImages(dockerodeFor(s.buildDockerHost), refs);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the first release routes web on both hosts', async () => {
    const first = await deploy(await file('one', 'v1', false));
    assert.equal(first.code, 0, first.stdout + first.stderr);
    await serves('v1');
  });

  test('a failing last phase rolls the release back: gate off both hosts, web switched back to v1 with no failed request', async (t) => {
    const loads = hosts.map((h) => heyLoad(h.port, WEB, { rate: 100 }));
    await sleep(500);
    const second = await deploy(await file('two', 'v2', true));
    assert.equal(second.code, 1, second.stdout + second.stderr);
    const summary = JSON.parse(second.stdout.trim().split('\n').at(-1) ?? '{}') as { release: { state: string; outcomes: Record<string, Record<string, string>> } };
    assert.equal(summary.release.state, 'rolled-back', second.stdout);
    for (const h of hosts) {
      assert.deepEqual(summary.release.outcomes[h.id], { [names.api]: 'rolled-back', [names.web]: 'rolled-back', [names.gate]: 'failed' }, second.stdout);
    }
    for (const [i, load] of loads.entries()) {
      assert.ok(load.running(), 'the load ran through the release and its rollback');
      const done = await load.stop();
      t.diagnostic(`${hosts[i]?.id}: ${done.total} requests, ${done.ok} 2xx, other ${JSON.stringify(done.other)}, ${done.errors} connection errors`);
      assert.deepEqual(done.other, {}, done.output);
      assert.equal(done.errors, 0, done.output);
      assert.ok(done.ok > 0, done.output);
    }
    await serves('v1');
    for (const h of hosts) {
      assert.equal(await h.containers.inspect(names.gate), undefined, `${names.gate} is off ${h.id}`);
      assert.equal((await getVia(h.port, GATE, '/')).status, 404, `no route for ${GATE} on ${h.id}`);
    }
  });
});
