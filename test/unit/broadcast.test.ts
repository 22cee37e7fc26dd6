/**
 * The sender's broadcast (one read of a package, many readers): every reader's writable gets every
 * byte in order, from a producer that reuses its chunk buffer once a write called back; a write
 * calls back only once every reader took the chunk; a reader slower than the rest is dropped with
 * SlowBranch and the others go on; a reader that fails holds no one up; the spool file gets the
 * same bytes; a broadcast that fails fails its readers with its error.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { Broadcast, SlowBranch } from '@ferry/sender';

/** A reader as a part cutter is one: it copies what it takes; `hold` keeps a write's callback until released. */
class Collector extends Writable {
  readonly chunks: Buffer[] = [];
  #held: (() => void)[] = [];
  hold = false;

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.chunks.push(Buffer.from(chunk));
    if (this.hold) this.#held.push(() => callback());
    else callback();
  }

  release(): void {
    this.hold = false;
    for (const callback of this.#held.splice(0)) callback();
  }

  get bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** Writes `data` through one reused buffer, `size` bytes at a time, each once the last write called back. */
async function produce(broadcast: Broadcast, data: Buffer, size: number): Promise<void> {
  const reused = Buffer.alloc(size);
  for (let at = 0; at < data.length; at += size) {
    const n = data.copy(reused, 0, at, at + size);
    await new Promise<void>((resolve, reject) => broadcast.write(reused.subarray(0, n), (err) => (err ? reject(err) : resolve())));
    // The broadcast called back: the buffer is the producer's again.
    reused.fill(0xee);
  }
  await new Promise<void>((resolve) => broadcast.end(resolve));
}

describe('Broadcast', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-broadcast-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  test('every reader and the spool get every byte of a producer that reuses its buffer', async () => {
    const data = randomBytes(300_000);
    const spoolPath = join(dir, 'spool.tar');
    const broadcast = new Broadcast({ slowAfterMs: 60_000, spoolPath, sampleBytes: 1000 });
    const readers = [new Collector(), new Collector(), new Collector()];
    const fed = readers.map((reader) => broadcast.attach().feed(reader));
    await produce(broadcast, data, 4096);
    await Promise.all(fed);
    for (const reader of readers) assert.ok(reader.bytes.equals(data));
    assert.ok((await readFile(spoolPath)).equals(data));
    assert.ok(broadcast.sample.equals(data.subarray(0, 1000)));
    assert.equal(broadcast.bytes, data.length);
  });

  test('a reader given its writable after the first bytes were written still gets them all', async () => {
    const data = randomBytes(50_000);
    const broadcast = new Broadcast({ slowAfterMs: 60_000 });
    const early = new Collector();
    const late = new Collector();
    const first = broadcast.attach();
    const second = broadcast.attach();
    const fedEarly = first.feed(early);
    const producing = produce(broadcast, data, 1000);
    await new Promise((resolve) => setImmediate(resolve));
    const fedLate = second.feed(late);
    await producing;
    await Promise.all([fedEarly, fedLate]);
    assert.ok(early.bytes.equals(data));
    assert.ok(late.bytes.equals(data));
  });

  test('a write calls back only once every reader took the chunk', async () => {
    const broadcast = new Broadcast({ slowAfterMs: 60_000 });
    const quick = new Collector();
    const held = new Collector();
    held.hold = true;
    const fed = [broadcast.attach().feed(quick), broadcast.attach().feed(held)];
    let calledBack = false;
    broadcast.write(Buffer.from('abc'), () => { calledBack = true; });
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(quick.bytes.toString(), 'abc');
    assert.equal(calledBack, false);
    held.release();
    await new Promise<void>((resolve) => broadcast.end(resolve));
    assert.equal(calledBack, true);
    await Promise.all(fed);
    assert.equal(held.bytes.toString(), 'abc');
  });

  test('a reader that holds everyone back is dropped with SlowBranch; the others get everything', async () => {
    const data = randomBytes(20_000);
    const broadcast = new Broadcast({ slowAfterMs: 50 });
    const quick = new Collector();
    const stuck = new Collector();
    stuck.hold = true;
    const fedQuick = broadcast.attach().feed(quick);
    const fedStuck = broadcast.attach().feed(stuck);
    await produce(broadcast, data, 1000);
    await fedQuick;
    assert.ok(quick.bytes.equals(data));
    await assert.rejects(fedStuck, SlowBranch);
  });

  test('a reader whose writable fails is detached; the broadcast fails once no one reads it', async () => {
    const broadcast = new Broadcast({ slowAfterMs: 60_000 });
    broadcast.on('error', () => undefined);
    const failing = new Writable({ write: (_chunk, _encoding, callback) => callback(new Error('the target went away')) });
    const quick = new Collector();
    const fedFailing = broadcast.attach().feed(failing);
    const fedQuick = broadcast.attach().feed(quick);
    await new Promise<void>((resolve, reject) => broadcast.write(Buffer.from('one'), (err) => (err ? reject(err) : resolve())));
    await assert.rejects(fedFailing, /the target went away/);
    assert.equal(broadcast.readers, 1);
    quick.destroy(new Error('this one too'));
    await assert.rejects(fedQuick, /this one too/);
    await assert.rejects(new Promise<void>((resolve, reject) => broadcast.write(Buffer.from('two'), (err) => (err ? reject(err) : resolve()))), /No target reads this package/);
  });

  test('a broadcast destroyed with an error fails every reader with it', async () => {
    const broadcast = new Broadcast({ slowAfterMs: 60_000 });
    broadcast.on('error', () => undefined);
    const readers = [new Collector(), new Collector()];
    const fed = readers.map((reader) => broadcast.attach().feed(reader));
    const stopped = new Error('the export failed');
    broadcast.destroy(stopped);
    for (const each of fed) await assert.rejects(each, (err) => err === stopped);
  });
});
