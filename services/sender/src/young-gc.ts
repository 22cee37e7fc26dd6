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
 * do. A push moves a gigabyte in 64 KiB buffers that each die at once, with few JavaScript objects
 * around them, so dead buffers piled up to ~60 MiB before a collection freed them. A scavenge
 * costs about a millisecond and frees every buffer that died young. The buffers held while a part
 * makes its round trip live through two scavenges, though, and move to the old generation, which
 * V8 only collects once ~64 MiB of them piled up: the budget frees them sooner, at the cost of a
 * full collection (~20 ms) per 16 MiB of them, a few per gigabyte.
 *
 * `gc` is exposed at run time: V8 installs it in contexts created after the flag is set. Where
 * that fails, pushes only use more memory.
 */
export function scavengePeriodically(intervalMs = 100, budgetBytes = BUFFER_BUDGET_BYTES): () => void {
  if (!scavenge()) return () => undefined;
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
    if (buffers <= this.#floor + this.#budget || !collector) {
      this.#floor = Math.min(this.#floor, buffers);
      return false;
    }
    collector({ type: 'major', execution: 'sync' });
    this.#collected = true;
    return true;
  }
}

/** One scavenge now; false where `gc` cannot be had. */
export function scavenge(): boolean {
  if (collector === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      collector = runInNewContext('gc') as Collect;
    } catch {
      collector = null;
    }
  }
  collector?.({ type: 'minor', execution: 'sync' });
  return collector !== null;
}
