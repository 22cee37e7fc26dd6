import { isFerryError } from '@ferry/protocol';

/** Time as retry logic sees it; tests pass a fake one so no test waits or depends on chance. */
export interface Clock {
  sleep(ms: number): Promise<void>;
  /** A number in [0, 1), as Math.random. */
  random(): number;
}

export const systemClock: Clock = {
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  random: () => Math.random(),
};

export interface BackoffPolicy {
  baseMs: number;
  capMs: number;
  /** Attempts in all, the first one included. */
  attempts: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 500, capMs: 30_000, attempts: 8 };

/**
 * The pause before retry number `retry` (1 for the first retry): "full jitter", a uniform pick in
 * [0, min(cap, base·2^(retry-1))). Senders fanning out to many receivers that all fail at once
 * (a network blip) then spread their retries instead of arriving together.
 */
export function backoffDelay(retry: number, policy: BackoffPolicy, random: () => number): number {
  const ceiling = Math.min(policy.capMs, policy.baseMs * 2 ** (retry - 1));
  return Math.floor(random() * ceiling);
}

/**
 * Whether another attempt can help: a lost connection or a 5xx (receiver restarting, disk, an
 * internal fault), and FERRY_ERR_REPLAY, which a restarted receiver may give a request signed
 * before it started — every attempt is signed anew. Other 4xx answers, and a deployment's own
 * recorded failure, are the receiver's verdict.
 */
export function isRetryable(err: unknown): boolean {
  // Another host key answers at that address: asking it again proves the same key.
  if (!isFerryError(err) || err.code === 'FERRY_ERR_RECEIVER_CIRCUIT_OPEN' || err.code === 'FERRY_ERR_HOST_KEY_MISMATCH') return false;
  // The receiver's stored outcome of this deployment id: asking again only repeats it.
  if (err.details?.deployment !== undefined) return false;
  return err.code === 'FERRY_ERR_REPLAY' || err.status >= 500;
}

/**
 * Whether a call was cut short rather than answered: the connection was lost (a receiver stopping
 * or restarting, a link going down), or a restarted receiver refused it as signed before it
 * started (FERRY_ERR_REPLAY). A call the receiver makes idempotent — by upload id, stream id or
 * deployment id — is then worth sending again as it is, signed anew.
 */
export function isCallCut(err: unknown): boolean {
  return isFerryError(err, 'FERRY_ERR_RECEIVER_UNREACHABLE') || isFerryError(err, 'FERRY_ERR_REPLAY');
}

export interface RetryOptions {
  policy: BackoffPolicy;
  clock: Clock;
  /** Whether another attempt can help (default {@link isRetryable}); asked after every failure. */
  shouldRetry?: (err: unknown) => boolean;
  /** Told before each pause, e.g. to log which host is being retried. */
  onRetry?: (retry: number, delayMs: number, err: unknown) => void;
}

/** Runs `attempt` until it succeeds, fails for good, or `policy.attempts` are used up. */
export async function retry<T>(attempt: (n: number) => Promise<T>, options: RetryOptions): Promise<T> {
  const shouldRetry = options.shouldRetry ?? isRetryable;
  for (let n = 1; ; n += 1) {
    try {
      return await attempt(n);
    } catch (err) {
      // Asked after every failure, the last one too: it may throw the error that failure means.
      if (!shouldRetry(err) || n >= options.policy.attempts) throw err;
      await pause(n, options, err);
    }
  }
}

/**
 * Waits out the pause before retry number `retry` (1 for the first), told to `onRetry` first.
 * Every retry of the sender pauses here — {@link retry}'s, and the per-target state machine's
 * retry step — so there is one schedule ({@link backoffDelay}) and one clock to fake in tests.
 */
export async function pause(retry: number, options: Pick<RetryOptions, 'policy' | 'clock' | 'onRetry'>, err: unknown): Promise<void> {
  const delayMs = backoffDelay(retry, options.policy, () => options.clock.random());
  options.onRetry?.(retry, delayMs, err);
  await options.clock.sleep(delayMs);
}
