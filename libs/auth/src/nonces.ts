import { randomBytes } from 'node:crypto';
import { TIMESTAMP_WINDOW_SECONDS } from '@ferry/protocol';
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
  /** See {@link NonceStore.notBefore} (ISO 8601); present only while it is defined. */
  notBefore?: string;
}

/**
 * Remembers nonces for as long as their requests could still be accepted, so a captured request
 * cannot be sent again.
 */
export interface NonceStore {
  /**
   * Records the nonce; false when it was already recorded and has not expired, or when the store
   * has just found that it lost what it had recorded (the request may be a replay of one whose
   * nonce was lost, so it is refused like one).
   */
  remember(nonce: string, ttlSeconds: number): Promise<boolean>;
  /**
   * True while the store knows nonces accepted before this process started (a shared Redis
   * answers), except those signed before {@link NonceStore.notBefore}. When false or absent, the
   * verifier refuses every request signed before the process started: those are the ones whose
   * nonces may have been forgotten.
   */
  readonly persistent?: boolean;
  /**
   * Unix seconds. Defined while the store cannot vouch for requests signed before this second: it
   * found that it had lost nonces (its Redis came back empty, or older than what it had written),
   * or its Redis has held this store's nonces only since then (the first process to use it, or
   * the first after a loss, began recording then). The verifier refuses a request signed before
   * it. Undefined again once every such request is outside the timestamp window, which then
   * refuses them anyway. Absent on a store whose nonces live and die with the process.
   */
  notBefore?(): number | undefined;
  status?(): NonceStoreStatus;
  close?(): Promise<void>;
}

/** The earliest timestamp a verifier accepts, and why; see {@link replayFloor}. */
export interface ReplayFloor {
  /** Unix seconds: a request signed before this second is refused as a possible replay. */
  notBefore: number;
  /**
   * `before-boot`: the store keeps nonces in memory only, so the previous process's are gone.
   * `store-lost`: the store found its Redis had lost nonces.
   */
  reason: 'before-boot' | 'store-lost';
}

/**
 * The earliest timestamp (unix seconds) a request may carry for `store` to recognise it if it was
 * accepted before, or undefined when the store knows every nonce that could still be replayed.
 * `startedAt` is the verifier's first second; the later of the two floors wins.
 */
export function replayFloor(store: NonceStore, startedAt: number): ReplayFloor | undefined {
  const lost = store.notBefore?.();
  const boot = store.persistent === true ? undefined : startedAt;
  if (lost !== undefined && (boot === undefined || lost > boot)) return { notBefore: lost, reason: 'store-lost' };
  return boot === undefined ? undefined : { notBefore: boot, reason: 'before-boot' };
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
  /**
   * Keys are `<prefix><nonce>`; a receiver uses `ferry:nonce:<host id>:`. The store's marker is
   * `<prefix>#epoch`, a name no `<key id>:<nonce>` can take.
   */
  prefix: string;
  log?: StoreLogger;
  /** Called on every change between healthy and degraded; a metrics gauge may follow it. */
  onStatus?: (status: NonceStoreStatus) => void;
  /** Milliseconds since the epoch; for tests. */
  now?: () => number;
  /** The verifier's timestamp window: how long a loss keeps mattering. Defaults to the protocol's. */
  windowSeconds?: number;
}

/** The marker's fields, as a script found them. */
interface Marker {
  epoch: string;
  /** When the epoch began (ms), by the clock of the store that began it. */
  since: number;
  /** Nonces written in this epoch. */
  writes: number;
  /** True when this very call began the epoch: Redis had no marker, or an older count. */
  created: boolean;
}

/*
 * One round trip that checks the marker and, given a nonce key (KEYS[2]), records the nonce.
 * ARGV: the epoch this store vouches for ('' before its first answer), the highest write count it
 * has seen, an epoch and a time (ms) to begin a new one with, the nonce's time to live (s).
 * Answers the marker ({epoch, since, writes}) when the epoch is not the one given: a new one was
 * begun here because the marker was missing or its count had gone back (Redis came back empty or
 * older), or another store began one. Otherwise -1 for a known nonce, the new write count for a
 * recorded one, the current count when no nonce was given. The count goes up in the same script
 * as the nonce, so a snapshot that lacks a nonce also lacks its count.
 */
const EXCHANGE = `
local marker, nonce = KEYS[1], KEYS[2]
local epoch, writes = false, 0
if redis.call('TYPE', marker)['ok'] == 'hash' then
  epoch = redis.call('HGET', marker, 'epoch')
  writes = tonumber(redis.call('HGET', marker, 'writes')) or 0
end
if not epoch or (epoch == ARGV[1] and writes < tonumber(ARGV[2])) then
  redis.call('DEL', marker)
  redis.call('HSET', marker, 'epoch', ARGV[3], 'since', ARGV[4], 'writes', 0)
  return {ARGV[3], ARGV[4], 0}
end
if epoch ~= ARGV[1] then
  return {epoch, redis.call('HGET', marker, 'since') or '', writes}
end
if not nonce then return writes end
if not redis.call('SET', nonce, '1', 'EX', ARGV[5], 'NX') then return -1 end
return redis.call('HINCRBY', marker, 'writes', 1)
`;

/**
 * Nonces in Redis (`SET key 1 NX EX ttl`), so that a receiver that restarts still knows them.
 *
 * Every nonce is also kept in memory. When Redis cannot answer, the memory copy decides alone and
 * `persistent` turns false, so the verifier's boot rule covers what memory cannot know; the
 * receiver keeps working rather than refusing every deployment because Redis is down. Nonces
 * accepted meanwhile are written to Redis once it answers again, so that a later restart does not
 * forget them either.
 *
 * A Redis that answers may still have lost what it held: restarted without persistence, flushed,
 * or restored from an older snapshot. A marker key (`<prefix>#epoch`: a random epoch id, when it
 * began, how many nonces were written in it) tells: the store checks it on every connection and
 * in the same script as every nonce it records. When it is missing, belongs to another epoch, or
 * counts fewer writes than this store has seen, the nonces of other processes (an earlier run of
 * this receiver, above all) may be gone; the store then starts a new epoch and, through
 * {@link RedisNonceStore.notBefore}, refuses requests signed before it found out, until those are
 * outside the timestamp window. A Redis that loses data while this process is stopped, and comes
 * back with an older marker, is not noticed: run it without persistence, or with an append-only
 * file synced on every write.
 */
export class RedisNonceStore implements NonceStore {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #marker: string;
  readonly #log: StoreLogger | undefined;
  readonly #onStatus: ((status: NonceStoreStatus) => void) | undefined;
  readonly #now: () => number;
  readonly #window: number;
  readonly #memory = new MemoryNonceStore();
  /** Nonces accepted while Redis was not answering, to be written there on recovery. */
  readonly #pending = new Set<string>();
  #state: 'connecting' | 'up' | 'down' = 'connecting';
  #since = new Date().toISOString();
  #reason: string | undefined = 'connecting';
  /** The epoch this store vouches for; undefined until Redis first answered. */
  #epoch: string | undefined;
  /** The highest write count seen in that epoch: a lower one means Redis went back in time. */
  #writes = 0;
  /** When this store found data lost (ms), or when the epoch it joined began. */
  #lostAt: number | undefined;
  /** When this store was made (ms), at the process's start: the start of an epoch it begins on its first answer. */
  readonly #createdAt: number;
  #checking: Promise<void> | undefined;
  #flushing = false;
  #closing: Promise<void> | undefined;

  constructor(redis: Redis, options: RedisNonceStoreOptions) {
    this.#redis = redis;
    this.#prefix = options.prefix;
    this.#marker = `${options.prefix}#epoch`;
    this.#log = options.log;
    this.#onStatus = options.onStatus;
    this.#now = options.now ?? Date.now;
    this.#window = options.windowSeconds ?? TIMESTAMP_WINDOW_SECONDS;
    this.#createdAt = this.#now();
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

  /** True while Redis answers and its marker was checked; see {@link RedisNonceStore.notBefore} for the exception. */
  get persistent(): boolean {
    return this.#state === 'up' && this.#epoch !== undefined;
  }

  /** False while Redis does not answer (also before its first answer); /readyz reads this. */
  get healthy(): boolean {
    return this.#state === 'up';
  }

  /**
   * The first whole second after this store found data lost, or after the epoch it joined on its
   * first answer began, while a request signed before it could still be inside the window.
   */
  notBefore(): number | undefined {
    if (this.#lostAt === undefined) return undefined;
    // Rounded up: a request signed in the second of the loss may have been accepted before it.
    const floor = Math.ceil(this.#lostAt / 1000);
    return this.#now() < (floor + this.#window) * 1000 ? floor : undefined;
  }

  status(): NonceStoreStatus {
    const up = this.#state === 'up';
    const notBefore = this.notBefore();
    return {
      backend: 'redis', healthy: up, degraded: !up, persistent: this.persistent, since: this.#since,
      ...(this.#reason === undefined ? {} : { reason: this.#reason }),
      ...(notBefore === undefined ? {} : { notBefore: new Date(notBefore * 1000).toISOString() }),
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
      // Until the marker is known, the verifier applied the boot rule; only then may Redis vouch.
      if (this.#epoch === undefined) await this.#check();
      const answer = await this.#exchange(this.#prefix + nonce, ttlSeconds);
      this.#up();
      if (typeof answer !== 'number') {
        // Lost since the last answer: this request may replay one whose nonce is gone.
        this.#adopt(answer);
        return false;
      }
      if (answer < 0) return false;
      this.#writes = Math.max(this.#writes, answer);
      return true;
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

  // 'ready' means connected, not that a command works (e.g. a replica in read-only mode), nor that
  // Redis still holds what it held before the connection dropped.
  async #probe(): Promise<void> {
    try {
      await this.#check();
      this.#up();
    } catch (err) {
      this.#down((err as Error).message);
    }
  }

  // One check at a time: a reconnection's probe and the first remember() may both ask.
  #check(): Promise<void> {
    this.#checking ??= this.#exchange().then((answer) => {
      if (typeof answer === 'number') this.#writes = Math.max(this.#writes, answer);
      else this.#adopt(answer);
    }).finally(() => { this.#checking = undefined; });
    return this.#checking;
  }

  async #exchange(nonceKey?: string, ttlSeconds?: number): Promise<number | Marker> {
    const fresh = randomBytes(16).toString('base64url');
    const keys = nonceKey === undefined ? [this.#marker] : [this.#marker, nonceKey];
    // An epoch begun on the first answer starts with the process: what it accepted before Redis
    // answered reaches Redis too (the pending nonces), what earlier processes accepted may not.
    const start = this.#epoch === undefined ? this.#createdAt : this.#now();
    const args = [this.#epoch ?? '', this.#writes, fresh, start, ...(ttlSeconds === undefined ? [] : [ttlSeconds])];
    // EVAL, not EVALSHA: Redis caches the script after its first run anyway, and a Redis that came
    // back empty has forgotten the script too, which would cost a NOSCRIPT round trip each time.
    const answer = await this.#redis.eval(EXCHANGE, keys.length, ...keys, ...args);
    if (typeof answer === 'number') return answer;
    if (Array.isArray(answer) && answer.length === 3) {
      const since = Number(answer[1]);
      const epoch = String(answer[0]);
      return { epoch, since: Number.isFinite(since) ? since : this.#now(), writes: Number(answer[2]), created: epoch === fresh };
    }
    throw new Error('unexpected answer from the nonce script');
  }

  #adopt(marker: Marker): void {
    // Two calls in flight may both bring the new epoch; the first one took it.
    if (marker.epoch === this.#epoch) return;
    const first = this.#epoch === undefined;
    this.#epoch = marker.epoch;
    this.#writes = marker.writes;
    // On the first answer the epoch's start is the best bound there is. Later, the loss happened at
    // some point before now, and an older marker restored from a snapshot carries an older start,
    // so now is the only safe bound.
    this.#lostAt = first ? marker.since : this.#now();
    const notBefore = this.notBefore();
    if (notBefore === undefined) return;
    const fields = {
      nonceStore: 'redis',
      notBefore: new Date(notBefore * 1000).toISOString(),
      until: new Date((notBefore + this.#window) * 1000).toISOString(),
    };
    if (!first) {
      this.#log?.warn(fields, 'nonce store: Redis lost nonces (it came back empty, flushed or older); requests signed before notBefore are refused until the window has passed');
    } else if (marker.created) {
      this.#log?.warn(fields, 'nonce store: Redis holds no record of this store (a new Redis, or one that lost its data); requests signed before this process started are refused until the window has passed');
    } else {
      this.#log?.info(fields, 'nonce store: Redis has held this store\'s nonces only since notBefore; requests signed before it are refused until the window has passed');
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
