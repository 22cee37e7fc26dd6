import { createReadStream } from 'node:fs';
import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';
import type { Writable } from 'node:stream';
import { BLOCK, TYPE, fileEntry, paddedSize, writeHeader } from '@ferry/docker';

/** Writes a tar entry by entry into a stream, with backpressure; files are streamed from disk. */
export class TarOut {
  readonly #out: Writable;
  bytes = 0;

  constructor(out: Writable) {
    this.#out = out;
  }

  async directory(name: string): Promise<void> {
    await this.#write(writeHeader({ name: `${name}/`, type: TYPE.directory, size: 0 }));
  }

  async file(name: string, content: Buffer): Promise<void> {
    for (const piece of fileEntry(name, content)) await this.#write(piece);
  }

  /** A file whose `size` bytes are at `path`, streamed in. */
  async fromFile(name: string, path: string, size: number): Promise<void> {
    await this.#write(writeHeader({ name, type: TYPE.file, size }));
    await pipeline(createReadStream(path, { highWaterMark: 1024 * 1024 }), this.#out, { end: false });
    this.bytes += size;
    const padding = paddedSize(size) - size;
    if (padding > 0) await this.#write(Buffer.alloc(padding));
  }

  async end(): Promise<void> {
    await this.#write(Buffer.alloc(2 * BLOCK));
  }

  async #write(chunk: Buffer): Promise<void> {
    this.bytes += chunk.length;
    if (!this.#out.write(chunk)) await once(this.#out, 'drain');
  }
}
