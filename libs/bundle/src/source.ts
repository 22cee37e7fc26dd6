import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';

/**
 * The bytes of a bundle, read where they lie: one file, or the parts `ferry bundle split` cut it
 * into, seen as one. Entries are read by offset, so nothing is copied to be verified or loaded.
 */
export interface ByteSource {
  readonly size: number;
  /** Exactly `length` bytes at `position` (fewer only past the end). */
  read(position: number, length: number): Promise<Buffer>;
  /** `length` bytes from `start`, streamed. */
  stream(start: number, length: number): Readable;
  close(): Promise<void>;
}

interface Piece {
  path: string;
  handle: FileHandle;
  /** Where the piece starts in the whole. */
  offset: number;
  size: number;
}

/** One file, or several read one after the other as if they were one. */
export class FileSource implements ByteSource {
  readonly #pieces: Piece[];
  readonly size: number;

  private constructor(pieces: Piece[]) {
    this.#pieces = pieces;
    this.size = pieces.reduce((n, p) => n + p.size, 0);
  }

  static async open(paths: readonly string[]): Promise<FileSource> {
    const pieces: Piece[] = [];
    let offset = 0;
    try {
      for (const path of paths) {
        const handle = await open(path, 'r');
        const { size } = await handle.stat();
        pieces.push({ path, handle, offset, size });
        offset += size;
      }
    } catch (err) {
      for (const piece of pieces) await piece.handle.close();
      throw err;
    }
    return new FileSource(pieces);
  }

  async read(position: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(Math.max(0, Math.min(length, this.size - position)));
    let done = 0;
    for (const piece of this.#pieces) {
      if (done >= out.length) break;
      const at = position + done;
      if (at >= piece.offset + piece.size || at < piece.offset) continue;
      const take = Math.min(out.length - done, piece.offset + piece.size - at);
      let got = 0;
      while (got < take) {
        const { bytesRead } = await piece.handle.read(out, done + got, take - got, at - piece.offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      done += got;
      if (got < take) break;
    }
    return done === out.length ? out : out.subarray(0, done);
  }

  stream(start: number, length: number): Readable {
    const ranges = this.#pieces
      .map((p) => ({ path: p.path, from: Math.max(start, p.offset) - p.offset, to: Math.min(start + length, p.offset + p.size) - p.offset }))
      .filter((r) => r.to > r.from);
    if (ranges.length === 1 && ranges[0]) return createReadStream(ranges[0].path, { start: ranges[0].from, end: ranges[0].to - 1, highWaterMark: 1024 * 1024 });
    return Readable.from((async function* () {
      for (const r of ranges) yield* createReadStream(r.path, { start: r.from, end: r.to - 1, highWaterMark: 1024 * 1024 });
    })(), { objectMode: false });
  }

  async close(): Promise<void> {
    for (const piece of this.#pieces) await piece.handle.close().catch(() => undefined);
  }
}
