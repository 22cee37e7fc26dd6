import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MemoryNonceStore, RedisNonceStore, RequestVerifier, TrustStore, fingerprint, loadOrCreateHostKey, signBytes, type NonceStore } from '@ferry/auth';
import { ensureWritableDir, type Env } from '@ferry/config';
import { ContainerRunner, ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, redactNatsUrl } from '@ferry/events';
import { listen, runUntilSignal, type ListeningServer } from '@ferry/http';
import { createLogger, type Logger } from '@ferry/log';
import { BUFFER_BUDGET_BYTES, BufferBudget } from '@ferry/memory';
import { createReceiverMetrics, meteredSink } from '@ferry/metrics';
import { FERRY_VERSION, FerryError, type Manifest } from '@ferry/protocol';
import { createApp } from './app.ts';
import { lockDataDir } from './data-dir-lock.ts';
import { CanaryControl } from './deploy/canary.ts';
import { readCapacity } from './capacity.ts';
import { loadReceiverConfig, type ReceiverConfig } from './config.ts';
import { startProxy } from './proxy-keeper.ts';
import { Deployer } from './deploy/engine.ts';
import { receiverReadiness, waitForEngine } from './readiness.ts';
import { Journal } from './journal/journal.ts';
import { ReleaseStore } from './releases/store.ts';
import { LayerInventory } from './layers/index.ts';
import { partialOwner, removePartialImages } from './load/layered.ts';
import { PackageStore } from './store/packages.ts';
import { PolicyGate } from './policy/index.ts';
import { receiverRegistration } from './registration/index.ts';
import { Admission } from './upload/admission.ts';
import { clearSpool } from './upload/multipart.ts';
import { UploadStore } from './upload/sessions.ts';
import { StreamStore } from './upload/streams.ts';

/** Signed into the receiver's identity and sent to the registry with its registration. */
export const VERSION = FERRY_VERSION;

/** Larger packages belong to the resumable protocol; the one-shot upload refuses them. */
const MAX_ONE_SHOT_BYTES = 8 * 1024 ** 3;
/** Upper bound on a resumable upload's package; the disk is the real limit (507 when it is reached). */
const MAX_UPLOAD_BYTES = 1024 ** 4;

export interface RunningReceiver {
  url: string;
  config: Readonly<ReceiverConfig>;
  close(): Promise<void>;
}

/** Starts a receiver from the environment; the caller decides how long it lives. */
export async function startReceiver(env: Env = process.env, logger?: Logger): Promise<RunningReceiver> {
  const config = loadReceiverConfig(env);
  const log = logger ?? createLogger({ level: config.logLevel, name: 'ferry-receiver' });
  const spoolDir = join(config.dataDir, 'ingest');
  await ensureWritableDir(spoolDir);
  // Before anything in the data directory is read: no other receiver, nor a bundle apply, uses it.
  const lock = await lockDataDir(config.dataDir, 'ferry receiver');
  try {
    const running = await startLocked(config, log, spoolDir);
    return { ...running, close: async () => { await running.close(); await lock.release(); } };
  } catch (err) {
    await lock.release();
    throw err;
  }
}

async function startLocked(config: Readonly<ReceiverConfig>, log: Logger, spoolDir: string): Promise<RunningReceiver> {
  const dropped = await clearSpool(spoolDir);
  if (dropped > 0) log.info({ files: dropped }, 'one-shot uploads an earlier run was receiving removed');
  // Read before anything starts: a receiver nobody may call is a configuration error, not a service.
  const trust = new TrustStore({ file: config.trustFile });
  const hostKey = await loadOrCreateHostKey(config.dataDir, config.hostId);

  const docker = createDockerClient(config.dockerHost);
  // Before anything that needs it: without its engine a receiver fails to start, and says why.
  await waitForEngine((signal) => docker.ping(signal), {
    dockerHost: config.dockerHost,
    onWaiting: (cause) => log.warn({ dockerHost: config.dockerHost ?? null, cause }, 'waiting for the Docker engine'),
  });
  const layers = new LayerInventory(docker, { owner: partialOwner(config.dataDir) });
  const metrics = createReceiverMetrics();
  // Every event is on disk in the outbox before publish() returns; NATS gets it when it can.
  const events = meteredSink(config.natsUrl
    ? await JetStreamPublisher.connect({
      url: config.natsUrl, logger: log, name: `ferry-receiver-${config.hostId}`, outboxDir: join(config.dataDir, 'outbox'),
      // Signed with the host key: the registry believes what a host says about itself only.
      signer: { keyId: hostKey.keyId, sign: (message) => signBytes(hostKey.privateKey, message) },
    })
    : new NullSink({ logger: log }), metrics);
  metrics.watchEvents(events);
  const images = new ImageStore(docker);
  const packages = await PackageStore.open(config.dataDir);
  const canaries = new CanaryControl();
  // Before recovery and serving: a routed service's traffic moves only through a proxy that answers.
  const proxy = config.proxy ? await startProxy(config.proxy, log) : undefined;
  const deployer = new Deployer({
    images, containers: new ContainerRunner(docker), events, hostId: config.hostId, logger: log, policy: config.policy,
    packages,
    journal: await Journal.open(join(config.dataDir, 'journal'), log),
    retainImages: config.retainImages, stabilityWindowMs: config.stabilityWindowMs, canaries,
    releases: await ReleaseStore.open(join(config.dataDir, 'releases'), log), retainReleases: config.retainReleases, disk: { dir: config.dataDir, minFreeBytes: config.minFreeBytes }, layers,
    ...(config.testCrashAt ? { crashAt: config.testCrashAt } : {}),
    ...(proxy ? { proxy: proxy.proxy } : {}),
  });
  // Before any request: what a killed process left half-done is put right first.
  await deployer.recover();
  await removePartialImages(images, log, layers.owner).catch((err: unknown) => log.warn({ err }, 'could not look for layer images an earlier run left'));
  const policy = new PolicyGate({ policy: config.policy, events, hostId: config.hostId, logger: log, newestSigned: (service) => deployer.journal.newestSigned(service) });
  const admission = new Admission({
    policy, events, hostId: config.hostId, logger: log, assertDiskSpace: (bytes) => deployer.assertDiskSpace(bytes),
    limits: { package: MAX_ONE_SHOT_BYTES, upload: MAX_UPLOAD_BYTES },
  });
  const onRejected = (manifest: Manifest, error: FerryError): void => void admission.rejected(manifest, error);
  const uploads = await UploadStore.open({
    dir: join(config.dataDir, 'uploads'), ttlSeconds: config.uploadTtlSeconds, logger: log, onRejected,
  });
  uploads.startSweeper();
  const buffers = new BufferBudget(BUFFER_BUDGET_BYTES);
  // After the layer images of stopped loads went: a carried-over stream's load makes its own again.
  const streams = await StreamStore.open({
    dir: join(config.dataDir, 'streams'), load: { images, packages, logger: log, layers }, layers, logger: log,
    onRejected,
    afterPart: () => buffers.check(),
  });
  // Redis being down must not stop deployments: the store then answers from memory (status() says so).
  const nonces: NonceStore = config.redisUrl
    ? await RedisNonceStore.connect(config.redisUrl, { prefix: `ferry:nonce:${config.hostId}:`, log })
    : new MemoryNonceStore();
  // Requests signed before this second are refused while nonces are in memory; listening waits
  // for it to begin, so that no request the previous process accepted can be signed inside it.
  const startedAt = Math.ceil(Date.now() / 1000);
  const verifier = new RequestVerifier({ trust, nonces, audience: config.hostId, subject: { id: config.hostId, labels: config.labels }, startedAt });
  let listeningUrl = '';
  const registration = config.registry ? receiverRegistration({
    settings: config.registry, hostId: config.hostId, hostKey, labels: config.labels, version: VERSION, docker, logger: log,
    capabilities: ['resumable', 'layers', 'streams', ...(config.tls ? ['tls'] : [])], listenUrl: () => listeningUrl,
    changing: () => deployer.changing,
  }) : undefined;
  const app = createApp({
    logger: log, verifier, deployer, hostId: config.hostId, hostKey, version: VERSION, spoolDir, admission, uploads, streams, layers,
    security: {
      allow: config.allowCidrs, trustedProxies: config.trustedProxies,
      bodyRate: { minBytesPerSecond: config.http.minBodyBytesPerSecond, windowMs: config.http.bodyRateWindowMs },
      onReject: (code) => metrics.authRejections.inc({ code }),
    },
    metrics, metricsToken: config.metricsToken, canaries,
    capacity: () => readCapacity({ docker, hostId: config.hostId, dataDir: config.dataDir, budget: config.budget, localEngine: isLocalEngine(config.dockerHost) }),
    readiness: receiverReadiness({ docker, events, nonces, dataDir: config.dataDir, minFreeBytes: config.minFreeBytes, ...(registration ? { registry: registration.check } : {}), ...(proxy ? { proxy: proxy.check } : {}) }),
  });
  let server: ListeningServer;
  try {
    const tls = await readTls(config.tls);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, startedAt * 1000 - Date.now())));
    server = await listen(app, config.listen.host, config.listen.port, { ...config.http, tls });
  } catch (err) {
    await events.close();
    await nonces.close?.();
    await proxy?.close();
    if (err instanceof FerryError) throw err;
    throw new FerryError('FERRY_ERR_CONFIG', { message: `Cannot listen on ${config.listen.host}:${config.listen.port}: ${(err as Error).message}`, cause: err });
  }
  listeningUrl = server.url;
  // In the background: an unreachable registry is retried, and never delays serving deployments.
  registration?.start();
  log.info({ url: server.url, host: config.hostId, hostKey: fingerprint(hostKey.privateKey), trust: trust.describe(), nonceStore: nonces.status?.().backend ?? 'memory', nats: config.natsUrl === undefined ? null : redactNatsUrl(config.natsUrl), dataDir: config.dataDir }, 'receiver listening');

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    // Each step's failure is logged and the next still runs, so shutdown never stops half-way.
    closing ??= (async () => {
      await registration?.close();
      await server.close().catch((err: unknown) => log.error({ err }, 'closing HTTP failed'));
      uploads.close();
      streams.close();
      deployer.close();
      // HAProxy itself keeps running: it serves the routes until the next receiver adopts it.
      await proxy?.close().catch((err: unknown) => log.error({ err }, 'closing the proxy failed'));
      await events.close().catch((err: unknown) => log.error({ err }, 'closing events failed'));
      await nonces.close?.().catch((err: unknown) => log.error({ err }, 'closing the nonce store failed'));
      log.info('receiver stopped');
    })();
    return closing;
  };
  return { url: server.url, config, close };
}

/** `ferry receiver`: runs in the foreground until SIGINT or SIGTERM. */
export async function runReceiver(env: Env = process.env): Promise<void> {
  await runUntilSignal(await startReceiver(env));
}

/** Whether the engine is reached through a socket of this machine (then its data root is a local path). */
function isLocalEngine(dockerHost: string | undefined): boolean {
  const host = dockerHost?.trim() || process.env.DOCKER_HOST?.trim();
  return !host || host.startsWith('unix://');
}

async function readTls(tls: ReceiverConfig['tls']): Promise<{ cert: Buffer; key: Buffer } | undefined> {
  if (!tls) return undefined;
  const read = async (name: string, path: string): Promise<Buffer> => readFile(path).catch((err: unknown) => {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${name}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
  });
  return { cert: await read('FERRY_TLS_CERT', tls.certFile), key: await read('FERRY_TLS_KEY', tls.keyFile) };
}
