import { join } from 'node:path';
import { MemoryNonceStore, RedisNonceStore, RegistryClient, RequestVerifier, TrustStore, type NonceStore } from '@ferry/auth';
import { ensureWritableDir, type Env } from '@ferry/config';
import { ImageBuilder, ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, redactNatsUrl, type EventSink } from '@ferry/events';
import { listen, runUntilSignal, type ListeningServer } from '@ferry/http';
import { createLogger, type Logger } from '@ferry/log';
import { FERRY_VERSION, FerryError } from '@ferry/protocol';
import { continueDeployment, runDeployment } from '../deploy.ts';
import { PausedReleases } from '../release/paused.ts';
import { desiredRecorder } from '../desired.ts';
import { createApp } from './app.ts';
import { DEFAULT_LISTEN, loadSenderServiceConfig, type SenderServiceConfig } from './config.ts';
import { DeploymentJobs } from './jobs.ts';
import { JobStore } from './store.ts';

export const SENDER_SERVICE_VERSION = FERRY_VERSION;

export interface RunningSenderService {
  url: string;
  config: Readonly<SenderServiceConfig>;
  jobs: DeploymentJobs;
  close(): Promise<void>;
}

/** Starts the sender service from the environment; the caller decides how long it lives. */
export async function startSenderService(env: Env = process.env, logger?: Logger): Promise<RunningSenderService> {
  const config = loadSenderServiceConfig(env);
  const log = logger ?? createLogger({ level: config.logLevel, name: 'ferry-sender' });
  await ensureWritableDir(config.dataDir);
  const store = await JobStore.open(join(config.dataDir, 'deployments'), log);

  const docker = createDockerClient(config.dockerHost);
  // Every event is on disk in the outbox before publish() returns; NATS gets it when it can.
  const events: EventSink = config.natsUrl
    ? await JetStreamPublisher.connect({ url: config.natsUrl, logger: log, name: `ferry-sender-${config.hostId}`, outboxDir: join(config.dataDir, 'outbox') })
    : new NullSink({ logger: log });
  const registry = config.registryUrl ? new RegistryClient(config.registryUrl, config.credentials) : undefined;
  // Releases paused by `pause: manual` wait here for POST /v1/releases/ID/continue.
  const paused = new PausedReleases(join(config.dataDir, 'paused-releases'));
  const deps = {
    images: new ImageStore(docker), builder: new ImageBuilder(docker), events, credentials: config.credentials, paused,
    source: `ferry://sender/${config.hostId}`, senderHost: config.hostId, registryUrl: config.registryUrl,
    ...(registry ? { desired: desiredRecorder(registry, (message: string) => log.warn(message)) } : {}),
  };
  const jobs = new DeploymentJobs({
    store, log, paused,
    run: (document, hooks, { paused: state, ...options }) => (state
      ? continueDeployment(document, state, { ...deps, ...hooks }, options)
      : runDeployment(document, { ...deps, ...hooks }, options)),
  });
  // Before any request: a job the previous process left half-done is answered as failed, not as running forever.
  await jobs.recover();

  const nonces: NonceStore = config.redisUrl
    ? await RedisNonceStore.connect(config.redisUrl, { prefix: `ferry:nonce:${config.hostId}:`, log })
    : new MemoryNonceStore();
  // As in the receiver: with nonces in memory, a request signed before this process began is refused.
  const startedAt = Math.ceil(Date.now() / 1000);
  const verifier = new RequestVerifier({ trust: new TrustStore({ file: config.trustFile }), nonces, audience: config.hostId, startedAt });
  const app = createApp({
    logger: log, verifier, jobs, hostId: config.hostId, version: SENDER_SERVICE_VERSION,
    security: { allow: config.allowCidrs },
  });
  let server: ListeningServer;
  try {
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, startedAt * 1000 - Date.now())));
    server = await listen(app, config.listen.host, config.listen.port);
  } catch (err) {
    jobs.close();
    await events.close();
    await nonces.close?.();
    throw new FerryError('FERRY_ERR_CONFIG', { message: `Cannot listen on ${config.listen.host}:${config.listen.port}: ${(err as Error).message}`, cause: err });
  }
  log.info({ url: server.url, host: config.hostId, trust: verifier.trust.describe(), nats: config.natsUrl === undefined ? null : redactNatsUrl(config.natsUrl), registry: config.registryUrl ?? null, dataDir: config.dataDir }, 'sender listening');

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    // Each step's failure is logged and the next still runs, so shutdown never stops half-way.
    closing ??= (async () => {
      await server.close().catch((err: unknown) => log.error({ err }, 'closing HTTP failed'));
      jobs.close();
      await store.flush();
      await events.close().catch((err: unknown) => log.error({ err }, 'closing events failed'));
      await nonces.close?.().catch((err: unknown) => log.error({ err }, 'closing the nonce store failed'));
      log.info('sender stopped');
    })();
    return closing;
  };
  return { url: server.url, config, jobs, close };
}

/** `ferry sender`: runs in the foreground until SIGINT or SIGTERM. */
export async function runSenderService(env: Env = process.env): Promise<void> {
  await runUntilSignal(await startSenderService(env));
}

export const SENDER_SERVICE_HELP = `Usage: ferry sender

Runs the sender service in the foreground until SIGINT/SIGTERM: signed HTTP clients (CI, release
tooling) POST deployment documents to it; it builds, packages and sends
them to the receivers as "ferry deploy" does. Configuration (environment):
  FERRY_TRUST_FILE  the callers' keys and grants it accepts (default FERRY_DATA_DIR/trust.json;
                    "ferry trust add")
  FERRY_KEY_ID with FERRY_KEY_FILE or FERRY_KEY   the key it signs uploads to receivers with
                    (required); FERRY_GRANT_FILE or FERRY_GRANT, its grant when it has one
  FERRY_LISTEN      host:port to listen on (default ${DEFAULT_LISTEN})
  FERRY_HOST_ID     its id, the audience of signed requests (default sender)
  FERRY_DATA_DIR    job records, paused releases and the event outbox (default /var/lib/ferry-sender)
  DOCKER_HOST       the build engine (default: the local socket)
  FERRY_NATS_URL    nats://host:port for events (optional)
  FERRY_REDIS_URL   redis://host:port for nonces that survive restarts (optional)
  FERRY_REGISTRY_URL  resolves selector: targets and records desired state (optional)
  FERRY_ALLOW_CIDRS client addresses allowed (optional; default all)
  FERRY_LOG_LEVEL   fatal|error|warn|info|debug|trace (default info)
Endpoints: GET /healthz; signed POST /v1/deployments, GET /v1/deployments/ID,
POST /v1/releases/ID/continue (docs/sender-service.md).
`;
