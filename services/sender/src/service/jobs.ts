import { randomUUID } from 'node:crypto';
import { digestOf } from '@ferry/integrity';
import type { Logger } from '@ferry/log';
import { FerryError, type DeploymentFailure, type ReleaseState } from '@ferry/protocol';
import { pendingOutcomes, type DeployDeps, type DeploymentOutcome, type DeployOptions, type ServiceOutcome } from '../deploy.ts';
import type { DeploymentDocument } from '../deployfile/index.ts';
import { REFUSED_TO_GO_ON, type PausedRelease, type PausedReleases } from '../release/paused.ts';
import type { JobRecord, JobState, JobStore } from './store.ts';

/**
 * Runs one deployment document — `runDeployment` in production, a stand-in in unit tests — or,
 * given `paused`, goes on with that paused release of it (`continueDeployment`).
 */
export type Runner = (document: DeploymentDocument, deps: Pick<DeployDeps, 'onUpdate'>, options: DeployOptions & { paused?: PausedRelease }) => Promise<DeploymentOutcome>;

/** What `GET /v1/deployments/:id` answers. */
export interface JobView {
  id: string;
  state: JobState;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  services: {
    service: string;
    image: string;
    imageId?: string;
    state: ServiceOutcome['state'];
    error?: { code: string; message: string };
    targets: {
      url: string; host?: string; deploymentId?: string; state: string; error?: { code: string; message: string };
      /** A failed deployment's report as its receiver recorded it, the one `ferry status ID` shows. */
      failure?: DeploymentFailure;
    }[];
  }[];
  error?: { code: string; message: string };
  /** The release the job ran, as it ended: `paused` ones go on with `POST /v1/releases/ID/continue`. */
  release?: { id: string; state: ReleaseState };
  /** The paused release this job goes on with. */
  continues?: string;
}

export interface JobsOptions {
  store: JobStore;
  run: Runner;
  log: Logger;
  /** Where releases paused by `pause: manual` wait; without it, none can go on here. */
  paused?: PausedReleases;
}

/**
 * The sender service's deployment jobs: accepted at once, run in the background, one job at a
 * time per service (a job waits for every earlier job that names one of its services), recorded
 * on disk at every step so that a restarted service still answers for them.
 */
export class DeploymentJobs {
  readonly #store: JobStore;
  readonly #run: Runner;
  readonly #log: Logger;
  /** Per service name: the tail of its queue, settled once the last job naming it is done. */
  readonly #tails = new Map<string, Promise<void>>();
  readonly #running = new Set<Promise<void>>();
  readonly #abort = new AbortController();
  readonly #paused: PausedReleases | undefined;

  constructor(options: JobsOptions) {
    this.#store = options.store;
    this.#run = options.run;
    this.#log = options.log;
    this.#paused = options.paused;
  }

  /**
   * Marks every job a previous process left queued or running as failed: nobody runs it any more,
   * and what it did on its targets is in their journals. Call before serving requests.
   */
  async recover(): Promise<number> {
    const left = this.#store.all().filter((job) => job.state === 'queued' || job.state === 'running');
    const error = { code: 'FERRY_ERR_SENDER_INTERRUPTED', message: 'The sender service stopped before this deployment finished; check its targets with "ferry status"' };
    for (const job of left) {
      const services = job.services.map((s) => s.state === 'succeeded' || s.state === 'failed' ? s : { ...s, state: 'failed' as const, ok: false, error });
      await this.#store.save({ ...job, state: 'failed', finishedAt: new Date().toISOString(), services, error });
      this.#log.warn({ deployment: job.id, was: job.state }, 'deployment interrupted by a restart marked failed');
    }
    return left.length;
  }

  /**
   * Accepts a document. An id seen before answers its job (the request is idempotent) unless the
   * document differs.
   *
   * @throws FerryError FERRY_ERR_DEPLOYMENT_CONFLICT when the id belongs to another document.
   */
  async submit(document: DeploymentDocument, requestedBy: string): Promise<{ job: JobRecord; created: boolean }> {
    const documentDigest = digestOf(JSON.stringify(document));
    const id = document.id ?? randomUUID();
    const existing = this.#store.get(id);
    if (existing) {
      if (existing.documentDigest !== documentDigest) {
        throw new FerryError('FERRY_ERR_DEPLOYMENT_CONFLICT', { message: `Deployment ${id} was already asked for with another document`, details: { deploymentId: id } });
      }
      return { job: existing, created: false };
    }
    const job: JobRecord = {
      id, state: 'queued', documentDigest, document, requestedBy, createdAt: new Date().toISOString(), services: pendingOutcomes(document),
    };
    await this.#store.save(job);
    const running = this.#start(job).finally(() => this.#running.delete(running));
    this.#running.add(running);
    return { job, created: true };
  }

  /**
   * Goes on with a release a job of this service paused (`pause: manual`), with that job's
   * document, as a new job: `authorize` is asked first whether the caller may deploy it.
   *
   * @throws FerryError FERRY_ERR_NOT_FOUND when no release of that id is paused here (never
   *   paused here, gone on already, or a continue of it runs), and what `authorize` throws.
   */
  async continueRelease(releaseId: string, requestedBy: string, authorize: (document: DeploymentDocument) => void): Promise<JobRecord> {
    const pausedBy = this.#store.all()
      .filter((job) => job.release?.id === releaseId && job.release.state === 'paused')
      .sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1))[0];
    if (!pausedBy || !this.#paused) {
      throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `No release ${releaseId} is paused on this sender`, details: { releaseId } });
    }
    authorize(pausedBy.document);
    const state = await this.#paused.take(releaseId);
    const job: JobRecord = {
      id: randomUUID(), state: 'queued', documentDigest: pausedBy.documentDigest, document: pausedBy.document, requestedBy,
      createdAt: new Date().toISOString(), services: state.outcomes, continues: releaseId,
    };
    try {
      await this.#store.save(job);
    } catch (err) {
      await this.#paused.giveBack(releaseId).catch(() => undefined);
      throw err;
    }
    const running = this.#start(job, state).finally(() => this.#running.delete(running));
    this.#running.add(running);
    return job;
  }

  get(id: string): JobRecord | undefined {
    return this.#store.get(id);
  }

  /** Stops starting services; jobs in flight end at their next service, the rest at the next boot. */
  close(): void {
    this.#abort.abort();
  }

  /** Resolves when every job started so far has finished (tests, and an orderly shutdown). */
  async idle(): Promise<void> {
    while (this.#running.size > 0) await Promise.allSettled([...this.#running]);
    await this.#store.flush();
  }

  async #start(job: JobRecord, paused?: PausedRelease): Promise<void> {
    // Sorted, so two jobs sharing services always queue in the same order and never wait on each other.
    const names = Object.keys(job.document.services).sort();
    const waits = names.map((name) => this.#tails.get(name) ?? Promise.resolve());
    let release!: () => void;
    const done = new Promise<void>((resolve) => { release = resolve; });
    for (const name of names) this.#tails.set(name, done);
    try {
      await Promise.all(waits);
      await this.#execute(job, paused);
    } catch (err) {
      this.#log.error({ err, deployment: job.id }, 'deployment job failed');
    } finally {
      release();
      for (const name of names) if (this.#tails.get(name) === done) this.#tails.delete(name);
    }
  }

  async #execute(queued: JobRecord, paused?: PausedRelease): Promise<void> {
    let job: JobRecord = { ...queued, state: 'running', startedAt: new Date().toISOString() };
    await this.#store.save(job);
    const services = new Map(job.services.map((s) => [s.service, s]));
    const onUpdate = (outcome: ServiceOutcome): void => {
      services.set(outcome.service, structuredClone(outcome));
      job = { ...job, services: [...services.values()] };
      void this.#store.save(job).catch(() => undefined);
    };
    try {
      const outcome = await this.#run(job.document, { onUpdate }, { runId: job.id, signal: this.#abort.signal, ...(paused ? { paused } : {}) });
      job = {
        ...job, services: outcome.services, state: outcome.ok ? 'succeeded' : 'failed', finishedAt: new Date().toISOString(),
        ...(outcome.release ? { release: { id: outcome.release.id, state: outcome.release.state } } : {}),
      };
    } catch (err) {
      const error = err instanceof FerryError ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err });
      job = { ...job, state: 'failed', finishedAt: new Date().toISOString(), error: { code: error.code, message: error.message } };
      // Refused before it went on (a host now over budget, a moved image tag): it stays paused.
      if (paused && REFUSED_TO_GO_ON.has(error.code)) await this.#paused?.giveBack(paused.releaseId).catch(() => undefined);
    }
    await this.#store.save(job);
    this.#log.info({ deployment: job.id, state: job.state }, 'deployment finished');
  }
}

/** The public view of a job: no document (it may hold env secrets), no internal fields. */
export function jobView(job: JobRecord): JobView {
  return {
    id: job.id, state: job.state, createdAt: job.createdAt,
    ...(job.startedAt ? { startedAt: job.startedAt } : {}),
    ...(job.finishedAt ? { finishedAt: job.finishedAt } : {}),
    services: job.services.map((s) => ({
      service: s.service, image: s.image, state: s.state,
      ...(s.imageId ? { imageId: s.imageId } : {}),
      ...(s.error ? { error: s.error } : {}),
      targets: s.targets.map((t) => ({
        url: t.url, state: t.state,
        ...(t.host ? { host: t.host } : {}), ...(t.deploymentId ? { deploymentId: t.deploymentId } : {}), ...(t.error ? { error: t.error } : {}),
        ...(t.failure ? { failure: t.failure } : {}),
      })),
    })),
    ...(job.error ? { error: job.error } : {}),
    ...(job.release ? { release: job.release } : {}),
    ...(job.continues ? { continues: job.continues } : {}),
  };
}
