import type { ReleaseOutcome, ReleaseRecord, ReleaseService, ReleaseState } from '@ferry/protocol';
import type { ServiceOutcome, TargetOutcome } from '../deploy.ts';
import type { ReleasePlan } from './plan.ts';

/** How one service went on one target, in the release's words. */
export function targetReleaseOutcome(target: TargetOutcome): ReleaseOutcome {
  if (target.rollback) return target.rollback.ok ? 'rolled-back' : 'rollback-failed';
  if (target.state === 'SKIPPED') return 'skipped';
  if (target.ok) return 'healthy';
  if (target.state === 'DELIVERING') return 'deploying';
  if (target.state === 'PENDING') return 'pending';
  return 'failed';
}

/**
 * The release as the registry projects it (ReleaseRecord), from the plan and the services'
 * outcomes as they stand: outcomes by host id — a target's URL until its receiver proved who it is.
 */
export function releaseRecord(
  plan: ReleasePlan, services: readonly ServiceOutcome[], state: ReleaseState,
  extra: {
    finishedAt?: string; error?: { code: string; message: string }; hostOf?: (url: string) => string | undefined;
    previousId?: string | undefined; rolledBackTo?: string | undefined;
    /** Host keys by wave; default one wave of every host. */
    waves?: string[][] | undefined;
  } = {},
): ReleaseRecord {
  const hostOf = (t: TargetOutcome): string => t.host ?? extra.hostOf?.(t.url) ?? t.url;
  const outcomes: Record<string, Record<string, ReleaseOutcome>> = {};
  const hosts: string[] = [];
  const planned: ReleaseService[] = [];
  for (const service of services) {
    const entry = plan.services.find((s) => s.name === service.service);
    const serviceHosts: string[] = [];
    for (const target of service.targets) {
      const host = hostOf(target);
      if (!serviceHosts.includes(host)) serviceHosts.push(host);
      if (!hosts.includes(host)) hosts.push(host);
      (outcomes[host] ??= {})[service.service] = targetReleaseOutcome(target);
    }
    planned.push({
      name: service.service, image: service.image, imageId: service.imageId ?? '', ...(service.configHash ? { configHash: service.configHash } : {}),
      phase: entry?.phase ?? 0, dependsOn: entry?.dependsOn ?? [], hosts: serviceHosts,
    });
  }
  return {
    id: plan.id, createdAt: plan.createdAt, project: plan.project, state,
    phases: plan.phases.map((p) => p.name), services: planned,
    waves: extra.waves ?? (hosts.length > 0 ? [hosts] : []),
    outcomes,
    ...(extra.previousId ? { previousId: extra.previousId } : {}),
    ...(extra.rolledBackTo ? { rolledBackTo: extra.rolledBackTo } : {}),
    ...(extra.finishedAt ? { finishedAt: extra.finishedAt } : {}),
    ...(extra.error ? { error: extra.error } : {}),
  };
}

/** The outcomes of some services only (a phase's), on some hosts only (a wave's), by host. */
export function outcomesOf(record: ReleaseRecord, services?: readonly string[], hosts?: readonly string[]): Record<string, Record<string, ReleaseOutcome>> {
  const out: Record<string, Record<string, ReleaseOutcome>> = {};
  for (const [host, byService] of Object.entries(record.outcomes)) {
    if (hosts && !hosts.includes(host)) continue;
    for (const [service, outcome] of Object.entries(byService)) {
      if (!services || services.includes(service)) (out[host] ??= {})[service] = outcome;
    }
  }
  return out;
}
