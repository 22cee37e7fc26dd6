import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type Collect = (options: { type: 'minor' | 'major'; execution: 'sync'; flavor?: 'regular' | 'last-resort' }) => void;

let collector: Collect | null | undefined;

/** Buffers that may pile up past what the last full collection left before another one runs. */
export const BUFFER_BUDGET_BYTES = 16 * 1024 * 1024;

/** JavaScript heap that may pile up past what the last full collection left before another one runs. */
export const HEAP_BUDGET_BYTES = 8 * 1024 * 1024;

/** Scavenges after which {@link scavengePeriodically} gives back the young generation that grew at start-up. */
const SHRINK_AFTER_TICKS = 10;

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
 * The young generation also keeps its size from here on (`--semi-space-growth-factor=1`): each
 * scavenge carries a few live objects over, and V8 doubles the young generation once their sum
 * passes its size, which a timer's scavenges reach in proportion to the push's length. It grew
 * already while the command's modules loaded (to ~26 MiB, where it starts at 1 MiB): after the
 * first second, a command still running gets one collection that reduces memory (V8's last
 * resort: it shrinks the young generation, ~20-60 ms once), which a short one does not wait for.
 * Objects that outlive a part's round trip pile up in the old generation the same way as buffers
 * do, ~13 MiB over a 1 GB push: the budget collects them too, past {@link HEAP_BUDGET_BYTES}.
 */
export function scavengePeriodically(intervalMs = 100, budgetBytes = BUFFER_BUDGET_BYTES): () => void {
  if (!scavenge()) return () => undefined;
  try {
    setFlagsFromString('--semi-space-growth-factor=1');
  } catch {
    // Only more memory.
  }
  const budget = new BufferBudget(budgetBytes);
  let ticks = 0;
  const timer = setInterval(() => {
    ticks += 1;
    if (ticks === SHRINK_AFTER_TICKS) budget.collect('last-resort');
    else scavenge();
    budget.check();
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * Runs a full collection when buffers outgrow `budgetBytes`, or the JavaScript heap
 * `heapBudgetBytes`, past the level the last one left.
 */
export class BufferBudget {
  readonly #budget: number;
  readonly #heapBudget: number;
  #floor: number;
  #heapFloor: number;
  #collected = false;

  constructor(budgetBytes: number, heapBudgetBytes = HEAP_BUDGET_BYTES) {
    this.#budget = budgetBytes;
    this.#heapBudget = heapBudgetBytes;
    const { arrayBuffers, heapUsed } = process.memoryUsage();
    this.#floor = arrayBuffers;
    this.#heapFloor = heapUsed;
  }

  /** True when this call ran a full collection. */
  check(): boolean {
    const { arrayBuffers: buffers, heapUsed: heap } = process.memoryUsage();
    // V8 frees a collection's buffers on another thread: the level it left is read a turn later.
    if (this.#collected) {
      this.#floor = buffers;
      this.#heapFloor = heap;
      this.#collected = false;
      return false;
    }
    if ((buffers <= this.#floor + this.#budget && heap <= this.#heapFloor + this.#heapBudget) || !collectorOf()) {
      this.#floor = Math.min(this.#floor, buffers);
      this.#heapFloor = Math.min(this.#heapFloor, heap);
      return false;
    }
    this.collect();
    return true;
  }

  /** A full collection now (`last-resort`: one that also shrinks the young generation); the next check reads the level it left. */
  collect(flavor: 'regular' | 'last-resort' = 'regular'): void {
    const collect = collectorOf();
    if (!collect) return;
    collect({ type: 'major', execution: 'sync', flavor });
    this.#collected = true;
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
