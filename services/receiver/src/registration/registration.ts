import { setTimeout as sleep } from 'node:timers/promises';
import type { ActualReport, HostRegistration, Registered, RegistryClient } from '@ferry/auth';
import type { Logger } from '@ferry/log';
import { FerryError, isFerryError } from '@ferry/protocol';
import type { Check, CheckResult } from '../readiness.ts';

/** Heartbeat interval when neither FERRY_HEARTBEAT_SECONDS nor the registry's answer names one. */
export const DEFAULT_HEARTBEAT_SECONDS = 10;
/** Backoff while the registry is unreachable: from 1 s, doubling, never above 30 s. */
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30_000;
/** How long shutdown waits for a registration or heartbeat in flight. */
const CLOSE_WAIT_MS = 1000;

export interface RegistrationDeps {
  /** Signs with the host key (`host.<id>`). */
  registry: Pick<RegistryClient, 'register' | 'enroll' | 'heartbeat' | 'url'>;
  /**
   * FERRY_JOIN_TOKEN: used once, when the registry does not know the host key yet. A host that
   * is enrolled never sends it again, so a used token left in the environment does no harm.
   */
  joinToken?: string | undefined;
  /** What this receiver registers as; asked at each (re-)registration, as engine facts may change. */
  self: () => Promise<HostRegistration>;
  /**
   * What runs here now; undefined (a deployment is under way) or a failure (engine down) sends a
   * heartbeat without the list, which leaves the registry's view of this host as it was.
   */
  actual: () => Promise<ActualReport[] | undefined>;
  logger: Logger;
  /** FERRY_HEARTBEAT_SECONDS; undefined: the registry's answer, else DEFAULT_HEARTBEAT_SECONDS. */
  heartbeatSeconds?: number | undefined;
  /** Injected by unit tests; Math.random otherwise. */
  random?: () => number;
}

/**
 * Keeps this receiver registered: registers on start, then heartbeats every interval with what
 * runs here, every request signed with the host key. A registry that does not know the key yet
 * (`FERRY_ERR_UNKNOWN_KEY`) is sent an enrollment with the join token instead: the key, proven by
 * its signature. While the registry cannot be reached it retries with capped exponential backoff
 * and full jitter (so a fleet coming back does not call in step), in the background: deployments
 * never wait on it. A `FERRY_ERR_HOST_UNKNOWN` answer (the registry restarted without its store,
 * or marked this host lost) registers again at once.
 */
export class Registration {
  readonly #deps: RegistrationDeps;
  readonly #stop = new AbortController();
  #running: Promise<void> | undefined;
  #registered = false;
  #hostId: string | undefined;
  #intervalMs: number;
  #state: CheckResult = { status: 'down', reason: 'not registered yet' };

  constructor(deps: RegistrationDeps) {
    this.#deps = deps;
    this.#intervalMs = (deps.heartbeatSeconds ?? DEFAULT_HEARTBEAT_SECONDS) * 1000;
  }

  /** Starts the background loop; returns at once. */
  start(): void {
    this.#running ??= this.#loop();
  }

  /** The `/readyz` check: `down` (the receiver is degraded, still deploying) while the registry is unreachable. */
  readonly check: Check = () => Promise.resolve({ ...this.#state, registry: this.#deps.registry.url });

  /** Stops the loop; a request still in flight is left to its own timeout rather than delay shutdown. */
  async close(): Promise<void> {
    this.#stop.abort();
    await Promise.race([this.#running, sleep(CLOSE_WAIT_MS, undefined, { ref: false })]);
  }

  async #loop(): Promise<void> {
    const { logger } = this.#deps;
    let failures = 0;
    while (!this.#stop.signal.aborted) {
      try {
        if (!this.#registered) await this.#register();
        await this.#heartbeat();
        failures = 0;
        await this.#pause(this.#intervalMs);
      } catch (err) {
        if (this.#stop.signal.aborted) break;
        if (isFerryError(err) && err.code === 'FERRY_ERR_HOST_UNKNOWN' && this.#registered && failures === 0) {
          // Once at once; should the fresh registration be forgotten again, the backoff paces it.
          logger.info({ registry: this.#deps.registry.url }, 'the registry does not know this host (any more); registering again');
          this.#registered = false;
          failures = 1;
          continue;
        }
        // A registry that forgot the key (or the host) is registered with, or enrolled with, again.
        if (isFerryError(err) && (err.code === 'FERRY_ERR_HOST_UNKNOWN' || err.code === 'FERRY_ERR_UNKNOWN_KEY')) this.#registered = false;
        failures += 1;
        const delayMs = backoffMs(failures, this.#deps.random ?? Math.random);
        const reason = isFerryError(err) ? err.code : (err as Error).message;
        this.#state = { status: 'down', reason, since: this.#state.status === 'down' && typeof this.#state.since === 'string' ? this.#state.since : new Date().toISOString(), attempts: failures };
        // The first failure is worth a warning; the retries after it would only repeat it.
        const log = failures === 1 ? logger.warn.bind(logger) : logger.debug.bind(logger);
        log({ registry: this.#deps.registry.url, err: isFerryError(err) ? { code: err.code, message: err.message } : err, retryInMs: delayMs }, this.#registered ? 'heartbeat failed; retrying' : 'registration failed; retrying');
        await this.#pause(delayMs);
      }
    }
  }

  async #register(): Promise<void> {
    const self = await this.#deps.self();
    const answer = await this.#registerOrEnroll(self);
    this.#registered = true;
    this.#hostId = self.id;
    const seconds = this.#deps.heartbeatSeconds ?? (answer.heartbeatSeconds > 0 ? answer.heartbeatSeconds : DEFAULT_HEARTBEAT_SECONDS);
    this.#intervalMs = seconds * 1000;
    this.#deps.logger.info({ registry: this.#deps.registry.url, host: self.id, url: self.url, labels: self.labels, heartbeatSeconds: seconds }, 'registered with the registry');
  }

  async #registerOrEnroll(self: HostRegistration): Promise<Registered> {
    const { registry, joinToken, logger } = this.#deps;
    try {
      return await registry.register(self);
    } catch (err) {
      if (!isFerryError(err) || err.code !== 'FERRY_ERR_UNKNOWN_KEY') throw err;
      if (joinToken === undefined) {
        throw new FerryError('FERRY_ERR_UNKNOWN_KEY', { message: 'The registry does not know this host key: enroll it once with a join token (FERRY_JOIN_TOKEN)', cause: err });
      }
    }
    const answer = await registry.enroll(joinToken, self);
    logger.info({ registry: registry.url, host: self.id, hostKey: answer.host.hostKey ?? null }, 'host key enrolled with the registry');
    return answer;
  }

  async #heartbeat(): Promise<void> {
    const self = this.#deps.registry;
    let services: ActualReport[] | undefined;
    try {
      services = await this.#deps.actual();
    } catch (err) {
      // The host is still alive: say so, without a list the registry would read as "nothing runs".
      this.#deps.logger.warn({ err }, 'cannot read the containers for the heartbeat; sending it without them');
    }
    await self.heartbeat(this.#hostId ?? '', services);
    this.#state = { status: 'up', lastHeartbeatAt: new Date().toISOString(), services: services?.length ?? null };
  }

  async #pause(ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: this.#stop.signal }).catch(() => undefined);
  }
}

/** Full jitter: a random wait up to the capped exponential step (never below a tenth of a second). */
export function backoffMs(failures: number, random: () => number): number {
  const step = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures - 1, 16));
  return Math.max(100, Math.round(random() * step));
}
