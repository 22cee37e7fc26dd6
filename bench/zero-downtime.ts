/**
 * What a routed service's users see while it is deployed again and again: `hey` sends a steady
 * load through the host's proxy (HAProxy, run by the receiver) while N deployments alternate two
 * versions, once with `strategy: start-first` and once with `stop-first`:
 *
 *   PATH=$PWD/node_modules/.bin:$PATH node bench/zero-downtime.ts --deploys 20 --rate 200
 *
 * It needs the local stack up (its build engine builds the two versions), hey and haproxy. The
 * receiver deploys to a private engine with a Linux bridge of its own (test/helpers/dockerd.ts), so
 * routed containers publish their port on 127.0.0.1 and nothing else on the machine touches them.
 * Prints, for each strategy, the requests sent, the 2xx, the other answers by status, the
 * connection errors and the time the N deployments took. Run as root (the bridge).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { FerryError } from '@ferry/protocol';
import { killHaproxy, proxyPaths } from '@ferry/proxy';
import { PrivateDockerd } from '../test/helpers/dockerd.ts';
import { freePort, startReceiverProcess, type ReceiverProcess } from '../test/helpers/ferry.ts';
import { testKey, trustFile } from '../test/helpers/keys.ts';
import { signedCall } from '../test/helpers/registry.ts';
import { ROUTED_HEALTH, buildRoutedVersion, deployRouted, getVia, heyLoad, type Load } from '../test/helpers/routed.ts';
import { stack } from '../test/helpers/stack.ts';

const STRATEGIES = ['start-first', 'stop-first'] as const;
type Strategy = (typeof STRATEGIES)[number];

const log = (message: string): void => { process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`); };

interface Round { strategy: Strategy; deploys: number; seconds: number; perDeploy: number[]; load: Load; haproxyRestarted: boolean; failed: Record<string, number> }

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { deploys: { type: 'string' }, rate: { type: 'string' }, strategies: { type: 'string' }, 'window-ms': { type: 'string' } } });
  const deploys = Number(values.deploys ?? 20);
  if (!Number.isInteger(deploys) || deploys < 1 || deploys > 1000) throw new Error('--deploys: 1 to 1000');
  const rate = Number(values.rate ?? 200);
  if (!Number.isInteger(rate) || rate < 10 || rate > 10_000) throw new Error('--rate: 10 to 10000 requests a second');
  const windowMs = values['window-ms'] ?? '1000';
  if (!/^\d{1,6}$/.test(windowMs)) throw new Error('--window-ms: the stability window in milliseconds');
  const strategies = (values.strategies ?? STRATEGIES.join(',')).split(',').map((x) => x.trim()) as Strategy[];
  for (const x of strategies) if (!STRATEGIES.includes(x)) throw new Error(`--strategies: a subset of ${STRATEGIES.join(',')}`);

  const s = stack();
  const run = randomBytes(3).toString('hex');
  const repo = `ferry-bench-zd-${run}`;
  const key = testKey(`bench-zd-${run}`);
  const hostId = `bench-zd-${run}`;
  const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));
  const cleanups: Array<() => Promise<unknown>> = [];
  const stop = async (): Promise<void> => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err: unknown) => log(`clean-up: ${String(err)}`));
  };
  process.once('SIGINT', () => { void stop().then(() => process.exit(130)); });
  try {
    const engine = await PrivateDockerd.start({ bridge: true });
    cleanups.push(() => engine.stop());
    const dir = await mkdtemp(join(tmpdir(), 'ferry-bench-zd-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    // HAProxy's sockets live in its directory: a short path.
    const proxyDir = await mkdtemp('/tmp/fzd-');
    cleanups.push(() => rm(proxyDir, { recursive: true, force: true }));
    cleanups.push(() => killHaproxy(proxyPaths(proxyDir)));
    const versions = [await buildRoutedVersion(s.buildDockerHost, repo, 'a'), await buildRoutedVersion(s.buildDockerHost, repo, 'b')];
    cleanups.push(async () => { for (const ref of versions) await buildImages.remove(ref).catch(() => undefined); });
    const proxyPort = await freePort();
    const rx: ReceiverProcess = await startReceiverProcess({
      DOCKER_HOST: engine.host, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_DATA_DIR: join(dir, 'receiver'),
      FERRY_PROXY_HTTP: `127.0.0.1:${proxyPort}`, FERRY_PROXY_DIR: proxyDir, FERRY_STABILITY_WINDOW_MS: windowMs,
    });
    cleanups.push(() => rx.stop());
    // A receiver with in-memory nonces refuses what was signed before it started (same second included).
    while ((await signedCall(rx.url, { ...key, audience: hostId }, 'GET', '/v1/releases')).status === 401) await sleep(100);
    // What went wrong, when something does: the receiver's warnings and errors.
    cleanups.push(() => {
      if (process.exitCode === 1) for (const line of rx.logs.filter((l) => typeof l.level === 'number' && l.level >= 40)) log(`receiver: ${JSON.stringify(line).slice(0, 600)}`);
      return Promise.resolve();
    });

    const deploy = async (service: string, host: string, strategy: Strategy, ref: string): Promise<void> => {
      const outcome = await deployRouted({
        images: buildImages, url: rx.url, key, audience: hostId, ref,
        service: { name: service, route: { host, path: '/', port: 8080 }, strategy, ...(strategy === 'start-first' ? { drain: '10s' } : {}), health: { ...ROUTED_HEALTH, retries: 25 } },
      });
      if (outcome.error) throw outcome.error;
      if (outcome.result?.state !== 'COMPLETED') throw new Error(`${service}: ${outcome.result?.state ?? 'no answer'}`);
    };

    log(`receiver ${rx.url}, proxy 127.0.0.1:${proxyPort}, engine ${engine.host} (bridge ${engine.bridge ?? '?'}); ${deploys} deploys per strategy at ${rate} requests/s, stability window ${windowMs} ms`);
    const rounds: Round[] = [];
    const services: string[] = [];
    const haproxyPid = async (): Promise<string> => (await readFile(proxyPaths(proxyDir).pidFile, 'utf8').catch(() => '')).trim();
    for (const strategy of strategies) {
      const service = `zd-${strategy}-${run}`;
      const host = `${service}.bench`;
      await deploy(service, host, strategy, versions[0] ?? '');
      const pidBefore = await haproxyPid();
      const first = await getVia(proxyPort, host, '/');
      if (first.status !== 200) throw new Error(`${service}: the proxy answers ${first.status} before the load`);
      const traffic = heyLoad(proxyPort, host, { rate, maxSeconds: 86_400 });
      cleanups.push(() => Promise.resolve(traffic.kill()));
      await sleep(1000);
      const started = performance.now();
      const perDeploy: number[] = [];
      // A deployment that fails is counted by its error code and the next one goes on.
      const failed: Record<string, number> = {};
      for (let i = 1; i <= deploys; i++) {
        const t0 = performance.now();
        try {
          await deploy(service, host, strategy, versions[i % 2] ?? '');
        } catch (err) {
          const code = err instanceof FerryError ? err.code : 'other';
          failed[code] = (failed[code] ?? 0) + 1;
          log(`${strategy} deploy ${i} failed: ${err instanceof Error ? err.message : String(err)}`);
        }
        perDeploy.push((performance.now() - t0) / 1000);
      }
      const seconds = (performance.now() - started) / 1000;
      await sleep(1000);
      const result = await traffic.stop();
      // A HAProxy that died during the round (the receiver starts it again within 5 s) shows as another pid.
      const haproxyRestarted = (await haproxyPid()) !== pidBefore;
      rounds.push({ strategy, deploys, seconds, perDeploy, load: result, haproxyRestarted, failed });
      log(`${strategy}: ${result.total} requests, ${result.ok} 2xx, other ${JSON.stringify(result.other)}, ${result.errors} connection errors; ${deploys} deploys (failed ${JSON.stringify(failed)}) in ${seconds.toFixed(1)} s (load average ${(loadavg()[0] ?? 0).toFixed(1)})${haproxyRestarted ? '; HAProxy was restarted' : ''}`);
      services.push(service);
    }
    // Removed only now: each round's route keeps a slot of its own, none reused under load (README).
    for (const service of services) {
      const removed = await signedCall(rx.url, { ...key, audience: hostId }, 'DELETE', `/v1/services/${service}`);
      if (removed.status !== 200) log(`removing ${service}: ${removed.status}`);
    }
    const errorLines = (output: string): string[] => (output.split('Error distribution:')[1] ?? '').split('\n').map((l) => l.trim()).filter((l) => l !== '');
    process.stdout.write(`${JSON.stringify({
      deploys, rate, stabilityWindowMs: Number(windowMs), loadAverage: loadavg().map((x) => Number(x.toFixed(1))),
      strategies: rounds.map((r) => ({
        strategy: r.strategy, requests: r.load.total, ok2xx: r.load.ok, non2xx: r.load.other, connectionErrors: r.load.errors,
        errorKinds: errorLines(r.load.output), slowestSeconds: Number(/Slowest:\s+([\d.]+) secs/.exec(r.load.output)?.[1] ?? Number.NaN),
        failedDeploys: r.failed, haproxyRestarted: r.haproxyRestarted, seconds: Number(r.seconds.toFixed(1)),
        secondsPerDeploy: { min: Number(Math.min(...r.perDeploy).toFixed(2)), max: Number(Math.max(...r.perDeploy).toFixed(2)), mean: Number((r.seconds / r.deploys).toFixed(2)) },
      })),
    }, null, 2)}\n`);
  } catch (err) {
    process.exitCode = 1;
    throw err;
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  log(err instanceof Error ? err.stack ?? err.message : String(err));
  process.exitCode = 1;
});
