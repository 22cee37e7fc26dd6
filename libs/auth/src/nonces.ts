import type { Redis } from 'ioredis';

/** What a health or metrics endpoint may read about a nonce store. */
export interface NonceStoreStatus {
  backend: 'memory' | 'redis';
  /** False while a configured Redis cannot be used (the store then answers from memory). */
  healthy: boolean;
  /** True when a configured Redis is not answering: replays across restarts are caught by the boot rule only. */
  degraded: boolean;
  /** See {@link NonceStore.persistent}. */
  persistent: boolean;
  /** When the store last changed state (ISO 8601). */
  since: string;
  /** Why the store is degraded, e.g. `ECONNREFUSED`; never a URL or a password. */
  reason?: string;
}

/**
 * Remembers nonces for as long as their requests could still be accepted, so a captured request
 * cannot be sent again.
 */
export interface NonceStore {
  /** Records the nonce; false when it was already recorded and has not expired. */
  remember(nonce: string, ttlSeconds: number): Promise<boolean>;
  /**
   * True while the store knows nonces accepted before this process started (a shared Redis
   * answers). When false or absent, the verifier refuses every request signed before the
   * process started: those are the ones whose nonces may have been forgotten.
   */
  readonly persistent?: boolean;
  status?(): NonceStoreStatus;
  close?(): Promise<void>;
}

export class MemoryNonceStore implements NonceStore {
  readonly #expiries = new Map<string, number>();
  readonly #now: () => number;
  readonly #since = new Date().toISOString();
  #nextSweep = 0;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  readonly persistent = false;
  readonly healthy = true;

  remember(nonce: string, ttlSeconds: number): Promise<boolean> {
    const now = this.#now();
    this.#sweep(now);
    const expiry = this.#expiries.get(nonce);
    if (expiry !== undefined && expiry > now) return Promise.resolve(false);
    this.#expiries.set(nonce, now + ttlSeconds * 1000);
    return Promise.resolve(true);
  }

  /** Milliseconds until the nonce may be accepted again; 0 when it is unknown or expired. */
  remaining(nonce: string): number {
    return Math.max(0, (this.#expiries.get(nonce) ?? 0) - this.#now());
  }

  get size(): number {
    return this.#expiries.size;
  }

  status(): NonceStoreStatus {
    return { backend: 'memory', healthy: true, degraded: false, persistent: false, since: this.#since };
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  // Sweeping at most once a second keeps remember() O(1) amortised under a flood of requests.
  #sweep(now: number): void {
    if (now < this.#nextSweep) return;
    this.#nextSweep = now + 1000;
    for (const [nonce, expiry] of this.#expiries) if (expiry <= now) this.#expiries.delete(nonce);
  }
}

/** The few log methods the store uses; a pino logger fits. */
export interface StoreLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface RedisNonceStoreOptions {
  /** Keys are `<prefix><nonce>`; a receiver uses `ferry:nonce:<host id>:`. */
  prefix: string;
  log?: StoreLogger;
  /** Called on every change between healthy and degraded; a metrics gauge may follow it. */
  onStatus?: (status: NonceStoreStatus) => void;
}

/**
 * Nonces in Redis (`SET key 1 NX EX ttl`), so that a receiver that restarts still knows them.
 *
 * Every nonce is also kept in memory. When Redis cannot answer, the memory copy decides alone and
 * `persistent` turns false, so the verifier's boot rule covers what memory cannot know; the
 * receiver keeps working rather than refusing every deployment because Redis is down. Nonces
 * accepted meanwhile are written to Redis once it answers again, so that a later restart does not
 * forget them either.
 */
export class RedisNonceStore implements NonceStore {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #log: StoreLogger | undefined;
  readonly #onStatus: ((status: NonceStoreStatus) => void) | undefined;
  readonly #memory = new MemoryNonceStore();
  /** Nonces accepted while Redis was not answering, to be written there on recovery. */
  readonly #pending = new Set<string>();
  #state: 'connecting' | 'up' | 'down' = 'connecting';
  #since = new Date().toISOString();
  #reason: string | undefined = 'connecting';
  #flushing = false;
  #closing: Promise<void> | undefined;

  constructor(redis: Redis, options: RedisNonceStoreOptions) {
    this.#redis = redis;
    this.#prefix = options.prefix;
    this.#log = options.log;
    this.#onStatus = options.onStatus;
    // ioredis reports every failed reconnection; the state change is logged once, not each retry.
    redis.on('error', (err: NodeJS.ErrnoException) => this.#down(err.code ?? err.message));
    redis.on('close', () => this.#down('connection closed'));
    redis.on('ready', () => { void this.#probe(); });
  }

  /**
   * Connects to `url` in the background; the store answers from memory until Redis is ready.
   * ioredis is loaded here, not with the module: every CLI command carries @ferry/auth, and
   * importing ioredis costs about 0.1 s of each start.
   */
  static async connect(url: string, options: RedisNonceStoreOptions): Promise<RedisNonceStore> {
    const { Redis } = await import('ioredis');
    const redis = new Redis(url, {
      // A command must fail at once while Redis is away, not queue behind a reconnection.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: 1000,
      connectTimeout: 2000,
      // Never give up: Redis may come back after minutes, and the store should use it then.
      retryStrategy: (times) => Math.min(times * 200, 2000),
    });
    return new RedisNonceStore(redis, options);
  }

  get persistent(): boolean {
    return this.#state === 'up';
  }

  /** False while Redis does not answer (also before its first answer); /readyz reads this. */
  get healthy(): boolean {
    return this.#state === 'up';
  }

  status(): NonceStoreStatus {
    const up = this.#state === 'up';
    return {
      backend: 'redis', healthy: up, degraded: !up, persistent: up, since: this.#since,
      ...(this.#reason === undefined ? {} : { reason: this.#reason }),
    };
  }

  async remember(nonce: string, ttlSeconds: number): Promise<boolean> {
    if (!(await this.#memory.remember(nonce, ttlSeconds))) return false;
    if (this.#redis.status !== 'ready') {
      this.#down(`redis ${this.#redis.status}`);
      this.#pending.add(nonce);
      return true;
    }
    try {
      const answer = await this.#redis.set(this.#prefix + nonce, '1', 'EX', ttlSeconds, 'NX');
      this.#up();
      return answer === 'OK';
    } catch (err) {
      this.#down((err as NodeJS.ErrnoException).code ?? (err as Error).message);
      this.#pending.add(nonce);
      return true;
    }
  }

  /** Idempotent; quits Redis. */
  close(): Promise<void> {
    this.#closing ??= this.#redis.quit().then(() => undefined, () => { this.#redis.disconnect(); });
    return this.#closing;
  }

  // 'ready' means connected, not that a command works (e.g. a replica in read-only mode).
  async #probe(): Promise<void> {
    try {
      await this.#redis.ping();
      this.#up();
    } catch (err) {
      this.#down((err as Error).message);
    }
  }

  #up(): void {
    if (this.#state === 'up') return;
    this.#state = 'up';
    this.#reason = undefined;
    this.#since = new Date().toISOString();
    this.#log?.info({ nonceStore: 'redis' }, 'nonce store: Redis answers; replays are checked across restarts');
    this.#onStatus?.(this.status());
    void this.#flushPending();
  }

  // Called on every failed reconnection too: only the change of state is logged.
  #down(reason: string): void {
    if (this.#closing || this.#state === 'down') return;
    this.#state = 'down';
    this.#reason = reason;
    this.#since = new Date().toISOString();
    this.#log?.warn({ nonceStore: 'memory', reason }, 'nonce store degraded: Redis does not answer; nonces are kept in memory and requests signed before this receiver started are refused');
    this.#onStatus?.(this.status());
  }

  async #flushPending(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      for (const nonce of [...this.#pending]) {
        const ms = this.#memory.remaining(nonce);
        if (ms > 0) await this.#redis.set(this.#prefix + nonce, '1', 'PX', ms, 'NX');
        this.#pending.delete(nonce);
      }
    } catch {
      // Redis went away again; what is left is written on the next recovery.
    } finally {
      this.#flushing = false;
    }
  }
}
