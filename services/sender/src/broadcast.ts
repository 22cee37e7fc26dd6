import { createWriteStream, type WriteStream } from 'node:fs';
import { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { digestOf } from '@ferry/integrity';
import { STREAM_PART_BYTES } from '@ferry/protocol';
import type { Part, PartCutter } from './stream.ts';

/**
 * Bytes the producer may queue in the broadcast while a part is still with the readers: enough
 * for a compressor to go on with the next chunk, not a store of its own (each reader's part
 * cutter already holds a few parts ahead of its link).
 */
const QUEUE_BYTES = 1024 ** 2;

/**
 * Part buffers kept for the next part once every reader is done with theirs, across broadcasts
 * (a round started again with another compression takes the first one's): a push allocates its
 * few part buffers once, and glibc's heap is not left with holes between them.
 */
const SPARE_PARTS = 6;
const spare: Buffer[] = [];

function partBuffer(bytes: number): Buffer {
  const buffer = spare.pop();
  return buffer?.length === bytes ? buffer : Buffer.allocUnsafe(bytes);
}

function giveBack(buffer: Buffer): void {
  if (spare.length < SPARE_PARTS) spare.push(buffer);
}

/** A branch dropped because it held everyone back: its target takes the spooled copy instead. */
export class SlowBranch extends Error {
  override readonly name = 'SlowBranch';
}

/**
 * One reader of the broadcast: the part cutter of a target's stream, given with {@link feed}. Each
 * part is queued there and the broadcast waits until the queue has room, so the target takes the
 * parts at its own pace, within the few it queues.
 */
export class Branch {
  #destination: PartCutter | undefined;
  #connected: () => void = () => undefined;
  readonly #connection = new Promise<void>((resolve) => { this.#connected = resolve; });
  /** A part waits for room in the destination's queue. */
  busy = false;
  /** Since when this branch holds up the writer while another branch waits for bytes, when it does. */
  blockedSince: number | undefined;
  readonly #detached: (branch: Branch, reason?: Error) => void;
  #gone: Error | undefined;

  constructor(detached: (branch: Branch, reason?: Error) => void) {
    this.#detached = detached;
  }

  /**
   * Queues the broadcast's parts in `destination` from the first one on (parts cut before this
   * call wait for it), and ends it with the broadcast. Settles once `destination` finished, or
   * with why it did not: its own error, the broadcast's, or {@link SlowBranch}.
   */
  feed(destination: PartCutter): Promise<void> {
    this.#destination = destination;
    // The destination failed or was closed by its reader (a failed target): no one to wait for.
    destination.once('close', () => this.#detached(this));
    if (this.#gone) destination.destroy(this.#gone);
    this.#connected();
    return finished(destination);
  }

  /**
   * Resolves once the destination queued `part` and has room for the next one (or failed: it is
   * then detached). `done` runs once, when the destination no longer needs the part's bytes.
   */
  take(part: Part, done: () => void): Promise<void> {
    this.busy = true;
    return this.#connection.then(async () => {
      const destination = this.#destination;
      if (!destination || destination.destroyed) {
        done();
        return;
      }
      try {
        await destination.takePart(part, done);
      } catch (err) {
        this.#detached(this, err as Error);
      }
    }).finally(() => {
      this.busy = false;
      this.blockedSince = undefined;
    });
  }

  end(): void {
    this.#destination?.end();
  }

  /** Stops feeding the destination: it fails with `reason` (if given) and is waited for no more. */
  drop(reason?: Error): void {
    this.#gone ??= reason;
    // A branch without its destination yet lets the write that waits for one go.
    this.#connected();
    if (reason && this.#destination && !this.#destination.destroyed) this.#destination.destroy(reason);
  }
}

export interface BroadcastOptions {
  /** Also write every byte to this file (mode 0600, created anew): the spooled copy for targets that leave or come late. */
  spoolPath?: string;
  /**
   * A branch that held up the writer this long while another branch was waiting for bytes is
   * dropped with {@link SlowBranch}, so one slow target does not set everyone's pace. Without one
   * (or an infinite one) no branch is dropped for its pace: a stream of its own has no one to be
   * slower than.
   */
  slowAfterMs?: number | undefined;
  /** Keep a copy of the first this many bytes (see {@link sample}); default none. */
  sampleBytes?: number;
  /** The streams' part size (default STREAM_PART_BYTES). */
  partBytes?: number;
}

/**
 * One read of a package, many readers: the bytes written here are cut into the streams' parts
 * once, each part hashed once, and the same part (one buffer) is queued in every attached branch's
 * part cutter; its buffer serves the next part once every target sent it. The chunks also go to the
 * spool file, when there is one. A write calls back once its bytes were copied out, so a producer
 * that reuses its chunk buffer (the layer store's reader) may do so then. So a push holds a few
 * parts whatever the number of targets, and allocates nothing per chunk for the garbage
 * collector to find.
 *
 * The writer is paced by the slowest branch still attached — backpressure reaches the export —
 * except that a branch slower than the rest for `slowAfterMs` is dropped. A branch whose writable
 * fails (its target failed) is detached and holds no one up. With no branch and no spool left,
 * the broadcast fails: no one reads it.
 */
export class Broadcast extends Writable {
  readonly #branches = new Set<Branch>();
  /** Undefined: no branch is ever too slow, and the writer waits on its branches without a timer. */
  readonly #slowAfterMs: number | undefined;
  readonly #spool: WriteStream | undefined;
  readonly #sampleBytes: number;
  readonly #sample: Buffer[] = [];
  #sampled = 0;
  readonly #partBytes: number;
  #part: Buffer | undefined;
  #fill = 0;
  /** Milliseconds the writer waited on branches (backpressure), and bytes written: what the links carried. */
  waitedMs = 0;
  bytes = 0;
  readonly started = performance.now();

  constructor(options: BroadcastOptions) {
    super({ highWaterMark: QUEUE_BYTES });
    this.#slowAfterMs = options.slowAfterMs !== undefined && Number.isFinite(options.slowAfterMs) ? options.slowAfterMs : undefined;
    this.#sampleBytes = options.sampleBytes ?? 0;
    this.#partBytes = options.partBytes ?? STREAM_PART_BYTES;
    this.#spool = options.spoolPath ? createWriteStream(options.spoolPath, { flags: 'wx', mode: 0o600 }) : undefined;
    this.#spool?.on('error', (err) => this.destroy(err));
  }

  /** A new reader; it gets every byte from the first one on, once {@link Branch.feed} gives it its writable. */
  attach(): Branch {
    const branch = new Branch((gone, reason) => this.detach(gone, reason));
    this.#branches.add(branch);
    return branch;
  }

  /** Stops feeding a branch: its writable fails with `reason`, if given. */
  detach(branch: Branch, reason?: Error): void {
    this.#branches.delete(branch);
    branch.drop(reason);
  }

  /** The first bytes written (up to `sampleBytes`): what a compressor is tried on. */
  get sample(): Buffer {
    return Buffer.concat(this.#sample);
  }

  get readers(): number {
    return this.#branches.size;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#take(chunk).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    (async () => {
      if (this.#fill > 0) await this.#hand();
      for (const branch of this.#branches) branch.end();
      await new Promise<void>((resolve) => {
        if (this.#spool) this.#spool.end(() => resolve());
        else resolve();
      });
    })().then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // Without an error this is the end after 'finish': the branches were ended and finish on their own.
    if (error) {
      for (const branch of this.#branches) branch.drop(error);
      this.#branches.clear();
      this.#spool?.destroy();
    }
    callback(error);
  }

  async #take(chunk: Buffer): Promise<void> {
    if (this.#branches.size === 0 && !this.#spool) throw new Error('No target reads this package any more');
    this.bytes += chunk.length;
    if (this.#sampled < this.#sampleBytes) {
      // A copy: the chunk's buffer is the producer's again once this write calls back.
      const kept = Buffer.from(chunk.subarray(0, this.#sampleBytes - this.#sampled));
      this.#sample.push(kept);
      this.#sampled += kept.length;
    }
    const spooled = this.#spool ? new Promise<void>((resolve, reject) => this.#spool?.write(chunk, (err) => (err ? reject(err) : resolve()))) : undefined;
    // Handled where it is awaited below; a failed spool also destroys the broadcast.
    spooled?.catch(() => undefined);
    for (let at = 0; at < chunk.length;) {
      this.#part ??= partBuffer(this.#partBytes);
      const copied = chunk.copy(this.#part, this.#fill, at);
      this.#fill += copied;
      at += copied;
      if (this.#fill === this.#partBytes) await this.#hand();
    }
    await spooled;
  }

  /** Queues the part filled so far in every branch; resolves once each has room for the next (or was dropped). */
  async #hand(): Promise<void> {
    const buffer = this.#part ?? Buffer.alloc(0);
    const bytes = buffer.subarray(0, this.#fill);
    this.#part = undefined;
    this.#fill = 0;
    const part: Part = { chunks: [bytes], bytes: bytes.length, digest: digestOf(bytes) };
    let holders = this.#branches.size;
    const done = (): void => {
      holders -= 1;
      if (holders === 0 && buffer.length === this.#partBytes) giveBack(buffer);
    };
    const writes = new Map([...this.#branches].map((branch) => [branch, branch.take(part, done)]));
    const waitStarted = performance.now();
    for (;;) {
      const busy = [...this.#branches].filter((branch) => branch.busy);
      if (busy.length === 0) break;
      const slowAfterMs = this.#slowAfterMs;
      if (slowAfterMs !== undefined) {
        const now = performance.now();
        // Slower than the rest: still taking this chunk while another branch waits for the next.
        const othersWait = busy.length < this.#branches.size;
        for (const branch of busy) {
          branch.blockedSince = othersWait ? branch.blockedSince ?? now : undefined;
          if (branch.blockedSince !== undefined && now - branch.blockedSince >= slowAfterMs) {
            this.detach(branch, new SlowBranch(`slower than the other targets for ${slowAfterMs} ms`));
          }
        }
      }
      const waiting = busy.filter((branch) => this.#branches.has(branch));
      if (waiting.length === 0) break;
      // Without a slow limit nothing needs looking at before a branch moves: no timer at all.
      await untilOneOf(waiting.map((branch) => writes.get(branch) ?? Promise.resolve()), slowAfterMs === undefined ? undefined : Math.max(50, slowAfterMs / 4));
    }
    this.waitedMs += performance.now() - waitStarted;
  }
}

/**
 * The longest delay a Node timer holds (2^31 - 1 ms, about 24.8 days): past it setTimeout warns
 * (TimeoutOverflowWarning) and fires after 1 ms instead, which would turn the wait into a busy loop.
 */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Resolves when one of `promises` settles or after `ms` (if given), whichever is first. */
async function untilOneOf(promises: readonly Promise<void>[], ms: number | undefined): Promise<void> {
  if (ms === undefined) {
    await Promise.race(promises);
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([...promises, new Promise<void>((resolve) => { timer = setTimeout(resolve, Math.min(ms, MAX_TIMER_MS)); })]);
  } finally {
    clearTimeout(timer);
  }
}
