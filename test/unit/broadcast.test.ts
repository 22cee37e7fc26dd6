/**
 * The sender's broadcast (one read of a package, many readers): the bytes of a producer that
 * reuses its chunk buffer are cut into parts once, each hashed once, and the same part goes to
 * every reader's part cutter, in order; a write calls back only once every reader has room; a
 * reader slower than the rest is dropped with SlowBranch and the others go on; a reader whose
 * sending fails holds no one up; the spool file gets the same bytes; a broadcast that fails fails
 * its readers with its error; one without a slow limit waits on its readers without a timer. The
 * readers are real part cutters whose sending is a function here.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { digestOf } from '@ferry/integrity';
import { Broadcast, PartCutter, SlowBranch } from '@ferry/sender';

const PART = 1000;

interface Sent { offset: number; buffer: Buffer; bytes: Buffer; digest: string | undefined }

/** A part cutter whose sending records each part; `hold` keeps sends pending until released, `fail` fails them. */
function reader(options: { ahead?: number } = {}): { cutter: PartCutter; sent: Sent[]; hold: boolean; fail: Error | undefined; release(): void; bytes(): Buffer } {
  const waiting: (() => void)[] = [];
  const state = {
    sent: [] as Sent[], hold: false, fail: undefined as Error | undefined,
    cutter: new PartCutter(PART, async (part, offset) => {
      if (state.fail) throw state.fail;
      if (state.hold) await new Promise<void>((resolve) => waiting.push(resolve));
      const chunk = part.chunks[0] ?? Buffer.alloc(0);
      state.sent.push({ offset, buffer: chunk, bytes: Buffer.from(Buffer.concat(part.chunks)), digest: part.digest });
    }, options.ahead),
    release: () => { state.hold = false; for (const resolve of waiting.splice(0)) resolve(); },
    bytes: () => Buffer.concat(state.sent.map((s) => s.bytes)),
  };
  return state;
}

function write(broadcast: Broadcast, chunk: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => broadcast.write(chunk, (err) => (err ? reject(err) : resolve())));
}

/** Writes `data` through one reused buffer, `size` bytes at a time, each once the last write called back. */
async function produce(broadcast: Broadcast, data: Buffer, size: number): Promise<void> {
  const reused = Buffer.alloc(size);
  for (let at = 0; at < data.length; at += size) {
    const n = data.copy(reused, 0, at, at + size);
    await write(broadcast, reused.subarray(0, n));
    // The broadcast called back: the buffer is the producer's again.
    reused.fill(0xee);
  }
  await new Promise<void>((resolve) => broadcast.end(resolve));
}

describe('Broadcast', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-broadcast-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  test('every reader gets every part, cut and hashed once, and the spool every byte, from a producer that reuses its buffer', async () => {
    const data = randomBytes(30_500);
    const spoolPath = join(dir, 'spool.tar');
    const broadcast = new Broadcast({ slowAfterMs: 60_000, spoolPath, sampleBytes: 700, partBytes: PART });
    const readers = [reader(), reader(), reader()];
    const fed = readers.map((r) => broadcast.attach().feed(r.cutter));
    await produce(broadcast, data, 333);
    await Promise.all(fed);
    for (const r of readers) {
      assert.ok(r.bytes().equals(data));
      assert.deepEqual(r.sent.map((s) => s.offset), Array.from({ length: 31 }, (_, i) => i * PART));
      for (const s of r.sent) assert.equal(s.digest, digestOf(s.bytes));
    }
    // One buffer per part, queued in every reader: not a copy each.
    const [first, ...others] = readers;
    for (const other of others) other.sent.forEach((s, i) => assert.equal(s.buffer.buffer, first?.sent[i]?.buffer.buffer));
    assert.ok((await readFile(spoolPath)).equals(data));
    assert.ok(broadcast.sample.equals(data.subarray(0, 700)));
    assert.equal(broadcast.bytes, data.length);
  });

  test('a reader given its cutter after the first bytes were written still gets them all', async () => {
    const data = randomBytes(5_000);
    const broadcast = new Broadcast({ slowAfterMs: 60_000, partBytes: PART });
    const early = reader();
    const late = reader();
    const first = broadcast.attach();
    const second = broadcast.attach();
    const fedEarly = first.feed(early.cutter);
    const producing = produce(broadcast, data, 1500);
    await new Promise((resolve) => setImmediate(resolve));
    const fedLate = second.feed(late.cutter);
    await producing;
    await Promise.all([fedEarly, fedLate]);
    assert.ok(early.bytes().equals(data));
    assert.ok(late.bytes().equals(data));
  });

  test('a write that fills a part calls back only once every reader has room for the next', async () => {
    const broadcast = new Broadcast({ slowAfterMs: 60_000, partBytes: PART });
    const quick = reader({ ahead: 0 });
    const held = reader({ ahead: 0 });
    held.hold = true;
    const fed = [broadcast.attach().feed(quick.cutter), broadcast.attach().feed(held.cutter)];
    let calledBack = false;
    const writing = write(broadcast, randomBytes(PART)).then(() => { calledBack = true; });
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(quick.sent.length, 1);
    assert.equal(calledBack, false);
    held.release();
    await writing;
    await new Promise<void>((resolve) => broadcast.end(resolve));
    await Promise.all(fed);
    assert.ok(held.bytes().equals(quick.bytes()));
  });

  test('a reader that holds everyone back is dropped with SlowBranch; the others get everything', async () => {
    const data = randomBytes(20_000);
    const broadcast = new Broadcast({ slowAfterMs: 50, partBytes: PART });
    const quick = reader();
    const stuck = reader();
    stuck.hold = true;
    const fedQuick = broadcast.attach().feed(quick.cutter);
    const fedStuck = broadcast.attach().feed(stuck.cutter);
    await produce(broadcast, data, 1000);
    await fedQuick;
    assert.ok(quick.bytes().equals(data));
    await assert.rejects(fedStuck, SlowBranch);
    stuck.release();
  });

  test('without a slow limit, or with one longer than a timer holds, a held reader arms no timer Node must cut short', async () => {
    // A stream of its own (the whole image after a refused partial one) has no one to be slower than.
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => { warnings.push(warning); };
    process.on('warning', onWarning);
    try {
      for (const options of [{}, { slowAfterMs: Number.MAX_SAFE_INTEGER }, { slowAfterMs: Infinity }]) {
        const broadcast = new Broadcast({ ...options, partBytes: PART });
        const held = reader({ ahead: 0 });
        held.hold = true;
        const fed = broadcast.attach().feed(held.cutter);
        const writing = write(broadcast, randomBytes(2 * PART));
        // The broadcast waits on the held reader now: with a timer, if it armed one.
        await new Promise((resolve) => setTimeout(resolve, 20));
        held.release();
        await writing;
        await new Promise<void>((resolve) => broadcast.end(resolve));
        await fed;
        assert.equal(held.bytes().length, 2 * PART);
      }
      // A warning is emitted on a later tick than the call that caused it.
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off('warning', onWarning);
    }
    assert.deepEqual(warnings.map((w) => `${w.name}: ${w.message}`), []);
  });

  test('a reader whose sending fails is detached; the broadcast fails once no one reads it', async () => {
    const broadcast = new Broadcast({ slowAfterMs: 60_000, partBytes: PART });
    broadcast.on('error', () => undefined);
    const failing = reader();
    failing.fail = new Error('the target went away');
    const quick = reader();
    const fedFailing = broadcast.attach().feed(failing.cutter);
    const fedQuick = broadcast.attach().feed(quick.cutter);
    await write(broadcast, randomBytes(PART));
    await assert.rejects(fedFailing, /the target went away/);
    quick.fail = new Error('this one too');
    await write(broadcast, randomBytes(PART));
    await assert.rejects(fedQuick, /this one too/);
    await assert.rejects(write(broadcast, randomBytes(PART)), /No target reads this package/);
  });

  test('a broadcast destroyed with an error fails every reader with it', async () => {
    const broadcast = new Broadcast({ slowAfterMs: 60_000, partBytes: PART });
    broadcast.on('error', () => undefined);
    const readers = [reader(), reader()];
    const fed = readers.map((r) => broadcast.attach().feed(r.cutter));
    const stopped = new Error('the export failed');
    broadcast.destroy(stopped);
    for (const each of fed) await assert.rejects(each, (err) => err === stopped);
  });
});
