import { createReadStream } from 'node:fs';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { BLOCK, TYPE, fileEntry, paddedSize, writeHeader } from '@ferry/docker';
import { FerryError } from '@ferry/protocol';

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
    // Chunk by chunk rather than pipeline(…, { end: false }), which leaves its listeners on the
    // output for every file (Node warns past ten, and they stay for the whole bundle).
    let written = 0;
    for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
      written += chunk.length;
      if (written > size) break;
      await this.#write(chunk);
    }
    if (written !== size) throw new FerryError('FERRY_ERR_INTERNAL', { message: `${path} holds ${written} bytes, not the ${size} its tar header says` });
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
