import { randomUUID } from 'node:crypto';
import type { ContainerRunner, ContainerSpec, ImageStore } from '@ferry/docker';
import { createEvent, type EventData, type EventReleaseRef, type EventSink } from '@ferry/events';
import type { Logger } from '@ferry/log';
import type { Proxy, Upstream } from '@ferry/proxy';
import {
  FerryError, LABELS, checkThroughPublished, configHash, effectiveStrategy, parseRouteLabel, routeLabelOf, upstreamName,
  type DeploymentFailure, type DeploymentResult, type DeploymentState, type EventType, type HealthCheckProgress, type Manifest, type ReleaseRef, type Restored, type StageTimings,
} from '@ferry/protocol';
import type { Policy } from '../policy/index.ts';
import { assertLayersPresent } from '../load/load.ts';
import type { VerifiedPackage } from '../load/package.ts';
import { startLastDeployed, type ReconcileResult } from './restart.ts';
import type { LayerInventory } from '../layers/index.ts';
import type { PackageStore } from '../store/packages.ts';
import { healthCheckFailedWithoutRestore, unstableWithoutRestore, waitHealthy } from './health.ts';
import { Scrubber, failedContainer } from './failure.ts';
import { bindsOnHost, specFor } from './container.ts';
import { verdict, type Emit, type Found, type Verdict } from './verdict.ts';
import { CanaryControl, runCanary } from './canary.ts';
import { asFerryError, failure, since } from './outcome.ts';
import { rollbackToRelease } from './to-release.ts';
import { finishRemoval, removeService, type RemovalDeps } from './remove.ts';
import { releaseNotRetained, type ReleaseStore } from '../releases/store.ts';
import { retainRelease } from '../releases/retain.ts';
import type { DeploymentFacts, DeploymentHeader, DeploymentRecord, Journal, JournalEntry, StateStamp } from '../journal/journal.ts';
import type { CrashPoint } from './crash.ts';
import { assertFreeSpace, type DiskGuard } from './disk.ts';
import { DEFAULT_RETAIN_IMAGES, pruneImages } from './retention.ts';
import { dropOlder, finishSwapBack, nextName, previousName, replaceContainer, restorePrevious, swapToPrevious, undoSwap } from './swap.ts';
import {
  SwitchIncomplete, abandonSwitch, assertProxy, checkRouted, commitSwitch, finishSwitch, routeToCurrent, startAside, switchFacts, upstreamOf,
} from './start-first.ts';
import { rollbackStartFirst } from './switch-back.ts';

export interface DeployerDeps {
  images: ImageStore;
  containers: ContainerRunner;
  events: EventSink;
  hostId: string;
  logger: Logger;
  /** Verified packages by digest; loading moves each package there and reads it from there. */
  packages: PackageStore;
  /** Checked again when the container spec is built; the default policy when absent. */
  policy?: Readonly<Policy>;
  /** Where every deployment's states are written before they are acted on. */
  journal: Journal;
  /** Images kept per service (FERRY_RETAIN_IMAGES); older ones Ferry loaded are removed. */
  retainImages?: number;
  /** How long a new container must stay up after its check passed (FERRY_STABILITY_WINDOW_MS). */
  stabilityWindowMs?: number;
  /** Refuses deployments when the data directory is short of space; no check when absent. */
  disk?: DiskGuard;
  /** Test hook only (FERRY_TEST_CRASH_AT, never from a request): SIGKILL the process at this step. */
  crashAt?: CrashPoint;
  /** Checks that a partial package's omitted layers are on the engine; partial packages are refused without it. */
  layers?: LayerInventory;
  /** The releases each service keeps to go back to; without it none is kept and `toRelease` answers 404. */
  releases?: ReleaseStore;
  /** Releases kept per service (FERRY_RETAIN_RELEASES). */
  retainReleases?: number;
  /** The host's reverse proxy; routed services are refused (FERRY_ERR_PROXY_UNAVAILABLE) without it. */
  proxy?: Proxy;
  /** Canaries in progress, for `promote` and `abort` by hand (routes/canary.ts). */
  canaries?: CanaryControl;
}

/** Between two attempts to resolve what a dead process left unfinished while the engine is away. */
const RECOVERY_RETRY_MS = 2000;

/** Who a lifecycle event is about; a manifest, or a journal record for rollbacks and reconciles. */
interface Subject {
  deploymentId: string;
  service: string;
  image: string;
  imageId: string;
  /** The release the deployment belongs to (or a rollback goes back to): every event says so. */
  release?: EventReleaseRef;
}

/**
 * Turns a verified package into a running service: load, check, tag, swap, health-check, and
 * roll back on failure, publishing an event at every step under the manifest's deployment id and
 * journalling every state on disk before acting on it. One deployment (or rollback) per service
 * runs at a time; a known deployment id gets its journalled outcome back.
 */
export class Deployer {
  readonly #deps: DeployerDeps;
  readonly #journal: Journal;
  /** Services with a deployment, rollback or reconcile under way: the per-service lock. */
  readonly #busy = new Set<string>();
  readonly #timers = new Set<NodeJS.Timeout>();
  /** Services whose committed switch is being finished in the background (#unlessIncomplete). */
  readonly #finishing = new Set<string>();

  constructor(deps: DeployerDeps) {
    this.#deps = deps;
    this.#journal = deps.journal;
  }

  /** True while any service is being deployed, rolled back or reconciled. */
  get changing(): boolean {
    return this.#busy.size > 0;
  }

  get journal(): Journal {
    return this.#journal;
  }

  /** The releases each service keeps (`GET /v1/releases`); undefined when none are kept. */
  get releases(): ReleaseStore | undefined {
    return this.#deps.releases;
  }

  /**
   * Refuses a new upload (507 FERRY_ERR_DISK_FULL) when the data directory is short of space;
   * `packageBytes` makes room for a package of that size too (see {@link assertFreeSpace}).
   */
  async assertDiskSpace(packageBytes = 0): Promise<void> {
    if (this.#deps.disk) await assertFreeSpace(this.#deps.disk, packageBytes);
  }

  /**
   * Deploys a verified package, which it owns from here: its bytes are released when this returns.
   * A deployment id the journal knows gets its stored outcome back instead of a second
   * deployment (also across restarts), so a sender that retries after a lost answer never
   * deploys twice; one still running answers FERRY_ERR_DEPLOYMENT_IN_PROGRESS. The one exception:
   * a package that outlived a stop of the receiver runs again the deployment that stop cut short.
   */
  async deploy(pkg: VerifiedPackage): Promise<DeploymentResult> {
    const { manifest } = pkg;
    const service = manifest.service.name;
    const found = this.#journal.get(manifest.deploymentId);
    const again = found !== undefined && pkg.resumesInterrupted && interruptedRun(found, manifest);
    const stored = again ? undefined : found;
    // Nothing is awaited between the look-ups and taking the lock: two requests cannot both pass.
    if (stored || this.#busy.has(service)) {
      await pkg.release();
      if (stored) return replay(stored, { kind: 'deploy', service, imageId: manifest.image.id });
      throw new FerryError('FERRY_ERR_DEPLOYMENT_IN_PROGRESS', { details: { service } });
    }
    this.#busy.add(service);
    try {
      // Refused before the journal starts: a retry under the same id once space is back deploys.
      await this.assertDiskSpace(pkg.bytes);
      // Also before the journal: the sender then sends the full package under the same id.
      await assertLayersPresent(this.#deps.layers, manifest);
      // Also before the journal: nothing changed, and the same id deploys once the proxy answers.
      await assertProxy(this.#deps.proxy, manifest.service);
      const entry = await this.#journal.begin(headerOf(manifest, this.#deps.hostId, pkg.bytes), receivedStates(pkg), { again });
      const run = new Run(this.#deps, pkg, entry, (type, data) => this.#emit(manifest, type, data));
      const result = await run.execute().catch((err: unknown) => this.#unlessIncomplete(err, manifest.deploymentId, service));
      if (result.state === 'COMPLETED') {
        const { releases, retainReleases: keep, disk, logger } = this.#deps;
        if (releases) await retainRelease({ releases, keep, disk, logger }, manifest, result);
        await this.#prune(service);
      }
      if (result.error) throw failure(result);
      return result;
    } finally {
      // A switch left to finish in the background keeps the service locked until it is finished.
      if (!this.#finishing.has(service)) this.#busy.delete(service);
      await pkg.release();
    }
  }

  /**
   * A start-first switch that failed after its commit point (the proxy or the engine refused a
   * step): the journal keeps it unfinished and it is finished in the background as after a
   * restart, the service locked meanwhile. The caller gets the step's error.
   */
  #unlessIncomplete(err: unknown, deploymentId: string, service: string): never {
    if (!(err instanceof SwitchIncomplete)) throw err;
    const record = this.#journal.get(deploymentId);
    if (record) {
      this.#finishing.add(service);
      void this.#recoverOne(record).finally(() => this.#finishing.delete(service));
    }
    throw err.error;
  }

  /**
   * `POST /v1/services/:name/rollback`: the kept previous container runs again and the current
   * one becomes the previous (a second rollback rolls forward); with `toRelease`, a retained
   * release of the service runs again instead (to-release.ts). Journalled as a deployment of
   * kind `rollback` under `deploymentId`, which makes a retried request answer the stored outcome.
   */
  async rollback(service: string, deploymentId: string = randomUUID(), toRelease?: string): Promise<DeploymentResult> {
    const stored = this.#journal.get(deploymentId);
    if (stored) return replay(stored, { kind: 'rollback', service, toRelease });
    if (this.#busy.has(service)) throw new FerryError('FERRY_ERR_DEPLOYMENT_IN_PROGRESS', { details: { service } });
    this.#busy.add(service);
    try {
      if (toRelease === undefined) return await this.#rollback(service, deploymentId);
      const retained = this.#deps.releases?.get(service, toRelease);
      if (!retained) throw releaseNotRetained(service, toRelease);
      const subject: Subject = {
        deploymentId, service, image: retained.image, imageId: retained.imageId, ...(retained.manifest.release ? { release: eventRelease(retained.manifest.release) } : {}),
      };
      const result = await rollbackToRelease({ ...this.#deps, journal: this.#journal, emit: (type, data) => this.#publish(subject, type, data) }, retained, deploymentId);
      await this.#prune(service);
      return result;
    } catch (err) {
      return this.#unlessIncomplete(err, deploymentId, service);
    } finally {
      if (!this.#finishing.has(service)) this.#busy.delete(service);
    }
  }

  /** `POST /v1/services/:name/reconcile` (see startLastDeployed), under the service's lock. */
  async reconcileService(service: string): Promise<ReconcileResult> {
    if (this.#busy.has(service)) throw new FerryError('FERRY_ERR_DEPLOYMENT_IN_PROGRESS', { details: { service } });
    this.#busy.add(service);
    try {
      return await startLastDeployed({ journal: this.#journal, containers: this.#deps.containers, logger: this.#deps.logger }, service);
    } finally {
      this.#busy.delete(service);
    }
  }

  /**
   * `DELETE /v1/services/:name[?release=ID]`: the service's containers go (remove.ts), under the
   * service's lock and journalled as a record of kind `remove` under `deploymentId`, which makes
   * a retried request answer the stored outcome.
   */
  async remove(service: string, deploymentId: string = randomUUID(), release?: string): Promise<DeploymentResult> {
    const stored = this.#journal.get(deploymentId);
    if (stored) return replay(stored, { kind: 'remove', service });
    if (this.#busy.has(service)) throw new FerryError('FERRY_ERR_DEPLOYMENT_IN_PROGRESS', { details: { service } });
    this.#busy.add(service);
    try {
      return await removeService(this.#removal(), { service, deploymentId, release });
    } finally {
      this.#busy.delete(service);
    }
  }

  #removal(): RemovalDeps {
    const { containers, hostId, logger, proxy } = this.#deps;
    return { containers, hostId, logger, proxy, journal: this.#journal, emitFor: (header) => (type, data) => this.#publish(subjectOf(header), type, data) };
  }

  async #rollback(service: string, deploymentId: string): Promise<DeploymentResult> {
    const { containers, images } = this.#deps;
    const started = performance.now();
    const previous = await containers.inspect(previousName(service));
    if (!previous) throw new FerryError('FERRY_ERR_NOTHING_TO_ROLL_BACK', { details: { service } });
    const current = await containers.inspect(service);
    const subject = {
      deploymentId, service, image: previous.labels[LABELS.imageRef] ?? previous.image, imageId: previous.labels[LABELS.imageId] ?? previous.imageId,
    } satisfies Subject;
    const label = parseRouteLabel(previous.labels[LABELS.route]);
    const routed = label !== undefined || parseRouteLabel(current?.labels[LABELS.route]) !== undefined;
    // Refused before the journal, nothing changed: a routed service's traffic moves through the proxy.
    if (routed) await assertProxy(this.#deps.proxy, { route: true });
    const { proxy } = this.#deps;
    if (label?.strategy === 'start-first' && proxy) {
      return rollbackStartFirst({
        containers, images, proxy, journal: this.#journal, hostId: this.#deps.hostId, logger: this.#deps.logger,
        stabilityWindowMs: this.#deps.stabilityWindowMs, crashAt: this.#deps.crashAt, emit: (type, data) => this.#publish(subject, type, data),
      }, { subject, previous, current, label });
    }
    const entry = await this.#journal.begin({ ...subject, kind: 'rollback', host: this.#deps.hostId, bytes: 0 }, []);
    const log = this.#deps.logger.child({ deploymentId, service });
    const timings: StageTimings = {};
    const result = (state: DeploymentState, error?: FerryError): DeploymentResult => ({
      ...subject, host: this.#deps.hostId, state, bytes: 0, timings,
      ...(state === 'ROLLED_BACK' ? { containerId: previous.id } : {}),
      ...(error ? { error: { code: error.code, message: error.message } } : {}),
    });
    this.#publish(subject, 'rollback.started', { reason: 'manual rollback' });
    await entry.enter('ROLLING_BACK', { event: 'rollback.started', ...(current ? { previousContainerId: current.id } : {}) });
    try {
      await swapToPrevious(containers, service);
      // The service's image name points at what runs again, as after any deployment.
      if (subject.image !== subject.imageId) await images.tag(subject.imageId, subject.image);
      if (!(await containers.inspect(previous.id))?.running) {
        throw new FerryError('FERRY_ERR_CONTAINER_FAILED', { message: 'The previous container exited right after it started again' });
      }
      if (routed && proxy) {
        const routedNow = await routeToCurrent({ containers, proxy }, service);
        if (routedNow.upstream) {
          this.#publish(subject, 'deployment.switched', {
            ...(current ? { from: upstreamName(current.id) } : {}), to: routedNow.upstream.name, address: routedNow.upstream.address, strategy: 'stop-first', openSessions: 0, drainMs: 0,
          });
        }
      }
    } catch (err) {
      const error = new FerryError('FERRY_ERR_ROLLBACK_FAILED', { message: `Rollback of ${service} failed: ${asFerryError(err).message}`, cause: err });
      log.error({ err }, 'manual rollback failed');
      timings.total = since(started);
      await entry.finish(result('FAILED', error));
      this.#publish(subject, 'deployment.failed', { code: error.code, reason: error.message, state: 'FAILED' });
      throw failure(result('FAILED', error));
    }
    timings.rollback = since(started);
    timings.total = timings.rollback;
    await entry.note({ event: 'rollback.completed', containerId: previous.id });
    const done = result('ROLLED_BACK');
    await entry.finish(done);
    this.#publish(subject, 'rollback.completed', { restoredContainerId: previous.id, durationMs: timings.rollback });
    log.info({ timings }, 'manual rollback completed');
    return done;
  }

  /**
   * Resolves what the journal shows unfinished: the receiver died in the middle of those. A
   * deployment that had begun swapping containers is rolled back to the previous container
   * (ROLLED_BACK, or FAILED when there was none), one that had not is FAILED; either way with
   * FERRY_ERR_INTERRUPTED. A half-done manual rollback is finished so that a container runs.
   * A record the engine cannot resolve now (unreachable) keeps its service locked and is retried
   * in the background. Call before serving requests.
   */
  async recover(): Promise<void> {
    const pending = this.#journal.unfinished();
    for (const record of pending) this.#busy.add(record.service);
    await Promise.all(pending.map((record) => this.#recoverOne(record)));
  }

  async #recoverOne(record: DeploymentRecord): Promise<void> {
    try {
      await this.#reconcile(record);
      this.#busy.delete(record.service);
    } catch (err) {
      this.#deps.logger.error({ err, deploymentId: record.deploymentId, service: record.service }, 'could not resolve an interrupted deployment yet; retrying');
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        void this.#recoverOne(record);
      }, RECOVERY_RETRY_MS);
      timer.unref();
      this.#timers.add(timer);
    }
  }

  async #reconcile(record: DeploymentRecord): Promise<void> {
    const { containers, images } = this.#deps;
    const { service, deploymentId } = record;
    const log = this.#deps.logger.child({ deploymentId, service });
    const entry = await this.#journal.resume(deploymentId);
    if (record.kind === 'remove') return finishRemoval(this.#removal(), record, entry);
    if (record.switch?.step === 'promoting') return this.#finishInterruptedSwitch(record, entry);
    try {
      // A switch that never reached its commit point: the new container had no request.
      if (record.switch) await abandonSwitch({ containers, proxy: this.#requireProxy(service) }, service, record.switch);
      // A rollback to a release swaps as a deployment does, and is undone as one: what ran before runs.
      const swapsLikeDeploy = record.kind === 'deploy' || record.toRelease !== undefined;
      const swapping = record.kind === 'rollback' || record.states.some((s) => s.state === 'DEPLOYING');
      const subject = subjectOf(record);
      let running: string | undefined;
      if (!swapsLikeDeploy) {
        running = await finishSwapBack(containers, service);
      } else if (swapping) {
        if (record.kind === 'deploy') {
          if (record.state !== 'ROLLING_BACK') await entry.enter('ROLLING_BACK', { event: 'rollback.started' });
          this.#publish(subject, 'rollback.started', { reason: `the receiver stopped while ${record.state}` });
        }
        running = await undoSwap(containers, service, deploymentId, record.containerId);
        if (record.kind === 'deploy') this.#publish(subject, 'rollback.completed', { ...(running ? { restoredContainerId: running } : {}), durationMs: 0 });
      } else {
        // Nothing was swapped; only a container created aside may be left.
        const aside = await containers.inspect(nextName(service));
        if (aside?.labels[LABELS.deploymentId] === deploymentId) await containers.remove(aside.id, { force: true });
      }
      if (swapsLikeDeploy && record.previousImageId && record.previousImageId !== record.imageId) {
        await images.tag(record.previousImageId, record.image);
      }
      // The route table follows what runs now (a stop-first swap undone gave the old one a new port).
      if (this.#deps.proxy) await routeToCurrent({ containers, proxy: this.#deps.proxy }, service);
      const state: DeploymentState = record.kind === 'deploy' && swapping && running ? 'ROLLED_BACK' : 'FAILED';
      const error = new FerryError('FERRY_ERR_INTERRUPTED', {
        message: `The receiver stopped while this deployment was ${record.state}; ${running ? `container ${running.slice(0, 12)} runs` : 'nothing runs for this service'} since it started again`,
      });
      const result: DeploymentResult = {
        deploymentId, host: record.host, service, image: record.image, imageId: record.imageId, state,
        ...(record.kind === 'rollback' && running ? { containerId: running } : {}),
        bytes: record.bytes, timings: record.timings,
        error: { code: error.code, message: error.message, details: { interruptedIn: record.state, ...(running ? { runningContainerId: running } : {}) } },
        ...(swapsLikeDeploy ? { failure: interruptedFailure(record, swapping, running) } : {}),
      };
      await entry.finish(result);
      this.#publish(subject, 'deployment.failed', { code: error.code, reason: error.message, state });
      log.warn({ interruptedIn: record.state, state, running: running ?? null }, 'interrupted deployment resolved');
    } catch (err) {
      await entry.close();
      throw err;
    }
  }

  #requireProxy(service: string): Proxy {
    const { proxy } = this.#deps;
    if (!proxy) throw new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: `${service}: a switch through the proxy was under way and no proxy is configured`, details: { service } });
    return proxy;
  }

  /**
   * A start-first switch the receiver died in after its commit point: it is finished (start-first.ts
   * finishSwitch), and the deployment or rollback ends as it would have.
   */
  async #finishInterruptedSwitch(record: DeploymentRecord, entry: JournalEntry): Promise<void> {
    const facts = record.switch;
    if (!facts) throw new Error('no switch to finish');
    const { service, deploymentId } = record;
    const subject = subjectOf(record);
    try {
      const switched = await finishSwitch({ containers: this.#deps.containers, proxy: this.#requireProxy(service), log: this.#deps.logger }, service, facts);
      const state: DeploymentState = record.kind === 'deploy' ? 'COMPLETED' : 'ROLLED_BACK';
      const result: DeploymentResult = {
        deploymentId, host: record.host, service, image: record.image, imageId: record.imageId, ...(record.configHash ? { configHash: record.configHash } : {}),
        state, containerId: facts.newId, bytes: record.bytes, timings: record.timings,
      };
      await entry.finish(result);
      this.#publish(subject, 'deployment.switched', {
        ...(switched.from ? { from: switched.from } : {}), to: switched.to.name, address: switched.to.address, strategy: 'start-first', openSessions: switched.openSessions, drainMs: facts.drainMs,
      });
      if (state === 'COMPLETED') this.#publish(subject, 'deployment.completed', { timings: record.timings });
      else this.#publish(subject, 'rollback.completed', { restoredContainerId: facts.newId, durationMs: 0 });
      this.#deps.logger.warn({ deploymentId, service, state }, 'interrupted switch finished');
    } catch (err) {
      await entry.close();
      throw err;
    }
  }

  /** Stops background retries; the journal files stay as they are. */
  close(): void {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }

  /** After a deployment passed: the container kept aside for a failure goes, then old images. */
  async #prune(service: string): Promise<void> {
    await dropOlder(this.#deps.containers, service)
      .catch((err: unknown) => this.#deps.logger.warn({ err, service }, 'removing the container kept aside failed'));
    const keep = this.#deps.retainImages ?? DEFAULT_RETAIN_IMAGES;
    await pruneImages(this.#deps.images, this.#journal, service, keep, this.#deps.logger, this.#deps.releases?.imageIds(service))
      .catch((err: unknown) => this.#deps.logger.warn({ err, service }, 'removing old images failed'));
  }

  #emit<T extends EventType>(manifest: Manifest, type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image'>): void {
    const ref = manifest.release;
    this.#publish({
      deploymentId: manifest.deploymentId, service: manifest.service.name, image: manifest.image.ref, imageId: manifest.image.id,
      ...(ref ? { release: eventRelease(ref) } : {}),
    }, type, data);
  }

  #publish<T extends EventType>(subject: Subject, type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image'>): void {
    const full = {
      deploymentId: subject.deploymentId, host: this.#deps.hostId, service: subject.service,
      image: subject.image, imageId: subject.imageId, ...(subject.release ? { release: subject.release } : {}), ...data,
    } as unknown as EventData[T];
    this.#deps.events.publish(createEvent(type, {
      source: `ferry://receiver/${this.#deps.hostId}`, host: this.#deps.hostId, service: subject.service,
      deploymentId: subject.deploymentId, data: full,
    }));
  }
}

/**
 * The answer to a deployment id seen before: its stored outcome, the same 200 record or the
 * same error. The same id for another service or image is a client bug, not a retry. (The package
 * digest may differ: `docker save` of the same image is not byte-identical from one run to the next.)
 */
function replay(stored: DeploymentRecord, asked: { kind: DeploymentRecord['kind']; service: string; imageId?: string; toRelease?: string }): DeploymentResult {
  const { deploymentId } = stored;
  const otherRelease = asked.kind === 'rollback' && stored.toRelease !== asked.toRelease;
  if (stored.kind !== asked.kind || stored.service !== asked.service || otherRelease || (asked.imageId !== undefined && stored.imageId !== asked.imageId)) {
    throw new FerryError('FERRY_ERR_DEPLOYMENT_CONFLICT', { details: { deploymentId, service: stored.service } });
  }
  if (!stored.result) {
    throw new FerryError('FERRY_ERR_DEPLOYMENT_IN_PROGRESS', { message: 'This deployment is still running', details: { deploymentId, service: stored.service, state: stored.state } });
  }
  if (stored.result.error) throw failure(stored.result);
  return stored.result;
}

/**
 * A deployment of this very package that the receiver's own stop cut short (resolved at start-up
 * as FERRY_ERR_INTERRUPTED): the sender did nothing wrong, and the package it still holds may run
 * it again under the same id.
 */
function interruptedRun(stored: DeploymentRecord, manifest: Manifest): boolean {
  return stored.kind === 'deploy' && stored.result?.error?.code === 'FERRY_ERR_INTERRUPTED'
    && stored.service === manifest.service.name && stored.imageId === manifest.image.id
    && stored.package?.digest === manifest.package.digest;
}

/** An interrupted deployment's report: what it had found before the stop (if anything), and what runs since. */
function interruptedFailure(record: DeploymentRecord, swapping: boolean, running: string | undefined): DeploymentFailure {
  const restored: Restored = running ? { outcome: 'previous', containerId: running } : { outcome: swapping ? 'nothing' : 'untouched' };
  return { ...(record.failure ?? { stage: record.state }), restored };
}

/** Who a journalled record's events are about, its release as events carry it. */
function subjectOf(record: Pick<DeploymentRecord, 'deploymentId' | 'service' | 'image' | 'imageId' | 'release'>): Subject {
  const { deploymentId, service, image, imageId, release } = record;
  return { deploymentId, service, image, imageId, ...(release ? { release: eventRelease(release) } : {}) };
}

function eventRelease(ref: ReleaseRef): EventReleaseRef {
  return { id: ref.id, phase: ref.phase, ...(ref.wave !== undefined ? { wave: ref.wave } : {}) };
}

function headerOf(manifest: Manifest, host: string, bytes: number): DeploymentHeader {
  return {
    deploymentId: manifest.deploymentId, kind: 'deploy', host, service: manifest.service.name,
    image: manifest.image.ref, imageId: manifest.image.id, configHash: configHash(manifest),
    // Names only: values may be secrets, and a reconcile never needs them (see DeploymentHeader).
    envNames: Object.keys(manifest.service.env).sort(),
    package: { digest: manifest.package.digest, size: manifest.package.size }, signedAt: manifest.createdAt, bytes,
    ...(manifest.release ? { release: manifest.release } : {}),
  };
}

/** The upload's part of the walk, which happened before the journal got the package. */
function receivedStates(pkg: VerifiedPackage): StateStamp[] {
  const now = Date.now();
  return [
    { state: 'RECEIVING', at: new Date(now - Math.round(pkg.receiveMs)).toISOString() },
    { state: 'VERIFYING', at: new Date(now).toISOString() },
  ];
}


/** One deployment's walk through the states; a class so each step reads as one method. */
class Run {
  readonly #deps: DeployerDeps;
  readonly #pkg: VerifiedPackage;
  readonly #emit: Emit;
  readonly #log: Logger;
  readonly #timings: StageTimings = {};
  readonly #started = performance.now();
  readonly #entry: JournalEntry;
  /** Keeps the manifest's env values out of what the container wrote, before it is kept or shown. */
  readonly #scrub: Scrubber;
  #state: DeploymentState = 'VERIFYING';
  #containerId: string | undefined;
  /** A routed service's new container as the proxy would reach it (start-first.ts). */
  #upstream: Upstream | undefined;
  /** Set once a start-first switch passed its commit point: from there it is finished, never undone. */
  #committed = false;

  constructor(deps: DeployerDeps, pkg: VerifiedPackage, entry: JournalEntry, emit: Emit) {
    this.#deps = deps;
    this.#pkg = pkg;
    this.#entry = entry;
    this.#emit = emit;
    this.#log = deps.logger.child({ deploymentId: pkg.manifest.deploymentId, service: pkg.manifest.service.name });
    this.#scrub = new Scrubber(pkg.manifest.service.env);
    this.#timings.receive = Math.round(pkg.receiveMs);
  }

  get #manifest(): Manifest {
    return this.#pkg.manifest;
  }

  /** Walks the states, each journalled before it is acted on; resolves to the journalled outcome. */
  async execute(): Promise<DeploymentResult> {
    const result = await this.#walk().catch(async (err: unknown) => {
      // Left unfinished on purpose: the switch is finished from the journal (Deployer.#unlessIncomplete).
      if (err instanceof SwitchIncomplete) await this.#entry.close();
      throw err;
    });
    await this.#entry.finish(result);
    return result;
  }

  async #walk(): Promise<DeploymentResult> {
    const manifest = this.#manifest;
    this.#emit('package.verified', { digest: manifest.package.digest, bytes: this.#pkg.bytes, durationMs: this.#timings.receive ?? 0 });
    let previousTagTarget: string | undefined;
    try {
      const preexisting = (await this.#deps.images.inspect(manifest.image.id)) !== undefined;
      await this.#enter('LOADING', { imagePreexisting: preexisting });
      await this.#load();
      // Checked here, after a load that may have taken minutes, and before anything the running
      // service depends on changes: a refusal leaves the image name and the container as they were.
      const spec = await this.#bindsOnHost(this.#spec());
      previousTagTarget = (await this.#deps.images.inspect(manifest.image.ref))?.id;
      // Written before the tag moves, so a reconcile can point the name back.
      if (previousTagTarget) await this.#entry.note({ previousImageId: previousTagTarget });
      await this.#deps.images.tag(manifest.image.id, manifest.image.ref);
      await this.#enter('DEPLOYING');
      if (this.#startFirst) await this.#startAside(spec);
      else await this.#start(spec);
    } catch (err) {
      return this.#fail(asFerryError(err), previousTagTarget);
    }
    let health: Verdict;
    try {
      await this.#enter('VALIDATING');
      this.#crashAt('during-validate');
      health = await this.#validate();
    } catch (err) {
      // The engine going away mid-check (a daemon restart) is a failure like any other.
      return this.#fail(asFerryError(err), previousTagTarget);
    }
    if (!health.ok) return this.#fail(health.error, previousTagTarget, health.found);
    try {
      await this.#route();
    } catch (err) {
      if (this.#committed) throw new SwitchIncomplete(asFerryError(err));
      return this.#fail(asFerryError(err), previousTagTarget);
    }
    this.#state = 'COMPLETED';
    this.#timings.total = this.#elapsed();
    this.#emit('deployment.completed', { timings: this.#timings });
    this.#log.info({ timings: this.#timings }, 'deployment completed');
    return this.#result();
  }

  async #enter(state: DeploymentState, facts?: DeploymentFacts): Promise<void> {
    this.#state = state;
    await this.#entry.enter(state, facts);
  }

  /** The FERRY_TEST_CRASH_AT hook: dies here, as a power cut or the OOM killer would. */
  #crashAt(point: CrashPoint): void {
    if (this.#deps.crashAt !== point) return;
    this.#log.warn({ point }, 'FERRY_TEST_CRASH_AT: killing the receiver');
    process.kill(process.pid, 'SIGKILL');
  }

  async #load(): Promise<void> {
    const manifest = this.#manifest;
    this.#state = 'LOADING';
    const started = performance.now();
    await this.#pkg.load(this.#deps);
    this.#timings.load = this.#since(started);
    this.#emit('image.loaded', { imageId: manifest.image.id, durationMs: this.#timings.load });
  }

  /** Start-first (the spec's own, or the default with a route): the new container starts beside the old one. */
  get #startFirst(): boolean {
    return this.#manifest.service.route !== undefined && effectiveStrategy(this.#manifest.service) === 'start-first';
  }

  /** The new container created and started aside, the old one serving on; each step journalled first. */
  async #startAside(spec: ContainerSpec): Promise<void> {
    const started = performance.now();
    const service = this.#manifest.service.name;
    const label = routeLabelOf(this.#manifest.service);
    if (!label) throw new Error('start-first without a route');
    const old = await this.#deps.containers.inspect(service);
    const containerId = await startAside(this.#deps.containers, spec, async (id) => {
      this.#containerId = id;
      await this.#entry.note({ containerId: id, ...(old ? { previousContainerId: old.id } : {}), switch: switchFacts(label, id, old?.id, false) });
      // The engine mounts bind sources when it starts the container: a link planted since the
      // first check is caught here, before the start (the container is then removed by #fail).
      await this.#bindsOnHost(spec);
    }).catch((err: unknown) => {
      throw asFerryError(err, 'FERRY_ERR_CONTAINER_FAILED');
    });
    this.#timings.deploy = this.#since(started);
    this.#emit('container.started', { containerId, durationMs: this.#timings.deploy });
  }

  /**
   * A routed service's traffic goes to the new container. Start-first: here is the canary phase's
   * place (canary.ts, between "healthy" and "promote"); then the commit point and the switch
   * (start-first.ts). Stop-first: the old container is stopped already; the route's upstream is
   * swapped to the new one.
   */
  async #route(): Promise<void> {
    const { proxy, containers } = this.#deps;
    const service = this.#manifest.service.name;
    const label = routeLabelOf(this.#manifest.service);
    if (!label || !proxy || !this.#containerId) return;
    const old = this.#entry.record.previousContainerId;
    if (!this.#startFirst) {
      const routed = await routeToCurrent({ containers, proxy }, service);
      if (routed.upstream) {
        this.#emit('deployment.switched', {
          ...(old ? { from: upstreamName(old) } : {}), to: routed.upstream.name, address: routed.upstream.address, strategy: 'stop-first', openSessions: 0, drainMs: 0,
        });
      }
      return;
    }
    await this.#canary(proxy, old);
    this.#committed = true;
    const switched = await commitSwitch({ containers, proxy, log: this.#log, crashAt: this.#deps.crashAt }, this.#entry, service, switchFacts(label, this.#containerId, old, false));
    this.#emit('deployment.switched', {
      ...(switched.from ? { from: switched.from } : {}), to: switched.to.name, address: switched.to.address, strategy: 'start-first', openSessions: switched.openSessions, drainMs: label.drainMs,
    });
  }

  /**
   * The canary phase (canary.ts), before the commit point: the new upstream gets the canary's share
   * beside the one serving, and the proxy's counters (or a promote or abort by hand) decide. A
   * rollback throws, and #fail removes the new container as for a failed check: the old one never
   * stopped. With nothing serving before, there is nothing to compare with: no canary.
   */
  async #canary(proxy: Proxy, oldId: string | undefined): Promise<void> {
    const canary = this.#manifest.service.canary;
    const next = this.#upstream;
    if (!canary || !oldId || !next) return;
    const service = this.#manifest.service.name;
    const current = ((await proxy.routes()).find((r) => r.service === service)?.upstreams ?? []).find((u) => u.name === upstreamName(oldId));
    if (!current) return;
    const result = await runCanary({
      proxy, control: this.#deps.canaries ?? new CanaryControl(), service, canary, next, current,
      emit: (type, data) => this.#emit(type, data),
    });
    if (!result.promoted) throw result.error;
  }

  #spec(): ContainerSpec {
    return specFor(this.#manifest, this.#deps.policy);
  }

  #bindsOnHost(spec: ContainerSpec): Promise<ContainerSpec> {
    return bindsOnHost(spec, this.#manifest, { policy: this.#deps.policy, emit: this.#emit, log: this.#log });
  }

  async #start(spec: ContainerSpec): Promise<void> {
    const started = performance.now();
    const swapped = await replaceContainer(this.#deps.containers, spec, {
      created: async (containerId) => {
        // Known from here, so a failure at any later step removes this container, not the old one.
        this.#containerId = containerId;
        await this.#entry.note({ containerId });
      },
      replacing: (previousContainerId) => this.#entry.note({ previousContainerId }),
      stoppedOld: () => Promise.resolve(this.#crashAt('after-stop-old')),
      renamedNew: async () => {
        this.#crashAt('before-start-new');
        // The engine mounts bind sources when it starts the container, not when it creates it: a
        // link planted since the check above is caught here, and the swap is undone.
        await this.#bindsOnHost(spec);
      },
    }).catch((err: unknown) => {
      throw asFerryError(err, 'FERRY_ERR_CONTAINER_FAILED');
    });
    this.#containerId = swapped.containerId;
    this.#timings.deploy = this.#since(started);
    this.#emit('container.started', { containerId: swapped.containerId, durationMs: this.#timings.deploy });
  }

  /** The check and the stability window (verdict.ts). */
  async #validate(): Promise<Verdict> {
    const containerId = this.#containerId;
    if (!containerId) throw new Error('validate before start');
    const deps = {
      containers: this.#deps.containers, stabilityWindowMs: this.#deps.stabilityWindowMs, scrub: this.#scrub, emit: this.#emit,
      // Journalled as it goes, so whoever follows the deployment sees the check's progress.
      progress: (healthCheck: HealthCheckProgress) => this.#entry.note({ healthCheck }),
    };
    const route = this.#manifest.service.route;
    // A routed container is checked through the port the proxy will use.
    if (route) this.#upstream = await upstreamOf(this.#deps.containers, containerId, route.port);
    const outcome = this.#upstream ? await checkRouted(this.#manifest.service, containerId, this.#upstream, deps) : await verdict(this.#manifest, containerId, deps);
    if (outcome.healthMs > 0) this.#timings.health = outcome.healthMs;
    return outcome;
  }

  async #fail(error: FerryError, previousTagTarget: string | undefined, found: Found = {}): Promise<DeploymentResult> {
    const manifest = this.#manifest;
    let finalError = error;
    const failure: DeploymentFailure = await this.#failureFound(found);
    if (this.#state === 'DEPLOYING' || this.#state === 'VALIDATING') {
      const started = performance.now();
      this.#emit('rollback.started', { reason: error.message });
      try {
        // With what was found: the rollback removes the container its log lines come from.
        await this.#enter('ROLLING_BACK', { event: 'rollback.started', failure });
        const restored = await whileEngineRestarts(async () => {
          const id = await restorePrevious(this.#deps.containers, manifest.service.name, this.#containerId);
          if (previousTagTarget && previousTagTarget !== manifest.image.id) await this.#deps.images.tag(previousTagTarget, manifest.image.ref);
          return id;
        });
        // A start-first candidate had no request; the proxy forgets it in case a canary had begun.
        if (this.#startFirst && this.#containerId && this.#deps.proxy) await abandonSwitch({ containers: this.#deps.containers, proxy: this.#deps.proxy }, manifest.service.name, { newId: this.#containerId, kept: false });
        // The answer says the old version serves again, so wait until it does, as far as its check can tell.
        if (restored && !this.#startFirst) await this.#awaitRestoredHealthy(restored);
        // Restarted, the old container has a new published port: the route follows it.
        if (manifest.service.route && !this.#startFirst && this.#deps.proxy) await routeToCurrent({ containers: this.#deps.containers, proxy: this.#deps.proxy }, manifest.service.name);
        this.#timings.rollback = this.#since(started);
        await this.#entry.note({ event: 'rollback.completed' });
        this.#emit('rollback.completed', { ...(restored ? { restoredContainerId: restored } : {}), durationMs: this.#timings.rollback });
        this.#state = restored ? 'ROLLED_BACK' : 'FAILED';
        failure.restored = restored ? { outcome: 'previous', containerId: restored } : { outcome: 'nothing' };
        if (!restored && error.code === 'FERRY_ERR_HEALTHCHECK_FAILED') finalError = healthCheckFailedWithoutRestore(error);
        if (!restored && error.code === 'FERRY_ERR_UNSTABLE') finalError = unstableWithoutRestore(error);
      } catch (err) {
        this.#log.error({ err }, 'rollback failed');
        this.#state = 'FAILED';
        failure.restored = { outcome: 'failed' };
        finalError = new FerryError('FERRY_ERR_ROLLBACK_FAILED', { cause: err, details: { reason: error.message } });
      }
    } else {
      this.#state = 'FAILED';
      failure.restored = { outcome: 'untouched' };
    }
    this.#timings.total = this.#elapsed();
    this.#emit('deployment.failed', {
      code: finalError.code, reason: finalError.message, state: this.#state,
      ...(failure.container ? { logs: failure.container.logs } : {}), ...(failure.health ? { probes: failure.health.probes } : {}),
    });
    this.#log.warn({ code: finalError.code, state: this.#state }, 'deployment failed');
    return this.#result(finalError, failure);
  }

  /** The stage and what was found there; the new container, if it got one, as the engine sees it now. */
  async #failureFound(found: Found): Promise<DeploymentFailure> {
    const stage = this.#state;
    const swapped = stage === 'DEPLOYING' || stage === 'VALIDATING';
    const container = found.container ?? (swapped && this.#containerId ? await failedContainer(this.#deps.containers, this.#containerId, this.#scrub) : undefined);
    return { stage, ...(container ? { container } : {}), ...(found.health ? { health: found.health } : {}) };
  }

  async #awaitRestoredHealthy(containerId: string): Promise<void> {
    const route = this.#manifest.service.route;
    const declared = this.#manifest.service.health;
    const published = route && declared ? (await upstreamOf(this.#deps.containers, containerId, route.port).catch(() => undefined))?.address : undefined;
    const check = declared && published ? checkThroughPublished(declared, Number(published.split(':')[1])) : declared;
    if (!check) return;
    const inspect = (): ReturnType<ContainerRunner['inspect']> => this.#deps.containers.inspect(containerId);
    const outcome = await waitHealthy(check, {
      isRunning: async () => (await inspect())?.running ?? false,
      dockerHealth: async () => (await inspect())?.health,
    }).catch((err: unknown) => ({ ok: false, reason: (err as Error).message }));
    if (!outcome.ok) this.#log.warn({ reason: outcome.reason }, 'the restored container did not pass the health check either');
  }

  #result(error?: FerryError, failure?: DeploymentFailure): DeploymentResult {
    const manifest = this.#manifest;
    return {
      deploymentId: manifest.deploymentId,
      host: this.#deps.hostId,
      service: manifest.service.name,
      image: manifest.image.ref,
      imageId: manifest.image.id,
      configHash: configHash(manifest),
      state: this.#state,
      ...(this.#containerId && this.#state === 'COMPLETED' ? { containerId: this.#containerId } : {}),
      bytes: this.#pkg.bytes,
      timings: this.#timings,
      ...(error ? { error: { code: error.code, message: error.message } } : {}),
      ...(failure ? { failure } : {}),
    };
  }

  #since(started: number): number {
    return Math.round(performance.now() - started);
  }

  #elapsed(): number {
    return Math.round((this.#timings.receive ?? 0) + performance.now() - this.#started);
  }
}

/** How long a rollback waits for an engine that went away (a daemon restart) to come back. */
const ENGINE_BACK_ATTEMPTS = 30;
const ENGINE_BACK_PAUSE_MS = 1000;

/**
 * Runs `step` again while the engine cannot be reached or fails on its side (a daemon shutting
 * down resets connections and answers 5xx): a rollback given up on during a daemon restart would
 * leave the new, unchecked container to come back with the engine.
 */
async function whileEngineRestarts<T>(step: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await step();
    } catch (err) {
      if (attempt >= ENGINE_BACK_ATTEMPTS || !engineTrouble(err)) throw err;
      await new Promise((resolve) => setTimeout(resolve, ENGINE_BACK_PAUSE_MS));
    }
  }
}

function engineTrouble(err: unknown): boolean {
  if (!(err instanceof FerryError)) return false;
  if (err.code === 'FERRY_ERR_DOCKER_UNAVAILABLE') return true;
  const status = err.details?.dockerStatus;
  // A stopping daemon refuses a start with a 500 too; a container that truly cannot start costs
  // the wait before the rollback is declared failed.
  if (typeof status === 'number') return status >= 500 && (err.code === 'FERRY_ERR_DOCKER' || err.code === 'FERRY_ERR_CONTAINER_FAILED');
  return err.code === 'FERRY_ERR_DOCKER';
}


