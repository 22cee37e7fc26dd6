/**
 * Health checks (RELIABILITY row 24) against a real `ferry receiver` process on the stack's
 * target engine: tcp, the image's own HEALTHCHECK and http probes, passing and failing. Every
 * failure rolls back to the container that ran before, which serves again, and the failure events
 * carry the probe history and the failed container's last log lines.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer as createTlsServer, type Server as HttpsServer } from 'node:https';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NatsConnection } from 'nats';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { NullSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { FerryError, HealthCheckSchema, type ServiceSpec } from '@ferry/protocol';
import { push } from '@ferry/sender';
import { buildTestImage, capture, freePort, runFerry, startWatchedReceiver, type ReceiverProcess } from '../helpers/ferry.ts';
import type { EventWatcher } from '../helpers/events.ts';
import { removeService } from '../helpers/cleanup.ts';
import { buildFromDockerfile } from '../helpers/images.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`hc-${run}`);
const hostId = `hc-${run}`;
const service = `hc-${run}`;
const repo = `ferry-hc-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);

interface Probe { ok: boolean; status?: number; error?: string; ms: number }

/** The test image with another Dockerfile line or two, built on the build engine. */
const buildFrom = (tag: string, dockerfile: string): Promise<void> => buildFromDockerfile(s.buildDockerHost, tag, dockerfile);

describe('health checks against a real receiver, engine and NATS', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  let port: number;
  let hang: Server;
  let hangPort: number;
  const hangSockets = new Set<Socket>();
  let hangAccepted = 0;
  /** HTTPS health endpoints: one whose certificate the receiver trusts, one it does not. */
  let certs: string;
  const tls: { trusted?: HttpsServer; untrusted?: HttpsServer } = {};
  const tlsPort = (server: Server | undefined): number => (server?.address() as { port: number }).port;
  const logger = createLogger({ level: 'silent' });
  // Says something on start, so a failure event has log lines to carry.
  const chatty = (listenPort: number): Partial<ServiceSpec> => ({
    env: { PORT: String(listenPort) },
    entrypoint: ['/bin/busybox', 'sh', '-c', `echo "started ${run} on $PORT"; exec /bin/busybox httpd -f -p 0.0.0.0:$PORT -h /www`],
  });

  const deploy = (image: string, extra: Partial<ServiceSpec>) => push({
    image, to: receiver.url, compression: 'zstd',
    service: { name: service, network: 'host', env: { PORT: String(port) }, ...extra },
  }, { images: new ImageStore(createDockerClient(s.buildDockerHost)), events: new NullSink({ logger }), credentials: key, source: 'ferry://sender/test' });

  const refused = async (image: string, extra: Partial<ServiceSpec>): Promise<FerryError> => {
    const error = await deploy(image, extra).then(() => undefined, (err: unknown) => err);
    assert.ok(error instanceof FerryError, `the deployment fails: ${String(error)}`);
    return error;
  };

  const page = async (): Promise<string> => (await fetch(`http://127.0.0.1:${port}/`)).text();

  /** The rolled-back deployment's record, its events, and proof that `previous` serves again. */
  const assertRolledBack = async (error: FerryError, previous: { id: string; variant: string }): Promise<{ probes: Probe[]; logs: string[] }> => {
    assert.equal(error.code, 'FERRY_ERR_HEALTHCHECK_FAILED', error.message);
    const record = error.details?.deployment as { deploymentId: string; state: string };
    assert.equal(record.state, 'ROLLED_BACK');
    const now = await target.getContainer(service).inspect();
    assert.equal(now.Id, previous.id, 'the previous container is back under the service name');
    assert.equal(now.State.Running, true);
    assert.match(await page(), new RegExp(previous.variant), 'and serves again');

    const failed = await watcher.until(record.deploymentId, 'deployment.failed');
    const probeFailure = await watcher.until(record.deploymentId, 'healthcheck.failed');
    await watcher.until(record.deploymentId, 'rollback.completed');
    assert.equal(failed.data.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    assert.equal(failed.data.state, 'ROLLED_BACK');
    assert.equal(typeof failed.data.reason, 'string');
    const probes = failed.data.probes as Probe[];
    const logs = failed.data.logs as string[];
    assert.ok(probes.length > 0, 'the failure event has the probe history');
    assert.ok(probes.every((p) => !p.ok));
    assert.ok(logs.some((l) => l.includes(`started ${run}`)), `the failure event has the container's log lines: ${JSON.stringify(logs)}`);
    assert.deepEqual(probeFailure.data.probes, probes);
    assert.deepEqual(probeFailure.data.logs, logs);
    return { probes, logs };
  };

  before(async () => {
    port = await freePort();
    await Promise.all([
      buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`),
      buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`),
    ]);
    // Exec form throughout: the image has busybox and no /bin/sh.
    await buildFrom(`${repo}:hc-good`, `FROM ${repo}:2\nHEALTHCHECK --interval=1s --timeout=1s CMD ["/bin/busybox", "sh", "-c", "/bin/busybox wget -q -O /dev/null http://127.0.0.1:$PORT/healthz"]\n`);
    await buildFrom(`${repo}:hc-bad`, `FROM ${repo}:1\nHEALTHCHECK --interval=1s CMD ["/bin/busybox", "sh", "-c", "echo not-ready-${run}; exit 1"]\n`);
    hang = createServer((socket) => {
      // Accepts and never answers: the probe has to be cut by its own timeout.
      hangAccepted++;
      hangSockets.add(socket);
      socket.on('close', () => hangSockets.delete(socket));
      socket.on('error', () => undefined);
    });
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    hangPort = (hang.address() as { port: number }).port;
    certs = await mkdtemp(join(tmpdir(), 'ferry-hc-tls-'));
    for (const name of ['trusted', 'untrusted'] as const) {
      const made = await capture('openssl', [
        'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=ferry-hc-${name}`,
        '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(certs, `${name}.key`), '-out', join(certs, `${name}.pem`),
      ]);
      assert.equal(made.code, 0, made.stderr);
      const server = createTlsServer({ key: await readFile(join(certs, `${name}.key`)), cert: await readFile(join(certs, `${name}.pem`)) }, (req, res) => {
        res.writeHead(req.url === '/healthz' ? 200 : 404).end('ok\n');
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      tls[name] = server;
    }
    ({ receiver, watcher, nc } = await startWatchedReceiver(hostId, key, { NODE_EXTRA_CA_CERTS: join(certs, 'trusted.pem') }));
  });

  after(async () => {
    await receiver?.stop();
    await nc?.drain();
    for (const socket of hangSockets) socket.destroy();
    await new Promise((r) => (hang ? hang.close(r) : r(undefined)));
    for (const server of [tls.trusted, tls.untrusted]) {
      server?.closeAllConnections();
      await new Promise((r) => (server ? server.close(r) : r(undefined)));
    }
    if (certs) await rm(certs, { recursive: true, force: true });
    await removeService(target, service);
    for (const ref of [`${repo}:1`, `${repo}:2`, `${repo}:hc-good`, `${repo}:hc-bad`]) {
      await target.getImage(ref).remove({ force: true }).catch(() => undefined);
      await build.getImage(ref).remove({ force: true }).catch(() => undefined);
    }
  });

  test('a tcp check passes once the port accepts (ferry push --health tcp://…)', async () => {
    const result = await runFerry([
      'push', `${repo}:1`, '--to', receiver.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
      '--health', `tcp://127.0.0.1:${port}`, '--health-interval', '100', '--health-timeout', '1000', '--health-start-period', '0', '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const summary = JSON.parse(result.stdout) as { deploymentId: string; deployment: { state: string } };
    assert.equal(summary.deployment.state, 'COMPLETED');
    const passed = await watcher.until(summary.deploymentId, 'healthcheck.passed');
    assert.ok(Number(passed.data.attempts) >= 1);
    assert.match(await page(), new RegExp(`v1-${run}`));
  });

  test('a tcp check that never connects rolls back to the old container', async () => {
    const previous = await target.getContainer(service).inspect();
    const error = await refused(`${repo}:2`, {
      ...chatty(await freePort()), health: HealthCheckSchema.parse({ type: 'tcp', host: '127.0.0.1', port, intervalMs: 100, timeoutMs: 500, retries: 3 }),
    });
    const { probes } = await assertRolledBack(error, { id: previous.Id, variant: `v1-${run}` });
    assert.equal(probes.length, 3);
    assert.ok(probes.every((p) => p.error === 'ECONNREFUSED'), JSON.stringify(probes));
  });

  test("the image's HEALTHCHECK passes: Docker reports healthy", async () => {
    const result = await deploy(`${repo}:hc-good`, { health: HealthCheckSchema.parse({ type: 'cmd', intervalMs: 200, timeoutMs: 2000, retries: 10 }) });
    assert.equal(result.deployment.state, 'COMPLETED');
    const info = await target.getContainer(service).inspect();
    assert.equal(info.State.Health?.Status, 'healthy');
    assert.equal(info.Config.Healthcheck?.Interval, 200 * 1e6, "the manifest's interval replaces the image's");
    assert.match(await page(), new RegExp(`v2-${run}`));
  });

  test("the image's HEALTHCHECK fails: unhealthy, rolled back, the check's output in the probes", async () => {
    const previous = await target.getContainer(service).inspect();
    const error = await refused(`${repo}:hc-bad`, { ...chatty(await freePort()), health: HealthCheckSchema.parse({ type: 'cmd', intervalMs: 200, timeoutMs: 2000, retries: 2 }) });
    const { probes } = await assertRolledBack(error, { id: previous.Id, variant: `v2-${run}` });
    assert.ok(probes.some((p) => p.error?.includes(`not-ready-${run}`)), JSON.stringify(probes));
    assert.match(error.message, /unhealthy/);
  });

  test('an image without a HEALTHCHECK cannot pass a cmd check', async () => {
    const previous = await target.getContainer(service).inspect();
    const error = await refused(`${repo}:1`, { ...chatty(port), health: HealthCheckSchema.parse({ type: 'cmd', intervalMs: 200, retries: 2 }) });
    assert.equal(error.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    assert.match(error.message, /declares no HEALTHCHECK/);
    const now = await target.getContainer(service).inspect();
    assert.equal(now.Id, previous.Id);
    assert.match(await page(), new RegExp(`v2-${run}`));
  });

  test('an http probe that hangs is cut by its timeout, then the deployment rolls back', async () => {
    const previous = await target.getContainer(service).inspect();
    const error = await refused(`${repo}:1`, {
      ...chatty(port), health: HealthCheckSchema.parse({ type: 'http', url: `http://127.0.0.1:${hangPort}/healthz`, intervalMs: 100, timeoutMs: 300, retries: 2 }),
    });
    assert.ok(hangAccepted >= 2, 'each probe reached the server that never answers');
    const { probes } = await assertRolledBack(error, { id: previous.Id, variant: `v2-${run}` });
    assert.equal(probes.length, 2);
    assert.ok(probes.every((p) => p.error === 'timed out after 300 ms'), JSON.stringify(probes));
  });

  test('an http probe that passes completes the deployment', async () => {
    const result = await deploy(`${repo}:1`, { health: HealthCheckSchema.parse({ type: 'http', url: `http://127.0.0.1:${port}/healthz`, intervalMs: 100, retries: 50 }) });
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.match(await page(), new RegExp(`v1-${run}`));
  });

  test('an https probe to a certificate the receiver does not trust fails on it, then the deployment rolls back', async () => {
    const previous = await target.getContainer(service).inspect();
    const error = await refused(`${repo}:2`, {
      ...chatty(port), health: HealthCheckSchema.parse({ type: 'http', url: `https://127.0.0.1:${tlsPort(tls.untrusted)}/healthz`, intervalMs: 100, retries: 2 }),
    });
    const { probes } = await assertRolledBack(error, { id: previous.Id, variant: `v1-${run}` });
    assert.equal(probes.length, 2);
    assert.ok(probes.every((p) => p.error === 'DEPTH_ZERO_SELF_SIGNED_CERT'), JSON.stringify(probes));
  });

  test('an https probe to a certificate the receiver trusts (NODE_EXTRA_CA_CERTS) completes the deployment', async () => {
    const result = await deploy(`${repo}:2`, { health: HealthCheckSchema.parse({ type: 'http', url: `https://127.0.0.1:${tlsPort(tls.trusted)}/healthz`, intervalMs: 100, retries: 50 }) });
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.match(await page(), new RegExp(`v2-${run}`));
  });
});
