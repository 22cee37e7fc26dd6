import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { writeRecordFile } from '@ferry/durable';
import { join } from 'node:path';
import { FerryError, RELEASE_ID_PATTERN } from '@ferry/protocol';
import type { ServiceOutcome } from '../deploy.ts';
import type { ResolvedTarget } from '../targets.ts';
import type { ReleasePlan } from './plan.ts';
import type { PreviousReleases } from './previous.ts';
import type { Wave } from './waves.ts';

/** What a release paused by `pause: manual` needs to go on where it stopped. */
export interface PausedRelease {
  version: 1;
  releaseId: string;
  createdAt: string;
  project: string;
  /** The plan's digest (planDigest): the document it goes on with must be the one it started with. */
  digest: string;
  /** `--only` of the run that started it. */
  only?: string[];
  runId: string;
  /** When it started, for the whole release's duration. */
  startedAt: string;
  /** The wave it goes on with, counted from 0. */
  nextWave: number;
  waves: Wave[];
  outcomes: ServiceOutcome[];
  resolved: Record<string, ResolvedTarget[]>;
  /** Host id by receiver URL. */
  hosts: Record<string, string>;
  previous: PreviousReleases;
}

/**
 * What `continueRelease` refuses with before it sends anything — another document, a moved image
 * tag, a host of the waves to go now over its budget: the release stays paused then.
 */
export const REFUSED_TO_GO_ON: ReadonlySet<string> = new Set(['FERRY_ERR_USAGE', 'FERRY_ERR_IMAGE_MISMATCH', 'FERRY_ERR_OVER_BUDGET']);

/**
 * A digest of what a release deploys — its services in order, their entries (images, specs,
 * targets) and the rollout — so that `ferry release continue` goes on only with the document the
 * release started with (env values included: it is a digest, kept with the state, 0600).
 */
export function planDigest(plan: ReleasePlan, rollout: unknown): string {
  const what = { phases: plan.phases, services: plan.services.map((s) => ({ name: s.name, phase: s.phase, entry: s.entry })), rollout: rollout ?? null };
  return `sha256:${createHash('sha256').update(JSON.stringify(what)).digest('hex')}`;
}

/**
 * The releases paused until `ferry release continue`, one file each (`<id>.json`, 0600, in a 0700
 * directory: the sender's state, e.g. FERRY_DATA_DIR/paused-releases). Going on with one first
 * renames its file to `<id>.json.continuing`, so two `continue`s of one release cannot both run;
 * it is removed when the release ends, or written again when it pauses again.
 */
export class PausedReleases {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  #file(id: string): string {
    // Only a release id, checked, ever becomes a file name.
    if (!RELEASE_ID_PATTERN.test(id)) throw new FerryError('FERRY_ERR_USAGE', { message: `${id}: not a release id (rel-YYYYMMDDTHHMMSSZ-<8 hex>)` });
    return join(this.dir, `${id}.json`);
  }

  /** Writes the state of a paused release (replacing it atomically) and lets go of a `continue`'s hold. */
  async save(state: PausedRelease): Promise<void> {
    const file = this.#file(state.releaseId);
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeRecordFile(this.dir, state.releaseId, state);
    await rm(`${file}.continuing`, { force: true });
  }

  /**
   * Takes a paused release to go on with it.
   *
   * @throws FerryError FERRY_ERR_NOT_FOUND when no release of that id is paused here (never paused,
   *   already continued, or another `continue` of it runs).
   */
  async take(id: string): Promise<PausedRelease> {
    const file = this.#file(id);
    try {
      await rename(file, `${file}.continuing`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      throw new FerryError('FERRY_ERR_NOT_FOUND', {
        message: `No release ${id} is paused in ${this.dir}: it never paused here, it went on already, or a "ferry release continue" of it runs (or stopped: then ${file}.continuing is left, to rename back)`,
        details: { releaseId: id },
      });
    }
    const state = JSON.parse(await readFile(`${file}.continuing`, 'utf8')) as PausedRelease;
    if (state.version !== 1 || state.releaseId !== id) {
      await this.giveBack(id);
      throw new FerryError('FERRY_ERR_CONFIG', { message: `${file}: not the state of paused release ${id}` });
    }
    return state;
  }

  /** Puts a taken release back as paused, unchanged (its `continue` did not start). */
  async giveBack(id: string): Promise<void> {
    const file = this.#file(id);
    await rename(`${file}.continuing`, file);
  }

  /** The release ended: its state goes. */
  async done(id: string): Promise<void> {
    await rm(`${this.#file(id)}.continuing`, { force: true });
  }
}
