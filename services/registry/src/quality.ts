import type { DeploymentSummary } from './view.ts';

/** Deployments per service the figures look at unless asked otherwise. */
export const DEFAULT_QUALITY_WINDOW = 50;
export const MAX_QUALITY_WINDOW = 1000;

/**
 * How a service's deployments went, over its last `window` deployments on any host (docs/registry.md
 * "Quality"). Rates are fractions from 0 to 1, null when there is nothing to divide by.
 */
export interface ServiceQuality {
  service: string;
  /** The deployments looked at (at most the window): every one the event stream told of. */
  deployments: number;
  /** Of those, the ones that ended: succeeded, failed, rolled back. */
  finished: number;
  succeeded: number;
  /** succeeded / finished. */
  successRate: number | null;
  /** Of the succeeded ones: the receiver's total time (deployment.completed `timings.total`), nearest rank. */
  p50DurationMs: number | null;
  p95DurationMs: number | null;
  /** Rollbacks a receiver carried out (after a failed health check, by hand, or for a whole release). */
  rollbacks: number;
  /** Of those, the ones that brought a container back (rollback.completed named the restored one). */
  rollbacksRestored: number;
  /** rollbacksRestored / rollbacks. */
  rollbackEffectiveness: number | null;
}

/** The figures of every service (or of `service`) from the projection's deployments, by service name. */
export function serviceQuality(deployments: Iterable<DeploymentSummary>, options: { window: number; service?: string }): ServiceQuality[] {
  const byService = new Map<string, DeploymentSummary[]>();
  for (const d of deployments) {
    if (options.service !== undefined && d.service !== options.service) continue;
    const list = byService.get(d.service);
    if (list) list.push(d);
    else byService.set(d.service, [d]);
  }
  return [...byService.keys()].sort().map((service) => {
    const newest = (byService.get(service) ?? [])
      .sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : 0))
      .slice(0, options.window);
    const finished = newest.filter((d) => d.state !== 'running');
    const succeeded = finished.filter((d) => d.state === 'succeeded');
    const durations = succeeded.map(durationOf).filter((ms): ms is number => ms !== undefined).sort((a, b) => a - b);
    const rollbacks = newest.filter((d) => d.rollback !== undefined);
    const restored = rollbacks.filter((d) => d.rollback?.restored === true);
    return {
      service,
      deployments: newest.length,
      finished: finished.length,
      succeeded: succeeded.length,
      successRate: ratio(succeeded.length, finished.length),
      p50DurationMs: percentile(durations, 50),
      p95DurationMs: percentile(durations, 95),
      rollbacks: rollbacks.length,
      rollbacksRestored: restored.length,
      rollbackEffectiveness: ratio(restored.length, rollbacks.length),
    };
  });
}

function durationOf(d: DeploymentSummary): number | undefined {
  if (d.durationMs !== undefined) return d.durationMs;
  if (d.finishedAt === undefined) return undefined;
  const ms = Date.parse(d.finishedAt) - Date.parse(d.startedAt);
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}

function ratio(part: number, whole: number): number | null {
  return whole === 0 ? null : Math.round((part / whole) * 10_000) / 10_000;
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1] ?? null;
}
