import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream';
import { rm } from 'node:fs/promises';
import { createDecompressor } from '@ferry/compress';
import type { ContainerRunner, ImageStore } from '@ferry/docker';
import { createEvent, type EventData, type EventSink } from '@ferry/events';
import type { Logger } from '@ferry/log';
import {
  FerryError, LABELS,
  type DeploymentResult, type DeploymentState, type EventType, type Manifest, type ProbeResult, type StageTimings,
} from '@ferry/protocol';
import { waitHealthy } from './health.ts';
import { replaceContainer, restorePrevious } from './swap.ts';

export interface VerifiedPackage {
  manifest: Manifest;
  path: string;
  bytes: number;
  /** Time spent receiving and hashing, reported as the receive stage. */
  durationMs: number;
}

export interface DeployerDeps {
  images: ImageStore;
  containers: ContainerRunner;
  events: EventSink;
  hostId: string;
  logger: Logger;
}

/** Results kept for idempotent retries until the on-disk journal takes over this job. */
const REMEMBERED_RESULTS = 1000;

/**
 * Turns a verified package into a running service: load, check, tag, swap, health-check, and
 * roll back on failure, publishing an event at every step under the manifest's deployment id.
 */
export class Deployer {
  readonly #deps: DeployerDeps;
  readonly #busy = new Set<string>();
  readonly #results = new Map<string, DeploymentResult>();

  constructor(deps: DeployerDeps) {
    this.#deps = deps;
  }


  /** Publishes the failure of an upload refused before deploying (bad digest, bad size…). */
  rejected(manifest: Manifest, error: FerryError): void {
    this.#emit(manifest, 'deployment.failed', {
      code: error.code, reason: error.message, state: 'FAILED',
    });
  }

  /**
   * Deploys a verified package, which it owns from here: the spool file is gone when this returns.
   * A known deployment id gets its stored outcome back instead of a second deployment, so a
   * sender that retries after a lost answer never deploys twice.
   */
  async deploy(pkg: VerifiedPackage): Promise<DeploymentResult> {
    const { manifest } = pkg;
    const service = manifest.service.name;
    const stored = this.#results.get(manifest.deploymentId);
    if (stored || this.#busy.has(service)) {
      await rm(pkg.path, { force: true });
      if (stored?.error) throw failure(stored);
      if (stored) return stored;
      throw new FerryError('FERRY_ERR_DEPLOYMENT_IN_PROGRESS', { details: { service } });
    }
    this.#busy.add(service);
    try {
      const result = await new Run(this.#deps, pkg, (type, data) => this.#emit(manifest, type, data)).execute();
      this.#remember(result);
      if (result.error) throw failure(result);
      return result;
    } finally {
      this.#busy.delete(service);
      await rm(pkg.path, { force: true });
    }
  }

  #remember(result: DeploymentResult): void {
    this.#results.set(result.deploymentId, result);
    if (this.#results.size > REMEMBERED_RESULTS) {
      const oldest = this.#results.keys().next().value;
      if (oldest !== undefined) this.#results.delete(oldest);
    }
  }

  #emit<T extends EventType>(manifest: Manifest, type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image'>): void {
    const full = {
      deploymentId: manifest.deploymentId, host: this.#deps.hostId, service: manifest.service.name,
      image: manifest.image.ref, imageId: manifest.image.id, ...data,
    } as unknown as EventData[T];
    this.#deps.events.publish(createEvent(type, {
      source: `ferry://receiver/${this.#deps.hostId}`, host: this.#deps.hostId, service: manifest.service.name,
      deploymentId: manifest.deploymentId, data: full,
    }));
  }
}

type Emit = <T extends EventType>(type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image'>) => void;

/** One deployment's walk through the states; a class so each step reads as one method. */
class Run {
  readonly #deps: DeployerDeps;
  readonly #pkg: VerifiedPackage;
  readonly #emit: Emit;
  readonly #log: Logger;
  readonly #timings: StageTimings = {};
  readonly #started = performance.now();
  #state: DeploymentState = 'VERIFYING';
  #containerId: string | undefined;

  constructor(deps: DeployerDeps, pkg: VerifiedPackage, emit: Emit) {
    this.#deps = deps;
    this.#pkg = pkg;
    this.#emit = emit;
    this.#log = deps.logger.child({ deploymentId: pkg.manifest.deploymentId, service: pkg.manifest.service.name });
    this.#timings.receive = Math.round(pkg.durationMs);
  }

  get #manifest(): Manifest {
    return this.#pkg.manifest;
  }

  async execute(): Promise<DeploymentResult> {
    const manifest = this.#manifest;
    this.#emit('package.verified', { digest: manifest.package.digest, bytes: this.#pkg.bytes, durationMs: this.#timings.receive ?? 0 });
    let previousTagTarget: string | undefined;
    try {
      await this.#load();
      previousTagTarget = (await this.#deps.images.inspect(manifest.image.ref))?.id;
      await this.#deps.images.tag(manifest.image.id, manifest.image.ref);
      await this.#start();
    } catch (err) {
      return this.#fail(asFerryError(err), previousTagTarget);
    }
    const health = await this.#validate();
    if (!health.ok) return this.#fail(health.error, previousTagTarget, health.logs, health.probes);
    this.#state = 'COMPLETED';
    this.#timings.total = this.#elapsed();
    this.#emit('deployment.completed', { timings: this.#timings });
    this.#log.info({ timings: this.#timings }, 'deployment completed');
    return this.#result();
  }

  async #load(): Promise<void> {
    const manifest = this.#manifest;
    this.#state = 'LOADING';
    const started = performance.now();
    const existed = (await this.#deps.images.inspect(manifest.image.id)) !== undefined;
    // pipeline() rather than pipe(): a read or decompression error must reach the load as an error.
    const archive = pipeline(createReadStream(this.#pkg.path), createDecompressor(manifest.package.compression), () => undefined);
    const loaded = await this.#deps.images.load(archive);
    const image = await this.#deps.images.inspect(manifest.image.id);
    const sameLayers = image !== undefined && image.diffIds.length === manifest.image.diffIds.length
      && image.diffIds.every((id, i) => id === manifest.image.diffIds[i]);
    if (!loaded.imageIds.includes(manifest.image.id) || !sameLayers) {
      // An image that was not here before and is not what was signed must not stay behind.
      for (const id of loaded.imageIds) if (!existed || id !== manifest.image.id) await this.#deps.images.remove(id, { force: true }).catch(() => undefined);
      throw new FerryError('FERRY_ERR_IMAGE_MISMATCH', { details: { expected: manifest.image.id, loaded: loaded.imageIds } });
    }
    this.#timings.load = this.#since(started);
    this.#emit('image.loaded', { imageId: manifest.image.id, durationMs: this.#timings.load });
  }

  async #start(): Promise<void> {
    const manifest = this.#manifest;
    this.#state = 'DEPLOYING';
    const started = performance.now();
    const swapped = await replaceContainer(this.#deps.containers, {
      name: manifest.service.name,
      image: manifest.image.ref,
      env: manifest.service.env,
      network: manifest.service.network,
      labels: {
        [LABELS.service]: manifest.service.name,
        [LABELS.deploymentId]: manifest.deploymentId,
        [LABELS.configHash]: configHash(manifest),
        [LABELS.imageRef]: manifest.image.ref,
        [LABELS.imageId]: manifest.image.id,
      },
    }).catch((err: unknown) => {
      throw asFerryError(err, 'FERRY_ERR_CONTAINER_FAILED');
    });
    this.#containerId = swapped.containerId;
    this.#timings.deploy = this.#since(started);
    this.#emit('container.started', { containerId: swapped.containerId, durationMs: this.#timings.deploy });
  }

  async #validate(): Promise<{ ok: true } | { ok: false; error: FerryError; logs: string[]; probes: ProbeResult[] }> {
    const check = this.#manifest.service.health;
    const containerId = this.#containerId;
    if (!containerId) throw new Error('validate before start');
    this.#state = 'VALIDATING';
    const isRunning = async (): Promise<boolean> => (await this.#deps.containers.inspect(containerId))?.running ?? false;
    if (!check) {
      // Without a health check the least a deployment proves is that the process stayed up.
      if (await isRunning()) return { ok: true };
      const logs = await this.#deps.containers.logs(containerId).catch(() => []);
      return { ok: false, error: new FerryError('FERRY_ERR_CONTAINER_FAILED', { message: 'The container exited right after it started' }), logs, probes: [] };
    }
    const outcome = await waitHealthy(check, { isRunning });
    this.#timings.health = outcome.durationMs;
    if (outcome.ok) {
      this.#emit('healthcheck.passed', { attempts: outcome.attempts, durationMs: outcome.durationMs });
      return { ok: true };
    }
    const logs = await this.#deps.containers.logs(containerId).catch(() => []);
    const reason = outcome.reason ?? 'health check failed';
    this.#emit('healthcheck.failed', { reason, probes: outcome.probes, logs });
    return { ok: false, error: new FerryError('FERRY_ERR_HEALTHCHECK_FAILED', { message: `Health check failed: ${reason}; the previous version was restored` }), logs, probes: outcome.probes };
  }

  async #fail(error: FerryError, previousTagTarget: string | undefined, logs?: string[], probes?: ProbeResult[]): Promise<DeploymentResult> {
    const manifest = this.#manifest;
    let finalError = error;
    if (this.#state === 'DEPLOYING' || this.#state === 'VALIDATING') {
      this.#state = 'ROLLING_BACK';
      const started = performance.now();
      this.#emit('rollback.started', { reason: error.message });
      try {
        const restored = await restorePrevious(this.#deps.containers, manifest.service.name, this.#containerId);
        if (previousTagTarget && previousTagTarget !== manifest.image.id) await this.#deps.images.tag(previousTagTarget, manifest.image.ref);
        this.#timings.rollback = this.#since(started);
        this.#emit('rollback.completed', { ...(restored ? { restoredContainerId: restored } : {}), durationMs: this.#timings.rollback });
        this.#state = restored ? 'ROLLED_BACK' : 'FAILED';
        if (!restored && error.code === 'FERRY_ERR_HEALTHCHECK_FAILED') {
          finalError = new FerryError('FERRY_ERR_HEALTHCHECK_FAILED', { message: 'Health check failed; there was no previous version to restore' });
        }
      } catch (err) {
        this.#log.error({ err }, 'rollback failed');
        this.#state = 'FAILED';
        finalError = new FerryError('FERRY_ERR_ROLLBACK_FAILED', { cause: err, details: { reason: error.message } });
      }
    } else {
      this.#state = 'FAILED';
    }
    this.#timings.total = this.#elapsed();
    this.#emit('deployment.failed', {
      code: finalError.code, reason: finalError.message, state: this.#state,
      ...(logs ? { logs } : {}), ...(probes ? { probes } : {}),
    });
    this.#log.warn({ code: finalError.code, state: this.#state }, 'deployment failed');
    return this.#result(finalError, { ...(probes ? { probes } : {}), ...(logs ? { logs } : {}) });
  }

  #result(error?: FerryError, details?: Record<string, unknown>): DeploymentResult {
    const manifest = this.#manifest;
    return {
      deploymentId: manifest.deploymentId,
      host: this.#deps.hostId,
      service: manifest.service.name,
      image: manifest.image.ref,
      imageId: manifest.image.id,
      state: this.#state,
      ...(this.#containerId && this.#state === 'COMPLETED' ? { containerId: this.#containerId } : {}),
      bytes: this.#pkg.bytes,
      timings: this.#timings,
      ...(error ? { error: { code: error.code, message: error.message, ...(details ? { details } : {}) } } : {}),
    };
  }

  #since(started: number): number {
    return Math.round(performance.now() - started);
  }

  #elapsed(): number {
    return Math.round((this.#timings.receive ?? 0) + performance.now() - this.#started);
  }
}

/** A failed deployment answers with its error code and status, and the whole record as details. */
function failure(result: DeploymentResult): FerryError {
  const code = result.error?.code ?? 'FERRY_ERR_INTERNAL';
  return new FerryError(code, { message: result.error?.message, details: { deployment: result } });
}

function asFerryError(err: unknown, fallback: 'FERRY_ERR_INTERNAL' | 'FERRY_ERR_CONTAINER_FAILED' = 'FERRY_ERR_INTERNAL'): FerryError {
  return err instanceof FerryError ? err : new FerryError(fallback, { cause: err });
}

/**
 * What the container was asked to be, hashed: the same hash later means the same config, which is
 * how drift is told apart from a legitimate redeploy.
 */
export function configHash(manifest: Manifest): string {
  const env = Object.fromEntries(Object.entries(manifest.service.env).sort(([a], [b]) => a.localeCompare(b)));
  const canonical = JSON.stringify({
    image: manifest.image.ref, imageId: manifest.image.id, env, network: manifest.service.network,
    health: manifest.service.health ?? null,
  });
  return `sha256:${createHash('sha256').update(canonical).digest('hex')}`;
}
