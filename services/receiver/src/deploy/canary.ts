import { setTimeout as delay } from 'node:timers/promises';
import { FerryError, type Canary } from '@ferry/protocol';
import type { CanaryFields } from '@ferry/events';
import type { Proxy, UpstreamCounters } from '@ferry/proxy';

/**
 * A canary between "the new container is healthy" and "all traffic moves to it": the proxy sends
 * it `weight` percent of the route's requests for `forMs`, and its own counters — not the
 * service's word — decide. The new upstream was added for this canary, so its counters start at 0.
 */

export interface CanaryCounts {
  /** Responses the new upstream gave, any status. */
  responses: number;
  /** 5xx responses plus connection and response errors the proxy saw towards it. */
  failures: number;
  /** Responses plus requests that got none (connection and response errors): what the rate is of. */
  seen: number;
  /** failures ÷ (responses + connection errors), in percent; 0 before any request. */
  errorRate: number;
}

export function canaryCounts(counters: UpstreamCounters | undefined): CanaryCounts {
  if (!counters) return { responses: 0, failures: 0, seen: 0, errorRate: 0 };
  const r = counters.responses;
  const responses = r['1xx'] + r['2xx'] + r['3xx'] + r['4xx'] + r['5xx'] + r.other;
  const failures = r['5xx'] + counters.errors;
  const seen = responses + counters.errors;
  return { responses, failures, seen, errorRate: seen === 0 ? 0 : (failures / seen) * 100 };
}

export type CanaryDecision =
  | { decision: 'wait' }
  | { decision: 'promote'; counts: CanaryCounts }
  | { decision: 'roll-back'; counts: CanaryCounts; reason: string };

/**
 * Once at least `minRequests` requests were seen, an error rate above the bound rolls back at
 * once (no need to keep hurting a share of the users for the rest of the window); at the end of
 * the window a rate within it promotes. Too few requests by the end waits on, up to twice the
 * window, then rolls back: a canary nobody used proved nothing.
 */
export function judgeCanary(canary: Canary, counts: CanaryCounts, elapsedMs: number): CanaryDecision {
  const enough = counts.seen >= canary.minRequests;
  if (enough && counts.errorRate > canary.maxErrorRate) {
    return { decision: 'roll-back', counts, reason: `its error rate was ${round(counts.errorRate)} % (${counts.failures} failed of ${counts.seen} requests), above ${canary.maxErrorRate} %` };
  }
  if (elapsedMs < canary.forMs) return { decision: 'wait' };
  if (enough) return { decision: 'promote', counts };
  if (elapsedMs < 2 * canary.forMs) return { decision: 'wait' };
  return { decision: 'roll-back', counts, reason: `it saw ${counts.seen} requests in ${Math.round(elapsedMs / 1000)} s, fewer than the ${canary.minRequests} needed to judge it` };
}

const round = (n: number): number => Math.round(n * 100) / 100;

/** HAProxy weights are relative: the canary's share of 100, the old upstream the rest. */
export function canaryWeights(canary: Canary): { next: number; current: number } {
  const next = Math.max(1, Math.round(canary.weight));
  return { next, current: 100 - next };
}

export type CanaryCommand = 'promote' | 'abort';

/** How long a rolled-back canary's requests in flight may take to finish before it is removed. */
export const CANARY_DRAIN_MS = 10_000;

/**
 * Canaries in progress on this host, one per service at most (deployments of a service are
 * serialised), so that `promote` and `abort` by hand reach the one running.
 */
export class CanaryControl {
  readonly #waiting = new Map<string, (command: CanaryCommand) => void>();

  /** Called by the canary while it runs; the returned function ends the registration. */
  listen(service: string, onCommand: (command: CanaryCommand) => void): () => void {
    this.#waiting.set(service, onCommand);
    return () => {
      if (this.#waiting.get(service) === onCommand) this.#waiting.delete(service);
    };
  }

  /** @throws FerryError FERRY_ERR_NO_CANARY when no canary of the service runs here. */
  command(service: string, command: CanaryCommand): void {
    const onCommand = this.#waiting.get(service);
    if (!onCommand) throw new FerryError('FERRY_ERR_NO_CANARY', { details: { service } });
    onCommand(command);
  }

  running(service: string): boolean {
    return this.#waiting.has(service);
  }
}

export interface CanaryRunDeps {
  proxy: Proxy;
  control: CanaryControl;
  service: string;
  canary: Canary;
  /** The new upstream (already healthy, not yet in the route) and the one serving now. */
  next: { name: string; address: string };
  current: { name: string; address: string } | undefined;
  emit: (type: 'canary.started' | 'canary.promoted' | 'canary.rolled_back', data: CanaryEventData) => void;
  signal?: AbortSignal | undefined;
  /** Between two reads of the counters. */
  pollMs?: number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Milliseconds on a monotonic clock. */
  now?: () => number;
}

export type CanaryEventData = CanaryFields;

export type CanaryResult = { promoted: true; counts: CanaryCounts } | { promoted: false; error: FerryError; counts: CanaryCounts };

/**
 * Sends the canary its share, reads the counters until a decision (or a command by hand), and
 * leaves the route as the decision wants it: promoted, the new upstream has the old one's weight
 * too (the caller drains the old one); rolled back, the old one has all the traffic again and the
 * new upstream is drained (its requests in flight finish) and removed.
 */
export async function runCanary(deps: CanaryRunDeps): Promise<CanaryResult> {
  const { proxy, service, canary } = deps;
  const weights = canaryWeights(canary);
  const pollMs = deps.pollMs ?? Math.min(1000, Math.max(100, Math.floor(canary.forMs / 20)));
  const sleep = deps.sleep ?? abortableSleep;
  const now = deps.now ?? (() => performance.now());
  const base = { weight: weights.next, forMs: canary.forMs, maxErrorRate: canary.maxErrorRate };
  let command: CanaryCommand | undefined;
  let wake: (() => void) | undefined;
  const stop = deps.control.listen(service, (c) => { command = c; wake?.(); });
  try {
    if (deps.current) await proxy.setUpstream(service, { ...deps.current, weight: weights.current });
    await proxy.setUpstream(service, { ...deps.next, weight: weights.next });
    deps.emit('canary.started', base);
    const started = now();
    for (;;) {
      const counters = (await proxy.counters(service)).find((c) => c.name === deps.next.name);
      const counts = canaryCounts(counters);
      const decision: CanaryDecision = command === 'promote' ? { decision: 'promote', counts }
        : command === 'abort' ? { decision: 'roll-back', counts, reason: 'aborted by hand' }
          : judgeCanary(canary, counts, now() - started);
      if (decision.decision === 'promote') {
        await proxy.setUpstream(service, { ...deps.next, weight: 100 });
        deps.emit('canary.promoted', { ...base, counters, errorRate: round(counts.errorRate), by: command ? 'hand' : 'counters' });
        return { promoted: true, counts };
      }
      if (decision.decision === 'roll-back') {
        // The old upstream gets everything first; the canary's requests in flight finish before it goes.
        if (deps.current) await proxy.setUpstream(service, { ...deps.current, weight: 100 });
        await proxy.drain(service, deps.next.name, CANARY_DRAIN_MS);
        deps.emit('canary.rolled_back', { ...base, counters, errorRate: round(counts.errorRate), reason: decision.reason, by: command ? 'hand' : 'counters' });
        const code = command === 'abort' ? 'FERRY_ERR_CANARY_ABORTED' : 'FERRY_ERR_CANARY_FAILED';
        return { promoted: false, counts, error: new FerryError(code, { message: `The canary of ${service} was rolled back: ${decision.reason}`, details: { service, errorRate: round(counts.errorRate), responses: counts.responses, failures: counts.failures } }) };
      }
      if (deps.signal?.aborted) throw deps.signal.reason;
      await new Promise<void>((resolve) => {
        wake = resolve;
        void sleep(pollMs, deps.signal).then(resolve, resolve);
      });
      wake = undefined;
    }
  } finally {
    stop();
  }
}

/** Resolves after `ms`, or at once when `signal` aborts: the loop then sees the abort itself. */
function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return delay(ms, undefined, signal ? { signal } : {}).catch(() => undefined);
}
