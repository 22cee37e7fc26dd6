import type { ContainerRunner } from '@ferry/docker';
import type { EventData } from '@ferry/events';
import { FerryError, type DeploymentFailure, type EventType, type HealthCheck, type HealthCheckProgress, type ServiceSpec } from '@ferry/protocol';
import { failedContainer, healthReport, stillUp, type Scrubber } from './failure.ts';
import { healthCheckFailed, healthFailureReason, unstable, waitHealthy, type HealthOutcome } from './health.ts';
import { DEFAULT_STABILITY_WINDOW_MS, watchStable } from './stability.ts';

/** What a failed step found out: the health check's answers, the container as it ended. */
export type Found = Partial<Pick<DeploymentFailure, 'container' | 'health'>>;

/** Publishes one of the deployment's events; the correlation fields are the caller's. */
export type Emit = <T extends EventType>(type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image'>) => void;

export type Verdict = { ok: true; healthMs: number } | { ok: false; error: FerryError; found: Found; healthMs: number };

export interface VerdictDeps {
  containers: ContainerRunner;
  /** FERRY_STABILITY_WINDOW_MS; the default when absent. */
  stabilityWindowMs?: number;
  scrub: Scrubber;
  emit: Emit;
  /** Told of the check's progress as each probe answers (journalled, best effort). */
  progress?: (progress: HealthCheckProgress) => Promise<void>;
}

/**
 * The verdict on a new container: its check (if the manifest has one) must pass, then the
 * container must stay up through the stability window (stability.ts), or what passed the check
 * may have been another process. `healthMs` covers both. A failure publishes healthcheck.failed
 * (with a check) and returns the container as it ended and the probes kept.
 */
export async function verdict(manifest: { service: Pick<ServiceSpec, 'health' | 'network' | 'ports' | 'route'> }, containerId: string, deps: VerdictDeps): Promise<Verdict> {
  const check = manifest.service.health;
  const inspect = (): ReturnType<ContainerRunner['inspect']> => deps.containers.inspect(containerId);
  const isRunning = async (): Promise<boolean> => stillUp(await inspect());
  let outcome: HealthOutcome | undefined;
  if (!check) {
    // Without a health check the least a deployment proves is that the process stayed up.
    if (!(await isRunning())) return { ok: false, error: new FerryError('FERRY_ERR_CONTAINER_FAILED', { message: 'The container exited right after it started' }), found: {}, healthMs: 0 };
  } else {
    outcome = await waitHealthy(check, {
      isRunning, dockerHealth: async () => (await inspect())?.health,
      onProbe: (attempts, probe) => deps.progress?.({ attempts, retries: check.retries, lastOk: probe.ok }).catch(() => undefined) ?? Promise.resolve(),
    });
    if (!outcome.ok) return failed(deps, containerId, check, outcome, healthFailureReason(outcome, manifest.service), healthCheckFailed, outcome.durationMs);
  }
  const stable = await watchStable(deps.stabilityWindowMs ?? DEFAULT_STABILITY_WINDOW_MS, { inspect, after: check ? 'its check passed' : 'it started' });
  const healthMs = (outcome?.durationMs ?? 0) + stable.durationMs;
  if (!stable.ok) return failed(deps, containerId, check, outcome, stable.reason, unstable, healthMs);
  if (outcome) deps.emit('healthcheck.passed', { attempts: outcome.attempts, durationMs: outcome.durationMs });
  return { ok: true, healthMs };
}

/** A failed verdict: the container as it ended and the probes kept, published and returned. */
async function failed(
  deps: VerdictDeps, containerId: string, check: HealthCheck | undefined, outcome: HealthOutcome | undefined,
  reason: string, error: (reason: string) => FerryError, healthMs: number,
): Promise<Verdict> {
  const health = check && outcome ? healthReport(check.type, outcome.attempts, outcome.probes, deps.scrub) : undefined;
  const container = await failedContainer(deps.containers, containerId, deps.scrub);
  if (health) deps.emit('healthcheck.failed', { reason, probes: health.probes, logs: container?.logs ?? [] });
  return { ok: false, error: error(reason), found: { ...(health ? { health } : {}), ...(container ? { container } : {}) }, healthMs };
}
