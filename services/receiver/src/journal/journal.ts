import { mkdir, open, readdir, readFile, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncPath } from '@ferry/durable';
import type { Logger } from '@ferry/log';
import type { DeploymentFailure, DeploymentResult, DeploymentState, ErrorBody, HealthCheckProgress, ReleaseRef, Route, StageTimings } from '@ferry/protocol';

/** States after which a deployment never moves again. */
export const FINAL_STATES: readonly DeploymentState[] = ['COMPLETED', 'ROLLED_BACK', 'FAILED'];

/** Finished records kept per service; older ones are pruned so start-up reads stay short. */
const KEEP_PER_SERVICE = 100;

const RECORD_FILE = /^([0-9a-f-]{36})\.jsonl$/;

/**
 * What is known about a deployment before it starts. It holds no environment value: env names
 * and the config hash say what was asked, and the containers on the engine carry their own
 * config, which is all a reconcile needs (it only renames, starts and removes containers).
 */
export interface DeploymentHeader {
  deploymentId: string;
  /**
   * `deploy`: a package pushed; `rollback`: `POST /v1/services/:name/rollback`; `remove`:
   * `DELETE /v1/services/:name`, the service's containers taken off the host.
   */
  kind: 'deploy' | 'rollback' | 'remove';
  host: string;
  service: string;
  image: string;
  imageId: string;
  configHash?: string;
  envNames?: string[];
  /** The package's digest and size, as signed. */
  package?: { digest: string; size: number };
  /** When the release was signed (its manifest's createdAt): an older one may not replace it. */
  signedAt?: string;
  /** The release the manifest filed it under (a deployment), or went back to (a rollback to a release). */
  release?: ReleaseRef;
  /** A rollback to a retained release: its id (`POST /v1/services/:name/rollback?toRelease=`). */
  toRelease?: string;
  bytes: number;
}

/** Facts learnt on the way, each written before the step that depends on it. */
export interface DeploymentFacts {
  /** The container created for this deployment. */
  containerId?: string;
  /** The container that ran before, kept stopped as `<service>.ferry-previous`. */
  previousContainerId?: string;
  /** What `image` pointed to before this deployment tagged it; a rollback points it back. */
  previousImageId?: string;
  /** The image was on the engine before this deployment loaded it: retention leaves it alone. */
  imagePreexisting?: boolean;
  /** Lifecycle events of this deployment beyond its states (e.g. rollback.started). */
  event?: string;
  /** What a failure left to show, written before the rollback removes the failed container. */
  failure?: DeploymentFailure;
  /** The health check so far, noted as each probe answers. */
  healthCheck?: HealthCheckProgress;
  /** A start-first switch (deploy/start-first.ts), noted at each of its steps. */
  switch?: SwitchFacts;
}

/**
 * Where a start-first switch stands. `aside`: the new container runs beside the old one and has
 * had no request; a receiver that dies here removes it (or stops it again, when it is a kept
 * container a rollback started) and the old one keeps serving. `promoting`, written before the
 * proxy is told of the new upstream: from here a restart finishes the switch.
 */
export interface SwitchFacts {
  step: 'aside' | 'promoting';
  route: Route;
  drainMs: number;
  /** The container traffic moves to. */
  newId: string;
  /** It was kept stopped before (a manual rollback): abandoned, it is stopped again, not removed. */
  kept: boolean;
  /** The container that served before, when one did. */
  oldId?: string;
}

export interface StateStamp {
  state: DeploymentState;
  at: string;
}

/** The journal's view of one deployment: `GET /v1/deployments/:id` answers with it. */
export interface DeploymentRecord extends DeploymentHeader {
  state: DeploymentState;
  /** Every state entered, in order, with the time it was entered. */
  states: StateStamp[];
  events: { type: string; at: string }[];
  containerId?: string;
  previousContainerId?: string;
  previousImageId?: string;
  imagePreexisting?: boolean;
  healthCheck?: HealthCheckProgress;
  switch?: SwitchFacts;
  timings: StageTimings;
  error?: ErrorBody['error'];
  /** Once the deployment failed: the report every client shows (docs/protocol.md §11.2). */
  failure?: DeploymentFailure;
  createdAt: string;
  updatedAt: string;
  finishedAt?: string;
  /** The answer a retry under this id gets back; present once the deployment finished. */
  result?: DeploymentResult;
}

type Line =
  | { type: 'begin'; at: string; header: DeploymentHeader; states: StateStamp[] }
  | { type: 'state'; at: string; state: DeploymentState; facts?: DeploymentFacts }
  | { type: 'facts'; at: string; facts: DeploymentFacts }
  | { type: 'finish'; at: string; result: DeploymentResult };

/**
 * The on-disk journal of deployments: one append-only JSON-lines file per deployment under
 * `<dataDir>/journal`, every line written with one write() and fsynced before the step it
 * records goes ahead. A file per deployment keeps a torn write to the one line being appended
 * when the process dies, and a last line without its newline (or that does not parse) is
 * dropped on read. An index of every record lives in memory; it is rebuilt from the files when
 * the receiver starts.
 */
export class Journal {
  readonly #dir: string;
  readonly #log: Logger;
  readonly #records = new Map<string, DeploymentRecord>();
  readonly #open = new Map<string, JournalEntry>();

  private constructor(dir: string, log: Logger) {
    this.#dir = dir;
    this.#log = log;
  }

  /** Opens (creating if needed) the journal in `dir` and reads every record in it. */
  static async open(dir: string, log: Logger): Promise<Journal> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const journal = new Journal(dir, log);
    for (const name of await readdir(dir)) {
      const id = RECORD_FILE.exec(name)?.[1];
      if (!id) continue;
      const record = journal.#read(id, await readFile(join(dir, name), 'utf8'));
      if (record) journal.#records.set(id, record);
    }
    for (const service of new Set([...journal.#records.values()].map((r) => r.service))) await journal.#prune(service);
    return journal;
  }

  get(deploymentId: string): DeploymentRecord | undefined {
    const record = this.#records.get(deploymentId);
    return record && structuredClone(record);
  }

  /** Newest first. */
  list(filter: { service?: string; limit?: number } = {}): DeploymentRecord[] {
    const all = [...this.#records.values()].filter((r) => filter.service === undefined || r.service === filter.service);
    all.sort(newestFirst);
    return all.slice(0, filter.limit ?? all.length).map((r) => structuredClone(r));
  }

  /** When the newest release that completed on `service` was signed; undefined when none did. */
  newestSigned(service: string): string | undefined {
    let newest: string | undefined;
    for (const r of this.#records.values()) {
      if (r.service === service && r.state === 'COMPLETED' && r.signedAt !== undefined && (newest === undefined || r.signedAt > newest)) newest = r.signedAt;
    }
    return newest;
  }

  /** Records that never reached a final state: the receiver stopped in their middle. */
  unfinished(): DeploymentRecord[] {
    return this.list().filter((r) => !FINAL_STATES.includes(r.state) && !this.#open.has(r.deploymentId));
  }

  /**
   * Starts a record; resolves once its first line is durable. `states` are the states already
   * passed before the journal got involved (the upload's RECEIVING and VERIFYING).
   */
  async begin(header: DeploymentHeader, states: StateStamp[], options: { again?: boolean } = {}): Promise<JournalEntry> {
    const path = join(this.#dir, `${header.deploymentId}.jsonl`);
    // `again`: a deployment cut short by a stop runs anew; its new beginning replaces the record.
    const handle = await open(path, options.again ? 'a' : 'wx', 0o600);
    const entry = new JournalEntry(this, header.deploymentId, handle);
    this.#open.set(header.deploymentId, entry);
    try {
      // A torn last line has no newline; the next line must not be glued to it.
      if (options.again) await handle.write('\n');
      await entry.append({ type: 'begin', at: new Date().toISOString(), header, states });
      // The file's name must survive a crash too, not only its bytes.
      await fsyncPath(this.#dir);
    } catch (err) {
      this.#open.delete(header.deploymentId);
      await handle.close().catch(() => undefined);
      throw err;
    }
    return entry;
  }

  /** Re-opens an unfinished record for the reconcile that finishes it. */
  async resume(deploymentId: string): Promise<JournalEntry> {
    const handle = await open(join(this.#dir, `${deploymentId}.jsonl`), 'a', 0o600);
    const entry = new JournalEntry(this, deploymentId, handle);
    this.#open.set(deploymentId, entry);
    // A torn last line has no newline; the next line must not be glued to it.
    await handle.write('\n');
    return entry;
  }

  /** @internal Called by an entry once its line is on disk. */
  applied(deploymentId: string, line: Line): void {
    const record = apply(this.#records.get(deploymentId), line);
    if (record) this.#records.set(deploymentId, record);
  }

  /** @internal */
  async closed(deploymentId: string, service: string): Promise<void> {
    this.#open.delete(deploymentId);
    await this.#prune(service).catch((err: unknown) => this.#log.warn({ err }, 'pruning the journal failed'));
  }

  #read(id: string, text: string): DeploymentRecord | undefined {
    let record: DeploymentRecord | undefined;
    const lines = text.split('\n');
    const complete = text.endsWith('\n') ? lines.slice(0, -1) : lines;
    for (const [i, raw] of complete.entries()) {
      if (raw.trim() === '') continue;
      let line: Line;
      try {
        line = JSON.parse(raw) as Line;
      } catch {
        // Only the last line can be torn by a crash; anything else is damage worth a word.
        if (i !== complete.length - 1) this.#log.warn({ deploymentId: id, line: i + 1 }, 'journal line does not parse; skipped');
        continue;
      }
      record = apply(record, line);
    }
    if (!record) this.#log.warn({ deploymentId: id }, 'journal file without a beginning; ignored');
    return record;
  }

  async #prune(service: string): Promise<void> {
    const finished = this.list({ service }).filter((r) => FINAL_STATES.includes(r.state));
    for (const old of finished.slice(KEEP_PER_SERVICE)) {
      this.#records.delete(old.deploymentId);
      await rm(join(this.#dir, `${old.deploymentId}.jsonl`), { force: true });
    }
  }
}

/** The writer of one deployment's record; appends are awaited one at a time by the owner. */
export class JournalEntry {
  readonly #journal: Journal;
  readonly #handle: FileHandle;
  readonly deploymentId: string;
  #closed = false;

  constructor(journal: Journal, deploymentId: string, handle: FileHandle) {
    this.#journal = journal;
    this.deploymentId = deploymentId;
    this.#handle = handle;
  }

  get record(): DeploymentRecord {
    const record = this.#journal.get(this.deploymentId);
    if (!record) throw new Error(`journal record ${this.deploymentId} vanished`);
    return record;
  }

  enter(state: DeploymentState, facts?: DeploymentFacts): Promise<void> {
    return this.append({ type: 'state', at: new Date().toISOString(), state, ...(facts ? { facts } : {}) });
  }

  note(facts: DeploymentFacts): Promise<void> {
    return this.append({ type: 'facts', at: new Date().toISOString(), facts });
  }

  /** Writes the outcome and closes the file; the record is final from here. */
  async finish(result: DeploymentResult): Promise<void> {
    await this.append({ type: 'finish', at: new Date().toISOString(), result });
    await this.close();
  }

  /** Closes without finishing: the record stays unfinished for the next start-up to resolve. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#handle.close().catch(() => undefined);
    await this.#journal.closed(this.deploymentId, this.record.service);
  }

  /** @internal */
  async append(line: Line): Promise<void> {
    if (this.#closed) throw new Error(`journal record ${this.deploymentId} is closed`);
    // One write per line: a crash tears at most this line, which the reader then drops.
    await this.#handle.write(`${JSON.stringify(line)}\n`);
    await this.#handle.datasync();
    this.#journal.applied(this.deploymentId, line);
  }
}

function apply(record: DeploymentRecord | undefined, line: Line): DeploymentRecord | undefined {
  if (line.type === 'begin') {
    const states = [...line.states];
    if (states.length === 0) states.push({ state: 'PENDING', at: line.at });
    const last = states.at(-1);
    return {
      ...line.header, state: last?.state ?? 'PENDING', states, events: [], timings: {},
      createdAt: states[0]?.at ?? line.at, updatedAt: line.at,
    };
  }
  if (!record) return undefined;
  const next: DeploymentRecord = { ...record, updatedAt: line.at };
  if (line.type === 'state') {
    next.state = line.state;
    next.states = [...record.states, { state: line.state, at: line.at }];
  }
  const facts = line.type === 'state' ? line.facts : line.type === 'facts' ? line.facts : undefined;
  if (facts) {
    const { event, ...rest } = facts;
    Object.assign(next, rest);
    if (event) next.events = [...record.events, { type: event, at: line.at }];
  }
  if (line.type === 'finish') {
    const { result } = line;
    if (result.state !== next.state) next.states = [...next.states, { state: result.state, at: line.at }];
    next.state = result.state;
    next.timings = result.timings;
    next.finishedAt = line.at;
    next.result = result;
    if (result.containerId) next.containerId = result.containerId;
    if (result.error) next.error = result.error;
    if (result.failure) next.failure = result.failure;
  }
  return next;
}

function newestFirst(a: DeploymentRecord, b: DeploymentRecord): number {
  return a.createdAt === b.createdAt ? b.updatedAt.localeCompare(a.updatedAt) : b.createdAt.localeCompare(a.createdAt);
}

