import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncPath, storageError } from '@ferry/durable';
import type { Logger } from '@ferry/log';
import type { ReleaseState } from '@ferry/protocol';
import type { ServiceOutcome } from '../deploy.ts';
import type { DeploymentDocument } from '../deployfile/index.ts';

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed';

/** A deployment job as the sender service keeps it on disk. */
export interface JobRecord {
  id: string;
  state: JobState;
  /** BLAKE3 of the document as validated: the same id with another document is a conflict. */
  documentDigest: string;
  document: DeploymentDocument;
  /** The key id that asked for it. */
  requestedBy: string;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  services: ServiceOutcome[];
  error?: { code: string; message: string };
  /** The release the job ran, as it ended (`paused` until a continue goes on with it). */
  release?: { id: string; state: ReleaseState };
  /** The paused release this job goes on with (`POST /v1/releases/:id/continue`). */
  continues?: string;
}

const RECORD = /^([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.json$/;

/**
 * Job records, one JSON file each. Every write goes to a temporary file that is fsynced, renamed
 * over the record and followed by an fsync of the directory, so a crash leaves either the old or
 * the new record, never a torn one; writes of one record are serialised in call order.
 */
export class JobStore {
  readonly #dir: string;
  readonly #log: Logger;
  readonly #records = new Map<string, JobRecord>();
  readonly #writes = new Map<string, Promise<void>>();

  private constructor(dir: string, log: Logger) {
    this.#dir = dir;
    this.#log = log;
  }

  /** Opens the directory and reads every record; leftovers of interrupted writes are removed. */
  static async open(dir: string, log: Logger): Promise<JobStore> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const store = new JobStore(dir, log);
    for (const name of await readdir(dir)) {
      if (name.includes('.tmp-')) {
        await unlink(join(dir, name)).catch(() => undefined);
        continue;
      }
      if (!RECORD.test(name)) continue;
      try {
        const record = JSON.parse(await readFile(join(dir, name), 'utf8')) as JobRecord;
        store.#records.set(record.id, record);
      } catch (err) {
        // One unreadable record must not keep the service from starting; it is left for a human.
        log.error({ err, file: name }, 'skipping an unreadable deployment record');
      }
    }
    return store;
  }

  get(id: string): JobRecord | undefined {
    return this.#records.get(id);
  }

  all(): JobRecord[] {
    return [...this.#records.values()];
  }

  /** Keeps the record in memory at once (reads see it) and resolves once it is durable. */
  save(record: JobRecord): Promise<void> {
    this.#records.set(record.id, record);
    const text = JSON.stringify(record);
    const previous = this.#writes.get(record.id) ?? Promise.resolve();
    const next = previous.then(() => this.#write(record.id, text));
    const tracked = next.finally(() => {
      if (this.#writes.get(record.id) === tracked) this.#writes.delete(record.id);
    });
    this.#writes.set(record.id, tracked);
    return next;
  }

  /** Resolves once every write asked for so far is on disk. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.#writes.values()]);
  }

  async #write(id: string, text: string): Promise<void> {
    const path = join(this.#dir, `${id}.json`);
    const temporary = `${path}.tmp-${randomBytes(4).toString('hex')}`;
    try {
      const handle = await open(temporary, 'w', 0o600);
      try {
        await handle.writeFile(text);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temporary, path);
      await fsyncPath(this.#dir);
    } catch (err) {
      await unlink(temporary).catch(() => undefined);
      this.#log.error({ err, id }, 'writing a deployment record failed');
      throw storageError(err, `Cannot write the record of deployment ${id}`);
    }
  }
}
