import { createPublicKey } from 'node:crypto';
import { join } from 'node:path';
import {
  MemoryNonceStore, RedisNonceStore, RequestVerifier, TrustStore, fingerprint, loadOrCreateHostKey, signBytes, type NonceStore, type SigningKey,
} from '@ferry/auth';
import { ensureWritableDir, type Env } from '@ferry/config';
import { JetStreamPublisher, NullSink, redactNatsUrl, type EventSink, type EventSinkHealth } from '@ferry/events';
import { listen, runUntilSignal, type ListeningServer } from '@ferry/http';
import { createLogger, type Logger } from '@ferry/log';
import { FERRY_VERSION, FerryError } from '@ferry/protocol';
import type { Router } from 'express';
import { createApp, type CheckResult, type Readiness } from './app.ts';
import { loadRegistryConfig, type RegistryConfig } from './config.ts';
import { EventProjector } from './consumer.ts';
import { dashboardRouter } from './dashboard/index.ts';
import { receiverCorrector } from './correct.ts';
import { EnrollmentProof } from './enrollment.ts';
import { releaseSignerKeys } from './provenance.ts';
import { Registry } from './registry.ts';
import { MemoryStore, RedisStore, type RegistryStore } from './store.ts';
import type { RegistryView } from './view.ts';

export const VERSION = FERRY_VERSION;

/** How long start-up waits for Redis before it serves from memory (and resyncs once Redis answers). */
const REDIS_START_WAIT_MS = 2000;

export interface RunningRegistry {
  url: string;
  config: Readonly<RegistryConfig>;
  registry: Registry;
  close(): Promise<void>;
}

export interface StartRegistryOptions {
  logger?: Logger;
  /**
   * Builds the dashboard's routes from the registry's read model; mounted before `/v1`. Default:
   * the built-in dashboard (./dashboard); `false`: none. A `close()` on the router is called first
   * at shutdown (it ends live streams, which would otherwise hold the server open).
   */
  dashboard?: ((view: RegistryView, config: Readonly<RegistryConfig>) => Router & { close?: () => void }) | false;
}

/** Starts a registry from the environment; the caller decides how long it lives. */
export async function startRegistry(env: Env = process.env, options: StartRegistryOptions = {}): Promise<RunningRegistry> {
  const config = loadRegistryConfig(env);
  const log = options.logger ?? createLogger({ level: config.logLevel, name: 'ferry-registry' });
  await ensureWritableDir(config.dataDir);
  // The registry signs its own events (host.registered, host.lost, drift.detected) so that its
  // projection can tell them from forgeries: with its FERRY_KEY when it has one, else with a key
  // it makes in its data directory at first start.
  const eventKey: SigningKey = config.credentials ?? { ...await loadOrCreateHostKey(config.dataDir, config.hostId), keyId: `registry.${config.hostId}` };

  const events: EventSink & EventSinkHealth = config.natsUrl
    ? await JetStreamPublisher.connect({
      url: config.natsUrl, logger: log, name: `ferry-registry-${config.hostId}`, outboxDir: join(config.dataDir, 'outbox'),
      signer: { keyId: eventKey.keyId, sign: (message) => signBytes(eventKey.privateKey, message) },
    })
    : new NullSink({ logger: log });
  let store: RegistryStore;
  if (config.redisUrl) {
    const redis = new RedisStore(config.redisUrl, { prefix: `ferry:registry:${config.hostId}:`, log, file: join(config.dataDir, 'registry-keys.json') });
    await redis.ready(REDIS_START_WAIT_MS);
    store = redis;
  } else {
    // Enrolled host keys and open join tokens outlive a restart even without Redis.
    store = new MemoryStore({ file: join(config.dataDir, 'registry-keys.json'), log });
  }
  // The trust store is made below, once the registry can lend it the enrolled keys; the registry
  // asks it about revocations from then on.
  const revocations: { trust?: TrustStore } = {};
  const registry = new Registry({
    isRevoked: (scope) => revocations.trust?.isRevoked(scope) ?? false,
    store, events, logger: log, registryId: config.hostId, ttlSeconds: config.hostTtlSeconds,
    driftMode: config.driftMode, driftIgnore: config.driftIgnore, maxHosts: config.maxHosts,
    ...(config.driftMode === 'correct' && config.credentials ? { corrector: receiverCorrector(config.credentials) } : {}),
  });
  await registry.start();
  const projector = config.natsUrl
    ? new EventProjector({
      url: config.natsUrl, durable: `ferry-registry-${config.hostId}`, registry, logger: log, registryKey: createPublicKey(eventKey.privateKey),
      // An operator's release events are checked against the trust file (and the grant they carry).
      releaseKeysAt: (keyId, grant, arrivalMs, claims) => {
        const trust = revocations.trust;
        if (!trust) return [];
        let scopes;
        try {
          scopes = trust.scopesFor(keyId, grant);
        } catch {
          return []; // a grant that does not check out
        }
        return releaseSignerKeys(scopes, { isRevoked: (scope) => trust.isRevoked(scope), hostFacts: (host) => registry.hostFacts(host), arrivalMs, claims });
      },
    })
    : undefined;

  const nonces: NonceStore = config.redisUrl
    ? await RedisNonceStore.connect(config.redisUrl, { prefix: `ferry:nonce:${config.hostId}:`, log })
    : new MemoryNonceStore();
  // As in the receiver: with nonces in memory, what was signed before this second is refused.
  const startedAt = Math.ceil(Date.now() / 1000);
  // The trust file's keys, and each enrolled host's key as a `host` key of that host alone.
  const trust = new TrustStore({ file: config.trustFile, extraKeys: (keyId) => registry.hostScope(keyId) });
  revocations.trust = trust;
  // Started once the trust store exists: a release event checked before would be dropped for good.
  projector?.start();
  const verifier = new RequestVerifier({ trust, nonces, audience: config.hostId, startedAt });
  const enrollment = new EnrollmentProof({ nonces, audience: config.hostId, startedAt });
  const makeDashboard = options.dashboard ?? ((view, c) => dashboardRouter({
    view, ...(c.dashboardToken ? { token: c.dashboardToken } : {}), ...(c.allowCidrs ? { allow: c.allowCidrs } : {}),
    ...(c.dashboardMaxStreams === undefined ? {} : { maxStreams: c.dashboardMaxStreams }), hosts: c.dashboardHosts,
  }));
  const dashboard = makeDashboard === false ? undefined : makeDashboard(registry, config);
  const app = createApp({
    logger: log, verifier, enrollment, registry, hostId: config.hostId, version: VERSION,
    ...(projector ? { projector } : {}), ...(config.allowCidrs ? { allow: config.allowCidrs } : {}),
    ...(dashboard ? { dashboard } : {}),
    readiness: () => Promise.resolve(readiness(store, events, projector)),
  });
  const stopAll = async (): Promise<void> => {
    dashboard?.close?.();
    registry.stop();
    await projector?.close().catch((err: unknown) => log.error({ err }, 'closing the event projection failed'));
    await events.close().catch((err: unknown) => log.error({ err }, 'closing events failed'));
    await store.close().catch((err: unknown) => log.error({ err }, 'closing the store failed'));
    await nonces.close?.().catch((err: unknown) => log.error({ err }, 'closing the nonce store failed'));
  };
  let server: ListeningServer;
  try {
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, startedAt * 1000 - Date.now())));
    server = await listen(app, config.listen.host, config.listen.port, { maxConnections: config.maxConnections });
  } catch (err) {
    await stopAll();
    if (err instanceof FerryError) throw err;
    throw new FerryError('FERRY_ERR_CONFIG', { message: `Cannot listen on ${config.listen.host}:${config.listen.port}: ${(err as Error).message}`, cause: err });
  }
  log.info({
    url: server.url, id: config.hostId, store: store.status().backend, nats: config.natsUrl === undefined ? null : redactNatsUrl(config.natsUrl), ttlSeconds: config.hostTtlSeconds,
    driftMode: config.driftMode, maxHosts: config.maxHosts, trust: verifier.trust.describe(), eventKey: fingerprint(eventKey.privateKey),
  }, 'registry listening');

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      dashboard?.close?.();
      await server.close().catch((err: unknown) => log.error({ err }, 'closing HTTP failed'));
      await stopAll();
      log.info('registry stopped');
    })();
    return closing;
  };
  return { url: server.url, config, registry, close };
}

/** `ferry registry`: runs in the foreground until SIGINT or SIGTERM. */
export async function runRegistry(env: Env = process.env, options: StartRegistryOptions = {}): Promise<void> {
  await runUntilSignal(await startRegistry(env, options));
}

/** Degraded, never down: with Redis away the registry serves from memory; with NATS away history waits. */
function readiness(store: RegistryStore, events: EventSinkHealth, projector: EventProjector | undefined): Readiness {
  const s = store.status();
  const checks: Record<string, CheckResult> = {
    store: s.backend === 'memory'
      ? { status: 'disabled', backend: 'memory' }
      : { status: s.degraded ? 'down' : 'up', backend: 'redis', since: s.since, ...(s.reason === undefined ? {} : { reason: s.reason }) },
    events: events.status === 'disabled'
      ? { status: 'disabled' }
      : { status: events.status === 'connected' ? 'up' : 'down', pending: events.pending },
    projection: projector ? { ...projector.status() } : { status: 'disabled' },
  };
  return { status: Object.values(checks).some((c) => c.status === 'down') ? 'degraded' : 'ready', checks };
}

export const REGISTRY_HELP = `Usage: ferry registry

Runs the registry in the foreground until SIGINT/SIGTERM: host enrollment, hosts and heartbeats,
desired and actual state, drift (docs/registry.md). Configuration (environment):
  FERRY_TRUST_FILE        the keys it accepts and their grants (default <data dir>/trust.json)
  FERRY_LISTEN            host:port (default 127.0.0.1:7702)
  FERRY_HOST_ID           its id, the audience of signed requests (default registry)
  FERRY_NATS_URL          nats://host:port: the event stream it projects and publishes to
  FERRY_REDIS_URL         redis://host:port: its store (in memory without it)
  FERRY_DATA_DIR          its event outbox, its event key and a copy of the enrolled host keys
                          (registry-keys.json) (default /var/lib/ferry-registry)
  FERRY_HOST_TTL_SECONDS  a host without a heartbeat for this long is lost (default 30)
  FERRY_MAX_HOSTS         hosts it takes at most (default 10000)
  FERRY_DRIFT_MODE        warn (default) | correct (ask the drifted host to start its service again)
  FERRY_DRIFT_IGNORE      fields not compared: FIELD or SERVICE:FIELD, comma-separated
  FERRY_KEY_ID, FERRY_KEY_FILE  what it signs reconcile requests (correct mode) and its events with
  FERRY_ALLOW_CIDRS, FERRY_LOG_LEVEL, FERRY_DASHBOARD_*, FERRY_MAX_CONNECTIONS: docs/registry.md, "Configuration".
Endpoints: GET /healthz, /readyz; POST /v1/enroll (join token + host key); signed /v1/join-tokens,
/v1/hosts…, /v1/desired…, /v1/services…, /v1/drift, /v1/deployments, POST /v1/projection/rebuild.
`;
