import { statfs } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NonceStoreStatus } from '@ferry/auth';
import type { EventSinkHealth } from '@ferry/events';
import type { CheckResult, Readiness } from '@ferry/http';
import { FerryError } from '@ferry/protocol';

// `/readyz`'s shapes, shared by every Ferry service; `down` makes the receiver degraded.
export type { CheckResult, CheckStatus, Readiness } from '@ferry/http';

export type Check = () => Promise<CheckResult>;

/** A check that has not answered by then is down: a hung daemon must not hang the probe. */
const CHECK_TIMEOUT_MS = 2000;

/**
 * Runs every check at once. The receiver is `ready` when none is down; `degraded` otherwise —
 * it still deploys (events wait in the outbox, nonces fall back to memory), but an operator or
 * a load balancer should know.
 */
export async function checkReadiness(checks: Record<string, Check>, timeoutMs = CHECK_TIMEOUT_MS): Promise<Readiness> {
  const names = Object.keys(checks);
  const results = await Promise.all(names.map(async (name) => bounded(checks[name], timeoutMs)));
  const byName = Object.fromEntries(names.map((name, i) => [name, results[i]])) as Record<string, CheckResult>;
  return { status: results.some((r) => r.status === 'down') ? 'degraded' : 'ready', checks: byName };
}

async function bounded(check: Check | undefined, timeoutMs: number): Promise<CheckResult> {
  if (!check) return { status: 'disabled' };
  const timer = new AbortController();
  try {
    return await Promise.race([
      check().catch((err: unknown) => ({ status: 'down' as const, reason: reasonOf(err) })),
      sleep(timeoutMs, { status: 'down' as const, reason: 'timeout' }, { signal: timer.signal }),
    ]);
  } finally {
    timer.abort();
  }
}

function reasonOf(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (typeof e?.code === 'string') return e.code;
  return typeof e?.message === 'string' ? e.message.slice(0, 200) : 'error';
}

/** The Docker engine answers `/_ping`. */
export function dockerCheck(ping: () => Promise<unknown>): Check {
  return async () => {
    await ping();
    return { status: 'up' };
  };
}

/** How long a starting receiver waits for its engine: one started with the host may come up after it. */
export const ENGINE_START_WAIT_MS = 10_000;
const ENGINE_PING_TIMEOUT_MS = 2000;
const ENGINE_RETRY_MS = 250;

export interface EngineWaitOptions {
  /** DOCKER_HOST as configured; undefined is the default socket. */
  dockerHost: string | undefined;
  waitMs?: number;
  /** Injected in tests: the time, and the pause between pings. */
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  /** Told once, at the first failed ping, so that an operator sees what the start waits for. */
  onWaiting?: (cause: string) => void;
}

/**
 * Resolves once the engine answers `/_ping`, asking again for up to `waitMs`. A receiver without
 * its engine can deploy nothing, so it must not start and say it listens: past the wait this
 * throws FERRY_ERR_DOCKER_UNAVAILABLE naming DOCKER_HOST and the last cause. Only the start
 * waits here; an engine lost later is the docker readiness check's and each deployment's to report.
 */
export async function waitForEngine(ping: (signal: AbortSignal) => Promise<unknown>, options: EngineWaitOptions): Promise<void> {
  const now = options.now ?? Date.now;
  const pause = options.sleep ?? ((ms: number) => sleep(ms));
  const waitMs = options.waitMs ?? ENGINE_START_WAIT_MS;
  const deadline = now() + waitMs;
  let told = false;
  for (;;) {
    const signal = AbortSignal.timeout(ENGINE_PING_TIMEOUT_MS);
    try {
      await ping(signal);
      return;
    } catch (err) {
      const cause = signal.aborted ? `no answer within ${ENGINE_PING_TIMEOUT_MS} ms` : reasonOf(err);
      if (!told) options.onWaiting?.(cause);
      told = true;
      if (now() + ENGINE_RETRY_MS > deadline) {
        const host = options.dockerHost ?? 'unix:///var/run/docker.sock (the default)';
        throw new FerryError('FERRY_ERR_DOCKER_UNAVAILABLE', {
          message: `The Docker engine at DOCKER_HOST=${host} cannot be reached (${cause}; tried for ${waitMs / 1000} s): start it, or set DOCKER_HOST to the engine the receiver runs containers on`,
          cause: err, details: { dockerHost: host, cause },
        });
      }
      await pause(ENGINE_RETRY_MS);
    }
  }
}

/**
 * NATS as the event publisher sees it, with the outbox depth: while it is down the events wait on
 * disk, so `outbox` says how much will be delivered when it returns.
 */
export function natsCheck(sink: Pick<EventSinkHealth, 'status'> & Partial<EventSinkHealth>): Check {
  return () => {
    const outbox = sink.pending ?? 0;
    if (sink.status === 'disabled') return Promise.resolve({ status: 'disabled', outbox });
    if (sink.status === 'connected') return Promise.resolve({ status: 'up', outbox });
    const since = sink.disconnectedSince;
    return Promise.resolve({
      status: 'down', reason: 'not connected; reconnecting', outbox, reconnectAttempts: sink.reconnectAttempts ?? 0,
      ...(since ? { since: since.toISOString() } : {}),
    });
  };
}

/** The nonce store's Redis, when one is configured; a memory store has nothing to be down. */
export function redisCheck(store: { status?: () => NonceStoreStatus } | undefined): Check {
  return () => {
    const status = store?.status?.();
    if (!status || status.backend !== 'redis') return Promise.resolve({ status: 'disabled' });
    if (status.healthy) return Promise.resolve({ status: 'up', since: status.since });
    return Promise.resolve({ status: 'down', reason: status.reason ?? 'not answering', since: status.since });
  };
}

/** Free space on the data directory's file system, which holds spools, the journal and the outbox. */
export function diskCheck(dir: string, minFreeBytes: number): Check {
  return async () => {
    const stats = await statfs(dir);
    const freeBytes = stats.bavail * stats.bsize;
    return freeBytes >= minFreeBytes
      ? { status: 'up', freeBytes, minFreeBytes }
      : { status: 'down', reason: 'low free space', freeBytes, minFreeBytes };
  };
}

export interface ReceiverReadinessDeps {
  docker: { ping(): Promise<unknown> };
  events: Pick<EventSinkHealth, 'status'> & Partial<EventSinkHealth>;
  nonces: { status?: () => NonceStoreStatus } | undefined;
  dataDir: string;
  /** The free space below which the receiver refuses uploads (507); readiness warns at the same floor. */
  minFreeBytes: number;
  /** The registration's state (registration/registration.ts), when FERRY_REGISTRY_URL is set. */
  registry?: Check;
  /** The host's HAProxy (proxy-keeper.ts), when FERRY_PROXY_HTTP is set. */
  proxy?: Check;
}

/** The receiver's four checks: docker, nats (with the outbox depth), redis, disk; registry when it registers, proxy when it runs one. */
export function receiverReadiness(deps: ReceiverReadinessDeps): () => Promise<Readiness> {
  const checks = {
    docker: dockerCheck(() => deps.docker.ping()),
    nats: natsCheck(deps.events),
    redis: redisCheck(deps.nonces),
    disk: diskCheck(deps.dataDir, deps.minFreeBytes),
    // Listed only when the receiver registers somewhere (FERRY_REGISTRY_URL).
    ...(deps.registry ? { registry: deps.registry } : {}),
    // Listed only when the receiver runs a proxy (FERRY_PROXY_HTTP).
    ...(deps.proxy ? { proxy: deps.proxy } : {}),
  };
  return () => checkReadiness(checks);
}
