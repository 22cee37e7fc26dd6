import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type Collect = (options: { type: 'minor' | 'major'; execution: 'sync' }) => void;

let collector: Collect | null | undefined;

/** Buffers that may pile up past what the last full collection left before another one runs. */
export const BUFFER_BUDGET_BYTES = 16 * 1024 * 1024;

/**
 * Scavenges V8's young generation every `intervalMs`, and runs a full collection whenever buffers
 * grew `budgetBytes` past what the last one left, until the returned function is called.
 *
 * Why: V8 starts a collection when JavaScript objects fill the young generation, not when buffers
 * do. A push moves a gigabyte in buffers that each die at once, with few JavaScript objects
 * around them, so dead buffers piled up to ~60 MiB before a collection freed them. A scavenge
 * costs about a millisecond and frees every buffer that died young. The buffers held while a part
 * makes its round trip live through two scavenges, though, and move to the old generation, which
 * V8 only collects once ~64 MiB of them piled up: the budget frees them sooner, at the cost of a
 * full collection (~20 ms) per 16 MiB of them, a few per gigabyte.
 *
 * The young generation also keeps its start size (`--semi-space-growth-factor=1`): each scavenge
 * carries a few live objects over, and V8 doubles the young generation once their sum passes its
 * size, which a timer's scavenges reach in proportion to the push's length (32 MiB instead of
 * 16 MiB over a 1 GB push).
 */
export function scavengePeriodically(intervalMs = 100, budgetBytes = BUFFER_BUDGET_BYTES): () => void {
  if (!scavenge()) return () => undefined;
  try {
    setFlagsFromString('--semi-space-growth-factor=1');
  } catch {
    // Only more memory.
  }
  const budget = new BufferBudget(budgetBytes);
  const timer = setInterval(() => {
    scavenge();
    budget.check();
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** Runs a full collection when buffers outgrow `budgetBytes` past the level the last one left. */
export class BufferBudget {
  readonly #budget: number;
  #floor = process.memoryUsage().arrayBuffers;
  #collected = false;

  constructor(budgetBytes: number) {
    this.#budget = budgetBytes;
  }

  /** True when this call ran a full collection. */
  check(): boolean {
    const buffers = process.memoryUsage().arrayBuffers;
    // V8 frees a collection's buffers on another thread: the level it left is read a turn later.
    if (this.#collected) {
      this.#floor = buffers;
      this.#collected = false;
      return false;
    }
    const collect = collectorOf();
    if (buffers <= this.#floor + this.#budget || !collect) {
      this.#floor = Math.min(this.#floor, buffers);
      return false;
    }
    collect({ type: 'major', execution: 'sync' });
    this.#collected = true;
    return true;
  }
}

/** One scavenge now; false where `gc` cannot be had. */
export function scavenge(): boolean {
  const collect = collectorOf();
  collect?.({ type: 'minor', execution: 'sync' });
  return collect !== null;
}

/**
 * V8's `gc`: the one a process started with `--expose-gc` has (the receiver, bin/main.ts), else
 * exposed now, which V8 installs in contexts created after the flag is set. Setting a flag at run
 * time changes the flag hash V8 checks code caches against, so modules loaded after it miss
 * Node's compile cache (~20 MiB more and a slower load): a process that can choose its flags at
 * start should.
 */
function collectorOf(): Collect | null {
  if (collector !== undefined) return collector;
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === 'function') return (collector = exposed as Collect);
  try {
    setFlagsFromString('--expose-gc');
    collector = runInNewContext('gc') as Collect;
  } catch {
    collector = null;
  }
  return collector;
}
