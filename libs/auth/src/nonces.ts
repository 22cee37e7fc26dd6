/**
 * Remembers nonces for as long as their requests could still be accepted, so a captured request
 * cannot be sent again. In memory here; issue-level work adds a Redis implementation.
 */
export interface NonceStore {
  /** Records the nonce; false when it was already recorded and has not expired. */
  remember(nonce: string, ttlSeconds: number): Promise<boolean>;
}

export class MemoryNonceStore implements NonceStore {
  readonly #expiries = new Map<string, number>();
  readonly #now: () => number;
  #nextSweep = 0;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  remember(nonce: string, ttlSeconds: number): Promise<boolean> {
    const now = this.#now();
    this.#sweep(now);
    const expiry = this.#expiries.get(nonce);
    if (expiry !== undefined && expiry > now) return Promise.resolve(false);
    this.#expiries.set(nonce, now + ttlSeconds * 1000);
    return Promise.resolve(true);
  }

  get size(): number {
    return this.#expiries.size;
  }

  // Sweeping at most once a second keeps remember() O(1) amortised under a flood of requests.
  #sweep(now: number): void {
    if (now < this.#nextSweep) return;
    this.#nextSweep = now + 1000;
    for (const [nonce, expiry] of this.#expiries) if (expiry <= now) this.#expiries.delete(nonce);
  }
}
