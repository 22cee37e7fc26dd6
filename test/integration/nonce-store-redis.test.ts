import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { RedisNonceStore, type NonceStoreStatus, type StoreLogger } from '@ferry/auth';
import { TIMESTAMP_WINDOW_SECONDS } from '@ferry/protocol';
import { Redis } from 'ioredis';
import { until } from '../helpers/registry.ts';
import { RedisServer } from '../helpers/servers.ts';

const SUITE = { timeout: 120_000 };
const RUN = randomBytes(3).toString('hex');
const TTL = 2 * TIMESTAMP_WINDOW_SECONDS + 1;
const WINDOW_MS = TIMESTAMP_WINDOW_SECONDS * 1000;

/** A log sink: the store's warnings are part of what it reports. */
function sink(): StoreLogger & { lines: { level: string; obj: object; msg: string }[] } {
  const lines: { level: string; obj: object; msg: string }[] = [];
  return {
    lines,
    warn: (obj, msg) => { lines.push({ level: 'warn', obj, msg }); },
    info: (obj, msg) => { lines.push({ level: 'info', obj, msg }); },
  };
}

/** The first whole second from `ms` on, as the store reports the start of a loss. */
const secondAfter = (ms: number): number => Math.ceil(ms / 1000);

describe('nonce store on a Redis that loses its data (row 39)', SUITE, () => {
  let redis: RedisServer;
  // One clock for every store of the test, moved by hand: the window is five minutes.
  let clock = Date.now();
  const stores: RedisNonceStore[] = [];

  const open = async (prefix: string, log?: StoreLogger, onStatus?: (status: NonceStoreStatus) => void): Promise<RedisNonceStore> => {
    const store = await RedisNonceStore.connect(redis.url, { prefix, now: () => clock, ...(log ? { log } : {}), ...(onStatus ? { onStatus } : {}) });
    stores.push(store);
    await until(() => (store.status().healthy ? true : undefined));
    return store;
  };
  /** Runs one command on a connection of the test's own. */
  const command = async (name: string, ...args: string[]): Promise<unknown> => {
    const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      return await client.call(name, ...args);
    } finally {
      client.disconnect();
    }
  };

  before(async () => {
    // A private redis-server without persistence: restarting it is Redis coming back empty.
    redis = await RedisServer.create();
    await redis.start();
  });

  after(async () => {
    for (const store of stores) await store.close();
    await redis?.dispose();
  });

  it('a Redis with no record of the store vouches only for requests signed after the process started, until the window has passed', async () => {
    const log = sink();
    clock += 1234;
    const startedAt = clock;
    const store = await open(`ferry:nonce:first-${RUN}:`, log);
    const floor = secondAfter(startedAt);
    assert.equal(store.notBefore(), floor);
    assert.equal(store.persistent, true, 'Redis answers: what this process accepts is kept across its restart');
    assert.equal(store.status().notBefore, new Date(floor * 1000).toISOString());
    assert.ok(log.lines.some((l) => l.level === 'warn' && /holds no record/.test(l.msg)), JSON.stringify(log.lines));

    // A later process joins the epoch and keeps its start as the floor.
    const next = await open(`ferry:nonce:first-${RUN}:`);
    assert.equal(next.notBefore(), floor);

    clock = (floor + TIMESTAMP_WINDOW_SECONDS) * 1000 - 1;
    assert.equal(store.notBefore(), floor, 'a request signed the second before the floor is still inside the window');
    clock += 1;
    for (const s of [store, next]) {
      assert.equal(s.notBefore(), undefined);
      assert.equal(s.status().notBefore, undefined);
    }
  });

  it('a Redis restarted empty: every store that used it refuses requests signed before the loss was found, then trusts it again once the window has passed', async () => {
    const prefix = `ferry:nonce:restart-${RUN}:`;
    const store = await open(prefix);
    clock += WINDOW_MS + 1000;
    assert.equal(store.persistent, true);
    assert.equal(store.notBefore(), undefined);

    assert.equal(await store.remember('k:captured', TTL), true);
    assert.equal(await store.remember('k:captured', TTL), false);
    const signedAt = Math.floor(clock / 1000);

    await redis.stop();
    await until(() => (store.status().healthy ? undefined : true));
    clock += 5000;
    const foundAt = clock;
    await redis.start();
    // The store checks its marker on the reconnection, before any nonce is asked about.
    await until(() => (store.status().healthy ? true : undefined));
    assert.equal(store.notBefore(), secondAfter(foundAt));
    assert.ok(signedAt < secondAfter(foundAt));
    assert.equal(store.status().healthy, true);

    // What the floor is for: a new process (a receiver restarted meanwhile) no longer finds the
    // nonce in Redis, and relies on the floor alone to refuse the captured request.
    const restarted = await open(prefix);
    assert.equal(restarted.notBefore(), secondAfter(foundAt));
    assert.equal(await restarted.remember('k:captured', TTL), true, 'Redis forgot the nonce');

    clock = (secondAfter(foundAt) + TIMESTAMP_WINDOW_SECONDS) * 1000 - 1;
    assert.equal(store.notBefore(), secondAfter(foundAt));
    clock += 1;
    for (const s of [store, restarted]) assert.equal(s.notBefore(), undefined);
  });

  it('FLUSHALL on a live connection: the next nonce finds the loss and is refused, and so is everything signed before it', async () => {
    const log = sink();
    const store = await open(`ferry:nonce:flush-${RUN}:`, log);
    clock += WINDOW_MS + 1000;
    assert.equal(await store.remember('k:before', TTL), true);
    assert.equal(store.notBefore(), undefined);

    await command('FLUSHALL');
    clock += 2000;
    const foundAt = clock;
    assert.equal(await store.remember('k:after', TTL), false, 'the request that finds the loss may be a replay');
    assert.equal(store.notBefore(), secondAfter(foundAt));
    assert.ok(log.lines.some((l) => l.level === 'warn' && /lost nonces/.test(l.msg)), JSON.stringify(log.lines));
    // The store goes on with a new epoch: nonces are recorded and replays refused again.
    assert.equal(await store.remember('k:next', TTL), true);
    assert.equal(await store.remember('k:next', TTL), false);
  });

  it('a dropped connection to a Redis that lost nothing changes nothing', async () => {
    const changes: boolean[] = [];
    const store = await open(`ferry:nonce:reconnect-${RUN}:`, undefined, (status) => changes.push(status.healthy));
    clock += WINDOW_MS + 1000;
    assert.equal(await store.remember('k:kept', TTL), true);
    changes.length = 0;
    await command('CLIENT', 'KILL', 'TYPE', 'normal');
    await until(() => (changes.join() === 'false,true' ? true : undefined));
    assert.equal(store.notBefore(), undefined);
    assert.equal(store.persistent, true);

    // Nor does a store that joins an epoch begun long ago.
    const later = await open(`ferry:nonce:reconnect-${RUN}:`);
    assert.equal(later.notBefore(), undefined);
    assert.equal(later.persistent, true);
    assert.equal(await later.remember('k:kept', TTL), false);
  });

  it('a Redis restored from an older snapshot: the store sees fewer writes than it made and refuses what was signed before', async () => {
    const store = await open(`ferry:nonce:snapshot-${RUN}:`);
    clock += WINDOW_MS + 1000;
    assert.equal(await store.remember('k:saved', TTL), true);
    await command('SAVE');
    assert.equal(await store.remember('k:unsaved', TTL), true);

    // Stopped without saving (no save points); started again, it loads the older dump.rdb.
    await redis.stop();
    clock += 3000;
    const foundAt = clock;
    await redis.start();
    assert.equal(await command('EXISTS', `ferry:nonce:snapshot-${RUN}:k:saved`), 1);
    assert.equal(await command('EXISTS', `ferry:nonce:snapshot-${RUN}:k:unsaved`), 0);
    await until(() => (store.status().healthy && store.notBefore() !== undefined ? true : undefined));
    assert.equal(store.notBefore(), secondAfter(foundAt));
  });
});
