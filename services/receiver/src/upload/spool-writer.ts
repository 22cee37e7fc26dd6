import type { FileHandle } from 'node:fs/promises';
import { Writable } from 'node:stream';

/**
 * Writes a part into the spool at its offset, through the session's own file handle. A failed
 * write (a full disk) does not fail the stream: it is kept in {@link failed}, and the rest of the
 * part is read and dropped. Failing the stream would have its pipeline destroy the request, and
 * a destroyed request closes its connection under the 507 before the client reads it. The caller
 * answers as soon as `failed` settles; the request drains until it ends or the answer's
 * connection closes.
 */
export class SpoolWriter extends Writable {
  /** Settles with the first write error; stays pending while every write succeeds. */
  readonly failed: Promise<Error>;
  readonly #handle: FileHandle;
  #position: number;
  #failure: Error | undefined;
  #fail!: (err: Error) => void;

  constructor(handle: FileHandle, position: number) {
    // Chunks are queued by reference; the request's own high-water mark bounds what waits.
    super({ highWaterMark: 1024 * 1024 });
    this.#handle = handle;
    this.#position = position;
    this.failed = new Promise((resolve) => {
      this.#fail = resolve;
    });
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    if (this.#failure) {
      callback();
      return;
    }
    this.#writeAll(chunks.map((c) => c.chunk)).then(() => callback(), (err: unknown) => {
      this.#failure = err instanceof Error ? err : new Error(String(err));
      this.#fail(this.#failure);
      callback();
    });
  }

  async #writeAll(buffers: Buffer[]): Promise<void> {
    let pending = buffers;
    while (pending.length > 0) {
      const { bytesWritten } = await this.#handle.writev(pending, this.#position);
      if (bytesWritten === 0) throw Object.assign(new Error('The spool took no bytes'), { code: 'EIO' });
      this.#position += bytesWritten;
      pending = rest(pending, bytesWritten);
    }
  }
}

/** What is left of `buffers` once the first `written` bytes are gone (a short write). */
function rest(buffers: Buffer[], written: number): Buffer[] {
  let skip = written;
  const left: Buffer[] = [];
  for (const buffer of buffers) {
    if (skip >= buffer.length) {
      skip -= buffer.length;
      continue;
    }
    left.push(skip > 0 ? buffer.subarray(skip) : buffer);
    skip = 0;
  }
  return left;
}
