import { BLOCK, TYPE, paddedSize, parsePax, readHeader, readString } from '@ferry/docker';
import { FerryError } from '@ferry/protocol';

/** One entry of a tar read as a stream; its body must be read (or left) before the next is asked for. */
export interface StreamEntry {
  name: string;
  type: string;
  size: number;
  body: AsyncIterable<Buffer>;
}

/** Pulls exact byte counts out of a chunked source, holding at most one chunk. */
class Pull {
  readonly #it: AsyncIterator<Buffer>;
  #held: Buffer = Buffer.alloc(0);

  constructor(source: AsyncIterable<Buffer>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  async exact(n: number): Promise<Buffer | undefined> {
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const piece = await this.#next(n - have);
      if (piece === undefined) return have === 0 ? undefined : Buffer.concat(parts, have);
      parts.push(piece);
      have += piece.length;
    }
    return parts.length === 1 && parts[0] ? parts[0] : Buffer.concat(parts, have);
  }

  async *take(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      const piece = await this.#next(left);
      if (piece === undefined) throw truncated();
      left -= piece.length;
      yield piece;
    }
  }

  async #next(max: number): Promise<Buffer | undefined> {
    if (this.#held.length === 0) {
      const next: IteratorResult<Buffer> = await this.#it.next();
      if (next.done === true) return undefined;
      this.#held = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
    }
    const piece = this.#held.subarray(0, max);
    this.#held = this.#held.subarray(piece.length);
    return piece;
  }
}

/**
 * The entries of a tar (a `docker save` stream) in order, each body streamed: nothing but a header
 * or an extension header's few bytes is held. PAX and GNU long names are applied to the entry
 * they precede.
 */
export async function* tarEntries(source: AsyncIterable<Buffer>): AsyncGenerator<StreamEntry> {
  const pull = new Pull(source);
  let override: { path?: string; size?: number } = {};
  for (;;) {
    const block = await pull.exact(BLOCK);
    if (block === undefined || block.length < BLOCK) throw truncated();
    const read = readHeader(block);
    if (read.kind === 'invalid') throw new FerryError('FERRY_ERR_DOCKER', { message: `docker save: ${read.reason}` });
    if (read.kind === 'end') return;
    const raw = read.header;
    if (raw.type === TYPE.paxNext || raw.type === TYPE.paxGlobal || raw.type === TYPE.gnuLongName) {
      if (raw.size > 64 * 1024) throw new FerryError('FERRY_ERR_DOCKER', { message: 'docker save: an extended header is larger than 64 KiB' });
      const data = (await pull.exact(paddedSize(raw.size)))?.subarray(0, raw.size) ?? Buffer.alloc(0);
      if (raw.type === TYPE.gnuLongName) override.path = readString(data, 0, data.length);
      else if (raw.type === TYPE.paxNext) {
        const records = parsePax(data);
        const path = records?.get('path');
        const size = records?.get('size');
        if (path !== undefined) override.path = path;
        if (size !== undefined && /^\d{1,16}$/.test(size)) override.size = Number(size);
      }
      continue;
    }
    const size = override.size ?? raw.size;
    const entry = { name: override.path ?? raw.name, type: raw.type === TYPE.oldFile ? TYPE.file : raw.type, size };
    override = {};
    const body = pull.take(size);
    yield { ...entry, body };
    // Whatever the consumer left of the body, then the padding.
    for await (const _ of body) { /* drained */ }
    if (paddedSize(size) > size) await pull.exact(paddedSize(size) - size);
  }
}

function truncated(): FerryError {
  return new FerryError('FERRY_ERR_DOCKER', { message: 'docker save: the archive ended early' });
}
