import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { Redis } from 'ioredis';
import type { Logger } from '@ferry/log';
import { FerryError } from '@ferry/protocol';
import { record } from './projection.ts';

/** The collections the registry keeps; `p:*` belong to the event projection (rebuildable). */
export const STORE_KINDS = [
  'hosts', 'desired', 'actual', 'drift', 'enrollments', 'joinTokens',
  'p:deployments', 'p:history', 'p:actual', 'p:lastDeployment', 'p:releases', 'p:seen', 'p:meta',
] as const;
export type StoreKind = (typeof STORE_KINDS)[number];
export const PROJECTION_KINDS: readonly StoreKind[] = STORE_KINDS.filter((k) => k.startsWith('p:'));
/**
 * What must outlive the process even without Redis: enrolled host keys (losing them would make
 * every host enroll again) and open join tokens. The memory store keeps them in a file.
 */
export const DURABLE_KINDS: readonly StoreKind[] = ['enrollments', 'joinTokens'];

export type StoreData = Record<StoreKind, Record<string, unknown>>;

export interface StoreStatus {
  backend: 'memory' | 'redis';
  /** True while a configured Redis does not answer: the registry then serves from memory. */
  degraded: boolean;
  since: string;
  /** e.g. `ECONNREFUSED`; never a URL. */
  reason?: string;
}

/**
 * Where the registry's state outlives the process. The registry works on its memory copy and
 * writes every change through; a store that cannot take a write remembers that it missed one and
 * calls `onRecovered` when it can again, and the registry then writes its whole state back.
 */
export interface RegistryStore {
  /** Everything stored; undefined when the store cannot answer now (Redis down at start). */
  load(): Promise<StoreData | undefined>;
  /** The local copy of the durable kinds (see KeyFile): there also when load() cannot answer. */
  durable(): DurableData;
  /** Fire-and-forget: never throws, never waits. */
  set(kind: StoreKind, key: string, value: unknown): void;
  delete(kind: StoreKind, key: string): void;
  /** Wipes `kinds` and writes `data` for them in one transaction (a resync, a projection rebuild). */
  replace(kinds: readonly StoreKind[], data: Partial<StoreData>): Promise<void>;
  status(): StoreStatus;
  /** Called each time the store answers again after a missed write or load. */
  onRecovered(listener: () => void): void;
  close(): Promise<void>;
}

/**
 * Collections are records without a prototype (projection.ts `record`): their keys are host ids,
 * service names and event ids from requests and events, and each finds only its own entry.
 */
export function emptyStoreData(): StoreData {
  return Object.fromEntries(STORE_KINDS.map((k) => [k, record()])) as StoreData;
}

/** `data` with collections as {@link emptyStoreData} makes them (a structured clone has prototypes). */
function withoutPrototypes(data: StoreData): StoreData {
  const copy = emptyStoreData();
  for (const kind of STORE_KINDS) Object.assign(copy[kind], data[kind]);
  return copy;
}

/** The durable kinds only, as the key file holds them. */
export type DurableData = Pick<StoreData, 'enrollments' | 'joinTokens'>;

/**
 * A local copy of the {@link DURABLE_KINDS} in the registry's data directory, kept by either store:
 * without Redis it is their only copy across restarts; with Redis it is there when Redis is not (down
 * at start, or restarted empty), so that no host has to enroll again because a cache lost its data.
 * Written whole on every change (they are small and change rarely: an enrollment, a token),
 * synchronously, through a temporary file and a rename: an enrollment is answered after its key is
 * on disk, and a crash leaves the old file or the new one.
 */
export class KeyFile {
  readonly #file: string;
  readonly #log: Logger | undefined;
  readonly #data: DurableData = { enrollments: {}, joinTokens: {} };

  /** @throws FerryError FERRY_ERR_CONFIG when `file` exists and cannot be read as one. */
  constructor(file: string, log?: Logger) {
    this.#file = file;
    this.#log = log;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new FerryError('FERRY_ERR_CONFIG', { message: `Cannot read ${file}`, cause: err });
    }
    try {
      const stored = JSON.parse(text) as Partial<DurableData>;
      Object.assign(this.#data.enrollments, stored.enrollments ?? {});
      Object.assign(this.#data.joinTokens, stored.joinTokens ?? {});
    } catch (err) {
      throw new FerryError('FERRY_ERR_CONFIG', { message: `${file} is not the registry's key file`, cause: err });
    }
  }

  get data(): DurableData {
    return structuredClone(this.#data);
  }

  set(kind: StoreKind, key: string, value: unknown): void {
    if (!isDurable(kind)) return;
    this.#data[kind][key] = structuredClone(value);
    this.#write();
  }

  delete(kind: StoreKind, key: string): void {
    if (!isDurable(kind)) return;
    delete this.#data[kind][key];
    this.#write();
  }

  replace(kinds: readonly StoreKind[], data: Partial<StoreData>): void {
    const durable = kinds.filter(isDurable);
    if (durable.length === 0) return;
    for (const kind of durable) this.#data[kind] = structuredClone(data[kind] ?? {});
    this.#write();
  }

  #write(): void {
    const temporary = `${this.#file}.tmp`;
    try {
      const fd = openSync(temporary, 'w', 0o600);
      try {
        writeSync(fd, JSON.stringify(this.#data));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temporary, this.#file);
    } catch (err) {
      // A store write never throws (RegistryStore): the change lives in memory, and this says it may not outlive a restart.
      this.#log?.error({ err, file: this.#file }, 'the registry could not write its key file; enrollments since the last good write may be lost at restart');
    }
  }
}

function isDurable(kind: StoreKind): kind is 'enrollments' | 'joinTokens' {
  return DURABLE_KINDS.includes(kind);
}

/**
 * The store when no Redis is configured: state lives as long as the process, except the
 * {@link DURABLE_KINDS}, which a {@link KeyFile} keeps (when `file` is given).
 */
export class MemoryStore implements RegistryStore {
  readonly #data = emptyStoreData();
  readonly #since = new Date().toISOString();
  readonly #keys: KeyFile | undefined;

  /** @throws FerryError FERRY_ERR_CONFIG when `file` exists and cannot be read as a key file. */
  constructor(options: { file?: string; log?: Logger } = {}) {
    this.#keys = options.file === undefined ? undefined : new KeyFile(options.file, options.log);
    if (this.#keys) Object.assign(this.#data, this.#keys.data);
  }

  load(): Promise<StoreData> {
    return Promise.resolve(withoutPrototypes(structuredClone(this.#data)));
  }

  durable(): DurableData {
    return this.#keys?.data ?? { enrollments: {}, joinTokens: {} };
  }

  set(kind: StoreKind, key: string, value: unknown): void {
    this.#data[kind][key] = structuredClone(value);
    this.#keys?.set(kind, key, value);
  }

  delete(kind: StoreKind, key: string): void {
    delete this.#data[kind][key];
    this.#keys?.delete(kind, key);
  }

  replace(kinds: readonly StoreKind[], data: Partial<StoreData>): Promise<void> {
    for (const kind of kinds) this.#data[kind] = Object.assign(record(), structuredClone(data[kind] ?? {}));
    this.#keys?.replace(kinds, data);
    return Promise.resolve();
  }

  status(): StoreStatus {
    return { backend: 'memory', degraded: false, since: this.#since };
  }

  onRecovered(): void {
    // Memory never misses a write.
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * One Redis hash per collection (`<prefix><kind>`, field = key, value = JSON). Commands fail at
 * once while Redis is away instead of queueing, so a request never waits for it.
 */
export class RedisStore implements RegistryStore {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #log: Logger;
  readonly #listeners: (() => void)[] = [];
  #degraded = true;
  #since = new Date().toISOString();
  #reason: string | undefined = 'connecting';
  /** A write or load failed: what Redis holds is behind the registry's memory. */
  #missed = false;
  #closed = false;
  readonly #keys: KeyFile | undefined;

  /** `file`: where the durable kinds are also kept (KeyFile). */
  constructor(url: string, options: { prefix: string; log: Logger; file?: string }) {
    this.#prefix = options.prefix;
    this.#log = options.log;
    this.#keys = options.file === undefined ? undefined : new KeyFile(options.file, options.log);
    this.#redis = new Redis(url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: 2000,
      connectTimeout: 2000,
      // Never give up: Redis may be back after minutes, and the registry resyncs then.
      retryStrategy: (times) => Math.min(times * 200, 2000),
    });
    this.#redis.on('error', (err: NodeJS.ErrnoException) => this.#down(err.code ?? err.message));
    this.#redis.on('close', () => this.#down('connection closed'));
    this.#redis.on('ready', () => this.#up());
  }

  /** Resolves once Redis answered, or after `ms` (then the store is degraded). */
  async ready(ms: number): Promise<void> {
    if (!this.#degraded) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#redis.once('ready', done);
    });
  }

  async load(): Promise<StoreData | undefined> {
    try {
      const data = emptyStoreData();
      for (const kind of STORE_KINDS) {
        const hash = await this.#redis.hgetall(this.#key(kind));
        for (const [field, json] of Object.entries(hash)) data[kind][field] = JSON.parse(json);
      }
      return data;
    } catch (err) {
      this.#miss(err);
      return undefined;
    }
  }

  durable(): DurableData {
    return this.#keys?.data ?? { enrollments: {}, joinTokens: {} };
  }

  set(kind: StoreKind, key: string, value: unknown): void {
    this.#keys?.set(kind, key, value);
    if (this.#degraded) {
      this.#missed = true;
      return;
    }
    this.#redis.hset(this.#key(kind), key, JSON.stringify(value)).catch((err: unknown) => this.#miss(err));
  }

  delete(kind: StoreKind, key: string): void {
    this.#keys?.delete(kind, key);
    if (this.#degraded) {
      this.#missed = true;
      return;
    }
    this.#redis.hdel(this.#key(kind), key).catch((err: unknown) => this.#miss(err));
  }

  async replace(kinds: readonly StoreKind[], data: Partial<StoreData>): Promise<void> {
    this.#keys?.replace(kinds, data);
    if (this.#degraded) {
      this.#missed = true;
      return;
    }
    const multi = this.#redis.multi();
    for (const kind of kinds) {
      multi.del(this.#key(kind));
      const entries = Object.entries(data[kind] ?? {});
      // HSET takes many fields at once; chunks keep one command's size sane.
      for (let i = 0; i < entries.length; i += 500) {
        multi.hset(this.#key(kind), Object.fromEntries(entries.slice(i, i + 500).map(([k, v]) => [k, JSON.stringify(v)])));
      }
    }
    await multi.exec().catch((err: unknown) => this.#miss(err));
  }

  status(): StoreStatus {
    return { backend: 'redis', degraded: this.#degraded, since: this.#since, ...(this.#reason === undefined ? {} : { reason: this.#reason }) };
  }

  onRecovered(listener: () => void): void {
    this.#listeners.push(listener);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#redis.quit().catch(() => this.#redis.disconnect());
  }

  #key(kind: StoreKind): string {
    return `${this.#prefix}${kind}`;
  }

  #miss(err: unknown): void {
    this.#missed = true;
    this.#log.warn({ err }, 'a registry store write failed; the registry serves from memory and resyncs when Redis answers');
  }

  #down(reason: string): void {
    if (this.#closed) return;
    this.#missed = true;
    if (this.#degraded && this.#reason === reason) return;
    if (!this.#degraded) this.#log.warn({ reason }, 'Redis is not answering; the registry serves from memory');
    this.#degraded = true;
    this.#since = new Date().toISOString();
    this.#reason = reason;
  }

  #up(): void {
    const wasMissing = this.#missed;
    this.#degraded = false;
    this.#since = new Date().toISOString();
    this.#reason = undefined;
    this.#missed = false;
    this.#log.info('Redis answers; the registry uses it');
    if (wasMissing) for (const listener of this.#listeners) listener();
  }
}
