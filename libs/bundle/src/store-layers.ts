import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createCompressor } from '@ferry/compress';
import type { LayerStore } from '@ferry/docker';
import { Sha256Tap } from './hash.ts';

/** A layer compressed into a temporary file, ready to be copied into the bundle. */
export interface PackedLayer {
  diffId: string;
  /** Its tar's size, uncompressed. */
  size: number;
  digest: string;
  blobSize: number;
  path: string;
}

/**
 * Compresses layers read from the engine's layer store, several at once: Node's zstd runs each
 * stream on one core (its multithreaded mode, ZSTD_c_nbWorkers, breaks Node 24's stream wrapper:
 * "push after EOF"), so layers go side by side, as many as there are cores. Each layer is read
 * once: LayerStore.read hashes the tar as it goes and fails before its last chunk unless the
 * bytes are the diff id, and the compressed bytes are hashed on their way to the file.
 */
export class StoreLayerPacker {
  readonly #store: LayerStore;
  readonly #dir: string;
  readonly #level: number | undefined;
  readonly #slots = Math.max(1, availableParallelism());
  readonly #waiting: Array<() => void> = [];
  readonly #tasks: Array<Promise<unknown>> = [];
  readonly #paths = new Set<string>();
  #running = 0;
  #stopped = false;

  constructor(store: LayerStore, dir: string, level: number | undefined) {
    this.#store = store;
    this.#dir = dir;
    this.#level = level;
  }

  /** Starts packing the layer `diffId` found under `chainId`; the answer settles once its file is whole. */
  pack(diffId: string, chainId: string): Promise<PackedLayer> {
    const task = this.#slot(async () => {
      const layer = await this.#store.layer(diffId, chainId);
      const path = join(this.#dir, `.${randomBytes(6).toString('hex')}.ferry-layer`);
      this.#paths.add(path);
      const packed = new Sha256Tap();
      await pipeline(Readable.from(this.#store.read(layer)), createCompressor('zstd', this.#level), packed, createWriteStream(path, { flags: 'wx', mode: 0o600 }));
      return { diffId, size: layer.size, digest: packed.digest(), blobSize: packed.bytes, path };
    });
    // Awaited in order later; a failure meanwhile is not an unhandled rejection.
    task.catch(() => undefined);
    this.#tasks.push(task);
    return task;
  }

  /** A packed layer's file, once copied into the bundle (or found to be there already). */
  async done(layer: PackedLayer): Promise<void> {
    this.#paths.delete(layer.path);
    await rm(layer.path, { force: true });
  }

  /** No more layers start; those under way finish, and every temporary file goes. */
  async close(): Promise<void> {
    this.#stopped = true;
    for (const wake of this.#waiting.splice(0)) wake();
    await Promise.allSettled(this.#tasks);
    for (const path of this.#paths) await rm(path, { force: true });
    this.#paths.clear();
  }

  async #slot<T>(work: () => Promise<T>): Promise<T> {
    while (!this.#stopped && this.#running >= this.#slots) await new Promise<void>((wake) => this.#waiting.push(wake));
    if (this.#stopped) throw new Error('the bundle is no longer being written');
    this.#running += 1;
    try {
      return await work();
    } finally {
      this.#running -= 1;
      this.#waiting.shift()?.();
    }
  }
}
