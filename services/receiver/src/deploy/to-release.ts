import type { ContainerRunner, ImageStore } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import type { Proxy } from '@ferry/proxy';
import { FerryError, configHash, effectiveStrategy, routeLabelOf, upstreamName, type DeploymentFailure, type DeploymentResult, type DeploymentState, type HealthCheckProgress, type Manifest, type StageTimings } from '@ferry/protocol';
import type { Journal, JournalEntry } from '../journal/journal.ts';
import type { Policy } from '../policy/index.ts';
import type { CrashPoint } from './crash.ts';
import { releaseNotRetained, type RetainedRelease } from '../releases/store.ts';
import { bindsOnHost, specFor } from './container.ts';
import { Scrubber, failedContainer } from './failure.ts';
import { healthCheckFailedWithoutRestore, unstableWithoutRestore } from './health.ts';
import { asFerryError, failure, since } from './outcome.ts';
import { replaceContainer, restorePrevious } from './swap.ts';
import { verdict, type Emit, type Found, type Verdict } from './verdict.ts';
import { SwitchIncomplete, abandonSwitch, assertProxy, checkRouted, commitSwitch, routeToCurrent, startAside, switchFacts, upstreamOf } from './start-first.ts';

export interface ReleaseRollbackDeps {
  images: ImageStore;
  containers: ContainerRunner;
  hostId: string;
  logger: Logger;
  policy?: Readonly<Policy>;
  stabilityWindowMs?: number;
  journal: Journal;
  /** Publishes the rollback's events under its deployment id, with the release it goes back to. */
  emit: Emit;
  /** Test hook only (FERRY_TEST_CRASH_AT): `during-validate` SIGKILLs the process while the release is checked. */
  crashAt?: CrashPoint;
  /** The host's proxy: a routed release goes back through it (start-first or an upstream swap). */
  proxy?: Proxy;
}

/**
 * `POST /v1/services/:name/rollback?toRelease=ID`: runs a retained release of the service again,
 * its image and its signed spec as this host kept them, as a deployment would — swapped in, its
 * check and stability window passed — and journalled as a record of kind `rollback` (PENDING →
 * ROLLING_BACK → ROLLED_BACK). It is a deliberate return to an older signed release, so the
 * downgrade rule lets it through; it records no signing time of its own, so a replayed manifest
 * older than the newest deployment is still refused afterwards. Today's policy is applied to the
 * old spec before anything changes. If the release does not pass, what ran before runs again and
 * the record is FAILED with the reason. The caller holds the service's lock.
 */
export async function rollbackToRelease(deps: ReleaseRollbackDeps, retained: RetainedRelease, deploymentId: string): Promise<DeploymentResult> {
  const manifest: Manifest = { ...retained.manifest, deploymentId, rollback: true };
  const service = manifest.service.name;
  const log = deps.logger.child({ deploymentId, service, toRelease: retained.releaseId });
  if (!(await deps.images.inspect(manifest.image.id))) throw releaseNotRetained(service, retained.releaseId, `its image ${manifest.image.id} is no longer on this host`);
  // Refused before the journal: nothing was changed, the same id may be asked again.
  await assertProxy(deps.proxy, manifest.service);
  const spec = await bindsOnHost(specFor(manifest, deps.policy), manifest, { policy: deps.policy, emit: deps.emit, log });
  const entry = await deps.journal.begin({
    deploymentId, kind: 'rollback', host: deps.hostId, service, image: manifest.image.ref, imageId: manifest.image.id,
    configHash: configHash(manifest), envNames: Object.keys(manifest.service.env).sort(),
    ...(retained.manifest.release ? { release: retained.manifest.release } : {}), toRelease: retained.releaseId, bytes: 0,
  }, []);
  const run = new ReleaseRollback(deps, manifest, entry, log);
  return run.execute(spec, retained.releaseId);
}

class ReleaseRollback {
  readonly #deps: ReleaseRollbackDeps;
  readonly #manifest: Manifest;
  readonly #entry: JournalEntry;
  readonly #log: Logger;
  readonly #scrub: Scrubber;
  readonly #timings: StageTimings = {};
  readonly #started = performance.now();
  #containerId: string | undefined;
  #previousTag: string | undefined;

  constructor(deps: ReleaseRollbackDeps, manifest: Manifest, entry: JournalEntry, log: Logger) {
    this.#deps = deps;
    this.#manifest = manifest;
    this.#entry = entry;
    this.#log = log;
    this.#scrub = new Scrubber(manifest.service.env);
  }

  async execute(spec: Parameters<typeof replaceContainer>[1], releaseId: string): Promise<DeploymentResult> {
    const { containers, images, emit } = this.#deps;
    const manifest = this.#manifest;
    emit('rollback.started', { reason: `rollback to release ${releaseId}` });
    await this.#entry.enter('ROLLING_BACK', { event: 'rollback.started' });
    let error: FerryError;
    let found: Found = {};
    try {
      this.#previousTag = (await images.inspect(manifest.image.ref))?.id;
      // Written before the tag moves, so a reconcile can point the name back.
      if (this.#previousTag) await this.#entry.note({ previousImageId: this.#previousTag });
      await images.tag(manifest.image.id, manifest.image.ref);
      if (this.#startFirst) return await this.#switchBack(spec);
      const swapped = await replaceContainer(containers, spec, {
        created: async (containerId) => {
          this.#containerId = containerId;
          await this.#entry.note({ containerId });
        },
        replacing: (previousContainerId) => this.#entry.note({ previousContainerId }),
      }).catch((err: unknown) => {
        throw asFerryError(err, 'FERRY_ERR_CONTAINER_FAILED');
      });
      this.#timings.deploy = since(this.#started);
      emit('container.started', { containerId: swapped.containerId, durationMs: this.#timings.deploy });
      this.#crashAt();
      const checked = await this.#check(swapped.containerId);
      if (checked.healthMs > 0) this.#timings.health = checked.healthMs;
      if (checked.ok) {
        // Stop-first with a route: the route's upstream follows the container that runs now.
        const { proxy } = this.#deps;
        if (proxy && manifest.service.route) this.#switched('stop-first', await routeToCurrent({ containers, proxy }, manifest.service.name), 0, swapped.previousId);
        return await this.#done(swapped.containerId);
      }
      ({ error, found } = checked);
    } catch (err) {
      if (err instanceof SwitchIncomplete) throw err;
      error = asFerryError(err);
    }
    return this.#fail(error, found);
  }

  get #startFirst(): boolean {
    return this.#manifest.service.route !== undefined && effectiveStrategy(this.#manifest.service) === 'start-first';
  }

  /** The check, through the published port for a routed container. */
  async #check(containerId: string): Promise<Verdict> {
    const { containers, emit } = this.#deps;
    const deps = { containers, stabilityWindowMs: this.#deps.stabilityWindowMs, scrub: this.#scrub, emit, progress: (healthCheck: HealthCheckProgress) => this.#entry.note({ healthCheck }) };
    const route = this.#manifest.service.route;
    if (!route) return verdict(this.#manifest, containerId, deps);
    return checkRouted(this.#manifest.service, containerId, await upstreamOf(containers, containerId, route.port), deps);
  }

  /**
   * The retained release as a start-first switch (start-first.ts): its container starts beside
   * the current one and takes the traffic once it passed; one that does not pass is removed
   * (#fail) without having had a request.
   */
  async #switchBack(spec: Parameters<typeof replaceContainer>[1]): Promise<DeploymentResult> {
    const { containers, proxy, emit } = this.#deps;
    const label = routeLabelOf(this.#manifest.service);
    if (!proxy || !label) throw new Error('start-first without a proxy or a route');
    const old = await containers.inspect(this.#manifest.service.name);
    const containerId = await startAside(containers, spec, async (id) => {
      this.#containerId = id;
      await this.#entry.note({ containerId: id, ...(old ? { previousContainerId: old.id } : {}), switch: switchFacts(label, id, old?.id, false) });
    }).catch((err: unknown) => {
      throw asFerryError(err, 'FERRY_ERR_CONTAINER_FAILED');
    });
    this.#timings.deploy = since(this.#started);
    emit('container.started', { containerId, durationMs: this.#timings.deploy });
    this.#crashAt();
    const checked = await this.#check(containerId);
    if (checked.healthMs > 0) this.#timings.health = checked.healthMs;
    if (!checked.ok) return this.#fail(checked.error, checked.found);
    let switched;
    try {
      switched = await commitSwitch({ containers, proxy, log: this.#log, crashAt: this.#deps.crashAt }, this.#entry, this.#manifest.service.name, switchFacts(label, containerId, old?.id, false));
    } catch (err) {
      // Past the commit point: finished from the journal when the receiver starts again.
      await this.#entry.close();
      throw new SwitchIncomplete(asFerryError(err));
    }
    this.#switched('start-first', { upstream: switched.to }, switched.openSessions, switched.from, label.drainMs);
    return this.#done(containerId);
  }

  /** `from`: the upstream, or the id of the container, that served before. */
  #switched(strategy: 'start-first' | 'stop-first', routed: { upstream?: { name: string; address: string } }, openSessions: number, from: string | undefined, drainMs = 0): void {
    if (!routed.upstream) return;
    const fromName = from && from.length > 12 ? upstreamName(from) : from;
    this.#deps.emit('deployment.switched', { ...(fromName ? { from: fromName } : {}), to: routed.upstream.name, address: routed.upstream.address, strategy, openSessions, drainMs });
  }

  #crashAt(): void {
    if (this.#deps.crashAt !== 'during-validate') return;
    this.#log.warn({ point: this.#deps.crashAt }, 'FERRY_TEST_CRASH_AT: killing the receiver');
    process.kill(process.pid, 'SIGKILL');
  }

  async #done(containerId: string): Promise<DeploymentResult> {
    this.#timings.rollback = since(this.#started);
    this.#timings.total = this.#timings.rollback;
    await this.#entry.note({ event: 'rollback.completed' });
    const result = this.#result('ROLLED_BACK', { containerId });
    await this.#entry.finish(result);
    this.#deps.emit('rollback.completed', { restoredContainerId: containerId, durationMs: this.#timings.rollback });
    this.#log.info({ timings: this.#timings }, 'rollback to a retained release completed');
    return result;
  }

  /** What ran before the rollback runs again; the record ends FAILED, with why, and throws. */
  async #fail(error: FerryError, found: Found): Promise<never> {
    const { containers, images } = this.#deps;
    const manifest = this.#manifest;
    const container = found.container ?? (this.#containerId ? await failedContainer(containers, this.#containerId, this.#scrub) : undefined);
    const report: DeploymentFailure = { stage: 'ROLLING_BACK', ...(container ? { container } : {}), ...(found.health ? { health: found.health } : {}) };
    await this.#entry.note({ failure: report }).catch(() => undefined);
    let finalError = error;
    if (!this.#containerId) {
      report.restored = { outcome: 'untouched' };
    } else {
      try {
        const restored = await restorePrevious(containers, manifest.service.name, this.#containerId);
        const { proxy } = this.#deps;
        if (proxy && manifest.service.route) {
          // A start-first candidate had no request; a stop-first restore gave the old container a new port.
          if (this.#startFirst) await abandonSwitch({ containers, proxy }, manifest.service.name, { newId: this.#containerId, kept: false });
          await routeToCurrent({ containers, proxy }, manifest.service.name);
        }
        if (this.#previousTag && this.#previousTag !== manifest.image.id) await images.tag(this.#previousTag, manifest.image.ref);
        report.restored = restored ? { outcome: 'previous', containerId: restored } : { outcome: 'nothing' };
        if (!restored && error.code === 'FERRY_ERR_HEALTHCHECK_FAILED') finalError = healthCheckFailedWithoutRestore(error);
        if (!restored && error.code === 'FERRY_ERR_UNSTABLE') finalError = unstableWithoutRestore(error);
      } catch (err) {
        this.#log.error({ err }, 'putting back what ran before the rollback failed');
        report.restored = { outcome: 'failed' };
        finalError = new FerryError('FERRY_ERR_ROLLBACK_FAILED', { cause: err, details: { reason: error.message } });
      }
    }
    this.#timings.total = since(this.#started);
    const result = this.#result('FAILED', { error: { code: finalError.code, message: finalError.message }, failure: report });
    await this.#entry.finish(result);
    this.#deps.emit('deployment.failed', {
      code: finalError.code, reason: finalError.message, state: 'FAILED',
      ...(report.container ? { logs: report.container.logs } : {}), ...(report.health ? { probes: report.health.probes } : {}),
    });
    this.#log.warn({ code: finalError.code }, 'rollback to a retained release failed');
    throw failure(result);
  }

  #result(state: DeploymentState, extra: Partial<DeploymentResult>): DeploymentResult {
    const manifest = this.#manifest;
    return {
      deploymentId: manifest.deploymentId, host: this.#deps.hostId, service: manifest.service.name,
      image: manifest.image.ref, imageId: manifest.image.id, configHash: configHash(manifest),
      state, bytes: 0, timings: this.#timings, ...extra,
    };
  }
}
