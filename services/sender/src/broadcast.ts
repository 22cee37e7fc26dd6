import { createWriteStream, type WriteStream } from 'node:fs';
import { Readable, Writable } from 'node:stream';

/** Bytes a branch may hold unread before the producer waits for it (its reader lags). */
const BRANCH_HIGH_WATER = 4 * 1024 ** 2;

/** A branch dropped because it held everyone back: its target takes the spooled copy instead. */
export class SlowBranch extends Error {
  override readonly name = 'SlowBranch';
}

/** One reader's view of the broadcast: the same bytes, in order, at its own pace (within limits). */
export class Branch extends Readable {
  #wake: (() => void) | undefined;
  /** Since when this branch holds a full buffer, when it does. */
  fullSince: number | undefined;

  constructor() {
    super({ highWaterMark: BRANCH_HIGH_WATER });
  }

  get full(): boolean {
    return this.readableLength >= BRANCH_HIGH_WATER;
  }

  override _read(): void {
    this.fullSince = undefined;
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Resolves at the next read (room again) or after `ms`, whichever first. */
  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wake = () => { clearTimeout(timer); resolve(); };
    });
  }
}

export interface BroadcastOptions {
  /** Also write every byte to this file (mode 0600, created anew): the spooled copy for targets that leave or come late. */
  spoolPath?: string;
  /**
   * A branch whose buffer stayed full this long while another branch was waiting for bytes is
   * dropped with {@link SlowBranch}, so one slow target does not set everyone's pace.
   */
  slowAfterMs: number;
  /** Keep a copy of the first this many bytes (see {@link sample}); default none. */
  sampleBytes?: number;
}

/**
 * One read of a package, many readers: what is written here is copied once and handed to every
 * attached branch (and to the spool file, when there is one). The writer is paced by the slowest
 * branch still attached — backpressure reaches the export — except that a branch slower than the
 * rest for `slowAfterMs` is dropped. A branch that ends early (its target failed) is detached and
 * holds no one up. With no branch and no spool left, the broadcast fails: no one reads it.
 */
export class Broadcast extends Writable {
  readonly #branches = new Set<Branch>();
  readonly #slowAfterMs: number;
  readonly #spool: WriteStream | undefined;
  readonly #sampleBytes: number;
  readonly #sample: Buffer[] = [];
  #sampled = 0;
  /** Milliseconds the writer waited on branches (backpressure), and bytes written: what the links carried. */
  waitedMs = 0;
  bytes = 0;
  readonly started = performance.now();

  constructor(options: BroadcastOptions) {
    super({ highWaterMark: BRANCH_HIGH_WATER });
    this.#slowAfterMs = options.slowAfterMs;
    this.#sampleBytes = options.sampleBytes ?? 0;
    this.#spool = options.spoolPath ? createWriteStream(options.spoolPath, { flags: 'wx', mode: 0o600 }) : undefined;
    this.#spool?.on('error', (err) => this.destroy(err));
  }

  attach(): Branch {
    const branch = new Branch();
    this.#branches.add(branch);
    // A branch its reader destroyed (a failed target) or that ended is no one to wait for.
    branch.once('close', () => this.#branches.delete(branch));
    return branch;
  }

  /** Stops feeding a branch: its reader gets `reason`. */
  detach(branch: Branch, reason?: Error): void {
    this.#branches.delete(branch);
    if (!branch.destroyed) branch.destroy(reason);
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
    for (const branch of this.#branches) branch.push(null);
    if (!this.#spool) {
      callback();
      return;
    }
    this.#spool.end(() => callback());
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // Without an error this is the end after 'finish': the branches were ended and read on.
    if (error) {
      for (const branch of this.#branches) branch.destroy(error);
      this.#branches.clear();
      this.#spool?.destroy();
    }
    callback(error);
  }

  async #take(chunk: Buffer): Promise<void> {
    if (this.#branches.size === 0 && !this.#spool) throw new Error('No target reads this package any more');
    // Copied once for every reader: the producer may reuse its chunk once this write calls back.
    const copy = Buffer.from(chunk);
    this.bytes += copy.length;
    if (this.#sampled < this.#sampleBytes) {
      this.#sample.push(copy.subarray(0, this.#sampleBytes - this.#sampled));
      this.#sampled += Math.min(copy.length, this.#sampleBytes - this.#sampled);
    }
    const spooled = this.#spool ? new Promise<void>((resolve, reject) => this.#spool?.write(copy, (err) => (err ? reject(err) : resolve()))) : undefined;
    for (const branch of this.#branches) branch.push(copy);
    const waitStarted = performance.now();
    for (;;) {
      const full = [...this.#branches].filter((branch) => branch.full && !branch.destroyed);
      if (full.length === 0) break;
      const now = performance.now();
      // Slower than the rest: full while another branch has room and waits for bytes.
      const othersWait = full.length < this.#branches.size;
      for (const branch of full) {
        branch.fullSince = othersWait ? branch.fullSince ?? now : undefined;
        if (branch.fullSince !== undefined && now - branch.fullSince >= this.#slowAfterMs) {
          this.detach(branch, new SlowBranch(`slower than the other targets for ${this.#slowAfterMs} ms`));
        }
      }
      const waiting = full.filter((branch) => !branch.destroyed);
      if (waiting.length === 0) break;
      await Promise.race(waiting.map((branch) => branch.wait(Math.max(50, this.#slowAfterMs / 4))));
    }
    this.waitedMs += performance.now() - waitStarted;
    await spooled;
  }
}
