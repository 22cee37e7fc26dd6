import { renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncPath } from '@ferry/durable';
import type { Logger } from '@ferry/log';
import { isFerryEvent, type FerryEvent } from './envelope.ts';

/** One event waiting for its JetStream ack; `file` is absent when it could only be kept in memory. */
export interface OutboxEntry {
  id: string;
  seq: number;
  file?: string;
  /** Kept only for entries without a file; a file's bytes are read again when they are sent. */
  payload?: Uint8Array;
}

// 16 digits sort as text in the order they were written, which is the order readdir gives back.
const NAME = /^(\d{16})\.json$/;
const TMP_SUFFIX = '.tmp';
const CORRUPT_DIR = 'corrupt';

/**
 * The on-disk half of the receiver's event publisher: one file per event, named by a sequence
 * number, written before `publish()` returns and removed only after JetStream acknowledged it.
 *
 * Writes are synchronous on purpose: a write to the page cache takes microseconds, and once it has
 * returned the event survives the process being killed. Power loss is covered by an fsync that
 * runs in the background for every new file and the directory, grouped, so it never holds up the
 * caller. A file is written under a temporary name and renamed, so a crash never leaves half an
 * event under a real name.
 */
export class Outbox {
  readonly dir: string;
  readonly #logger: Logger;
  #nextSeq: number;
  #unsynced: string[] = [];
  #syncing: Promise<void> | undefined;

  private constructor(dir: string, nextSeq: number, logger: Logger) {
    this.dir = dir;
    this.#nextSeq = nextSeq;
    this.#logger = logger;
  }

  /** Opens (creating it if needed) the outbox in `dir` and returns what a previous run left, oldest first. */
  static async open(dir: string, logger: Logger): Promise<{ outbox: Outbox; pending: OutboxEntry[] }> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const pending: OutboxEntry[] = [];
    for (const name of (await readdir(dir)).sort()) {
      // A temporary file is an event whose publish() never returned: it was never promised to anyone.
      if (name.endsWith(TMP_SUFFIX)) {
        await rm(join(dir, name), { force: true });
        continue;
      }
      const match = NAME.exec(name);
      if (!match?.[1]) continue;
      pending.push({ id: '', seq: Number(match[1]), file: join(dir, name) });
    }
    const last = pending.at(-1);
    return { outbox: new Outbox(dir, last ? last.seq + 1 : 1, logger), pending };
  }

  /**
   * Persists an event and returns its entry; on a write error (disk full, read-only) the entry
   * keeps the bytes in memory instead, so the event is still delivered while the process lives.
   */
  append(id: string, payload: Uint8Array): OutboxEntry {
    const seq = this.#nextSeq++;
    const file = join(this.dir, `${String(seq).padStart(16, '0')}.json`);
    try {
      writeFileSync(file + TMP_SUFFIX, payload, { mode: 0o600 });
      renameSync(file + TMP_SUFFIX, file);
    } catch (err) {
      try {
        unlinkSync(file + TMP_SUFFIX);
      } catch {
        // nothing was created
      }
      this.#logger.error({ err, eventId: id }, 'writing an event to the outbox failed; it is kept in memory only');
      return { id, seq, payload };
    }
    this.#unsynced.push(file);
    this.#syncing ??= this.#syncAll();
    return { id, seq, file };
  }

  /** The bytes and event of an entry; undefined (and the file moved aside) when the file is not an event. */
  async read(entry: OutboxEntry): Promise<{ event: FerryEvent; payload: Uint8Array } | undefined> {
    if (!entry.file) {
      if (!entry.payload) return undefined;
      return { event: JSON.parse(new TextDecoder().decode(entry.payload)) as FerryEvent, payload: entry.payload };
    }
    let payload: Buffer;
    try {
      payload = await readFile(entry.file);
    } catch (err) {
      // Gone: removed by hand, or by an earlier run after its ack. Either way there is nothing to send.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    let value: unknown;
    try {
      value = JSON.parse(payload.toString('utf8'));
    } catch {
      value = undefined;
    }
    if (!isFerryEvent(value)) {
      // Torn by a power loss before its fsync, or edited by hand: set aside for a human, not retried forever.
      await this.#setAside(entry.file);
      return undefined;
    }
    return { event: value, payload };
  }

  /** Forgets an acknowledged entry. A failure only means a resend after a restart, which JetStream drops. */
  async remove(entry: OutboxEntry): Promise<void> {
    if (!entry.file) return;
    await rm(entry.file, { force: true }).catch((err: unknown) => {
      this.#logger.warn({ err, eventId: entry.id, file: entry.file }, 'removing a delivered event from the outbox failed');
    });
  }

  /** Resolves once every file appended so far is fsynced with its directory entry. */
  async synced(): Promise<void> {
    while (this.#syncing) await this.#syncing;
  }

  async #syncAll(): Promise<void> {
    try {
      while (this.#unsynced.length > 0) {
        const batch = this.#unsynced.splice(0);
        for (const file of batch) await fsyncPath(file).catch((err: unknown) => this.#syncFailed(err, file));
        // The renames live in the directory: without this a power loss could forget the names.
        await fsyncPath(this.dir).catch((err: unknown) => this.#syncFailed(err, this.dir));
      }
    } finally {
      this.#syncing = undefined;
    }
  }

  #syncFailed(err: unknown, path: string): void {
    // ENOENT: the event was delivered and removed before its turn came; nothing to make durable.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    this.#logger.warn({ err, path }, 'fsync of the outbox failed; the event survives a crash but maybe not a power loss');
  }

  async #setAside(file: string): Promise<void> {
    const dir = join(this.dir, CORRUPT_DIR);
    const target = join(dir, file.slice(this.dir.length + 1));
    this.#logger.error({ file, movedTo: target }, 'an outbox file is not a Ferry event; it was set aside and is not delivered');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await rename(file, target).catch(async () => rm(file, { force: true }));
  }
}


