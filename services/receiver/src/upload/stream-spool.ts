import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { storageError, writeRecordFile } from '@ferry/durable';
import { parseDeferredManifest, type Manifest, type PackageSeal } from '@ferry/protocol';

/**
 * What a restarted receiver needs of a stream: its opening manifest, and once it was deployed,
 * its seal (the spool is gone then; a repeated deploy call is answered from the journal).
 */
export interface StreamRecord {
  version: 1;
  id: string;
  /** The opening manifest as it was signed (parsed again at start-up). */
  opening: unknown;
  /** BLAKE3 of the opening manifest as parsed: a repeated open with the same manifest finds this stream. */
  manifestDigest: string;
  openedAt: string;
  state: 'receiving' | 'deployed';
  seal?: PackageSeal;
}

/** A record read back at start-up, with the bytes its spool holds. */
export interface RecoveredStream {
  record: StreamRecord;
  manifest: Manifest;
  spool: StreamSpool | undefined;
  bytes: number;
}

const RECORD = /^([0-9a-f]{32})\.json$/;

/**
 * The durable side of a stream, under FERRY_DATA_DIR/streams: `<id>.json`, replaced atomically
 * (temporary file, fsync, rename, fsync of the directory), and `<id>.bin`, the verified parts
 * appended in order, each written before the part is acknowledged. The parts are not fdatasynced
 * one by one: what the spool protects against is a stop of the receiver's process (a kill, a
 * restart, an upgrade), which the page cache survives, and a sync per part would tie every
 * acknowledgement to the engine's own writes being flushed (ext4 commits them together), halving
 * a stream's pace. After a crash of the host the spool holds a prefix of what was written; its
 * bytes are still checked by the load (each layer against its signed diff id) and by the seal's
 * digest, so a torn spool can fail a deployment but never load other bytes. Only verified parts are
 * written, so whatever the spool holds after a crash — a part cut short by the kill included —
 * is bytes the sender signed, in order: the spool's length is the stream's offset.
 */
export class StreamSpool {
  readonly #dir: string;
  readonly id: string;
  #handle: FileHandle | undefined;
  #size: number;

  private constructor(dir: string, id: string, handle: FileHandle, size: number) {
    this.#dir = dir;
    this.id = id;
    this.#handle = handle;
    this.#size = size;
  }

  /** Creates the record and an empty spool; both are durable when this resolves. */
  static async create(dir: string, record: StreamRecord): Promise<StreamSpool> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    let handle: FileHandle | undefined;
    try {
      handle = await open(join(dir, `${record.id}.bin`), 'wx', 0o600);
      await handle.sync();
      await writeRecordFile(dir, record.id, record);
      return new StreamSpool(dir, record.id, handle, 0);
    } catch (err) {
      await handle?.close().catch(() => undefined);
      await removeFiles(dir, record.id);
      throw storageError(err, 'The stream could not be recorded');
    }
  }

  /**
   * Reads every record a previous process left; a record without its spool (or unreadable) and
   * files without a record go. Streams already deployed come back without a spool.
   */
  static async recover(dir: string, onUnreadable: (id: string, err: unknown) => void): Promise<RecoveredStream[]> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const names = await readdir(dir);
    const found: RecoveredStream[] = [];
    const keep = new Set<string>();
    for (const name of names) {
      const id = RECORD.exec(name)?.[1];
      if (id === undefined) continue;
      try {
        const { record, manifest } = readRecord(id, await readFile(join(dir, name), 'utf8'));
        if (record.state === 'deployed') {
          found.push({ record, manifest, spool: undefined, bytes: record.seal?.size ?? 0 });
          keep.add(name);
          continue;
        }
        const handle = await open(join(dir, `${id}.bin`), 'a');
        const { size } = await handle.stat();
        found.push({ record, manifest, spool: new StreamSpool(dir, id, handle, size), bytes: size });
        keep.add(name).add(`${id}.bin`);
      } catch (err) {
        onUnreadable(id, err);
      }
    }
    for (const name of names) if (!keep.has(name)) await rm(join(dir, name), { force: true, recursive: true });
    return found;
  }

  /** Bytes in the spool. */
  get size(): number {
    return this.#size;
  }

  /** The first `bytes` of the spool, read back to feed a new load after a restart. */
  read(bytes: number): Readable {
    return createReadStream(join(this.#dir, `${this.id}.bin`), { start: 0, end: bytes - 1 });
  }

  /**
   * Appends one verified part (written, not synced: see the class). A failed write (a full disk) is cut back off,
   * so the spool never holds less than a whole part past the last acknowledged one.
   */
  async append(chunks: readonly Buffer[], bytes: number): Promise<void> {
    const handle = this.#handle;
    if (!handle) throw storageError(new Error('closed'), 'The stream\'s spool is closed');
    try {
      await handle.writev(chunks as Buffer[]);
      this.#size += bytes;
    } catch (err) {
      await handle.truncate(this.#size).catch(() => undefined);
      throw storageError(err, 'The part could not be written to the stream\'s spool');
    }
  }

  /** Marks the stream deployed under `seal`: the bytes go, the record stays for repeated deploy calls. */
  async deployed(record: StreamRecord): Promise<void> {
    await writeRecordFile(this.#dir, record.id, record);
    await this.close();
    await rm(join(this.#dir, `${this.id}.bin`), { force: true });
  }

  async close(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    await handle?.close().catch(() => undefined);
  }

  /** Removes the stream's files: it ended. */
  async remove(): Promise<void> {
    await this.close();
    await removeFiles(this.#dir, this.id);
  }
}

/** Removes a deployed stream's record (it has no spool any more). */
export async function removeStreamFiles(dir: string, id: string): Promise<void> {
  await removeFiles(dir, id);
}

function readRecord(id: string, text: string): { record: StreamRecord; manifest: Manifest } {
  const record = JSON.parse(text) as StreamRecord;
  const parsed = parseDeferredManifest(record.opening);
  if (record.version !== 1 || record.id !== id || !parsed.ok || (record.state !== 'receiving' && record.state !== 'deployed')) throw new Error('not a stream record');
  return { record, manifest: parsed.manifest };
}

async function removeFiles(dir: string, id: string): Promise<void> {
  for (const name of [`${id}.json`, `${id}.json.tmp`, `${id}.bin`]) await rm(join(dir, name), { force: true });
}

