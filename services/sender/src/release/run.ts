import { randomUUID } from 'node:crypto';
import { ReleaseEvents, keySigner } from '@ferry/events';
import { FerryError, isFerryError, type ReleaseRecord, type ReleaseState } from '@ferry/protocol';
import type { DeployDeps, DeployOptions, DeploymentOutcome, ServiceOutcome } from '../deploy.ts';
import { DEFAULT_PARALLEL } from '../fanout.ts';
import { ReceiverClient } from '../receiver-client.ts';
import { resolveTargets, type ResolvedTarget } from '../targets.ts';
import { refuseOverBudget } from './budget.ts';
import { eachLimited } from './limit.ts';
import type { ReleasePlan } from './plan.ts';
import { newestOf, previousReleases, type HostServices, type PreviousReleases } from './previous.ts';
import { outcomesOf, releaseRecord } from './record.ts';
import { rollbackRelease, type RollbackTarget } from './rollback.ts';
import { deployService, failService } from './service.ts';

/** The steps of a release as they happen, for a live view (`ferry deploy`). */
export type ReleaseStep =
  | { kind: 'planned'; record: ReleaseRecord }
  | { kind: 'phase'; index: number; name: string; services: string[]; state: 'started' | 'completed' | 'failed' | 'skipped' }
  | { kind: 'rollback-started'; hosts: string[]; to?: string }
  | { kind: 'rolled-back'; service: string; host: string; url: string; ok: boolean; error?: { code: string; message: string } }
  | { kind: 'finished'; record: ReleaseRecord };

/** Why a release stopped: the phase, the services that failed in it, and the error the release ends with. */
interface Halt {
  phase: number;
  failed: string[];
  error: FerryError;
  /** Stopped from outside (the signal): nothing is rolled back by itself then. */
  interrupted: boolean;
}

/**
 * Runs a release: phase after phase, the services of a phase at once (at most `parallel`), each
 * built only when its phase starts; a phase starts when every service of the one before deployed
 * on every host it went to — a receiver answers a deployment once its container runs and its
 * health check passed, which is `healthy`, and `started` is waited for the same way. A phase that
 * fails halts the release (FERRY_ERR_RELEASE_HALTED): the later phases are neither built nor
 * deployed, and unless `rollback: false` every service it deployed is rolled back on every host,
 * the last phase first. Every manifest names the release (id, phase, phases), under the
 * signature. Release events tell each step. Never throws for a service's failure.
 */
export async function runRelease(plan: ReleasePlan, deps: DeployDeps, options: DeployOptions): Promise<DeploymentOutcome> {
  const runId = options.runId ?? randomUUID();
  const parallel = options.parallel ?? DEFAULT_PARALLEL;
  const started = performance.now();
  const outcomes: ServiceOutcome[] = plan.services.map(({ name, entry, phase }) => ({
    service: name, image: entry.image, state: 'pending', ok: false, phase: plan.phases[phase]?.name ?? '',
    targets: entry.targets.map((url) => ({ url, state: 'PENDING', ok: false })),
  }));
  const outcomeOf = (name: string): ServiceOutcome | undefined => outcomes.find((o) => o.service === name);
  const hosts = new Map<string, string>();
  let previous: PreviousReleases = {};
  const record = (state: ReleaseState, extra: { finishedAt?: string; error?: { code: string; message: string }; rolledBackTo?: string | undefined } = {}): ReleaseRecord =>
    releaseRecord(plan, outcomes, state, { ...extra, hostOf: (url) => hosts.get(url), previousId: newestOf(previous) });
  const events = new ReleaseEvents({
    sink: deps.events, source: deps.source, releaseId: plan.id, project: plan.project,
    signer: keySigner(deps.credentials.keyId, deps.credentials.privateKey), grant: deps.credentials.grant,
  });
  let halt: Halt | undefined;

  // Every target of every service, before anything is built or sent: a release knows its hosts.
  const resolved = new Map<string, ResolvedTarget[]>();
  const unresolved: Array<{ name: string; phase: number }> = [];
  await eachLimited(plan.services, parallel, async ({ name, entry, phase }) => {
    const outcome = outcomeOf(name);
    if (!outcome) return;
    try {
      const targets = await resolveTargets(entry.targets, { registryUrl: deps.registryUrl, credentials: deps.credentials });
      resolved.set(name, targets);
      outcome.targets = targets.map((t) => ({ url: t.url, ...(t.host ? { host: t.host } : {}), state: 'PENDING', ok: false }));
    } catch (err) {
      failService(outcome, err, deps);
      unresolved.push({ name, phase });
    }
  });
  if (unresolved.length > 0) {
    // Nothing is deployed of a release whose hosts are not all known.
    const phase = Math.min(...unresolved.map((u) => u.phase));
    const failed = plan.services.filter((s) => unresolved.some((u) => u.name === s.name)).map((s) => s.name);
    halt = { phase, failed, error: halted(plan, -1, failed, 'could not be resolved to receivers: nothing deployed'), interrupted: false };
  }
  await learnHosts([...resolved.values()].flat(), hosts, parallel);
  await learnImageIds(plan, outcomes, deps);
  for (const outcome of outcomes) {
    for (const t of outcome.targets) {
      const host = hosts.get(t.url);
      if (host && !t.host) t.host = host;
    }
  }
  // What each host runs now, so that a halt goes back to exactly that.
  if (!halt) previous = await previousReleases(hostServices(plan, resolved, hosts), deps.credentials, parallel);
  // Before anything is built or sent: a release that would overcommit a host's budget is refused.
  if (!halt) halt = await refuseOverBudget(plan, hostServices(plan, resolved, hosts), outcomes, deps, parallel);
  const planned = record('in-progress');
  deps.onRelease?.({ kind: 'planned', record: planned });
  events.publish('release.started', {
    phases: planned.phases, services: planned.services, waves: planned.waves, ...(planned.previousId ? { previousId: planned.previousId } : {}),
  });

  for (const [index, phase] of plan.phases.entries()) {
    const services = plan.services.filter((s) => s.phase === index);
    if (halt) {
      for (const { name } of services) skip(outcomeOf(name), deps);
      deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'skipped' });
      continue;
    }
    if (options.signal?.aborted) {
      for (const { name } of services) {
        const outcome = outcomeOf(name);
        if (outcome) failService(outcome, new FerryError('FERRY_ERR_SENDER_INTERRUPTED', { message: 'The sender stopped before this service was deployed' }), deps);
      }
      halt = { phase: index, failed: phase.services, error: new FerryError('FERRY_ERR_SENDER_INTERRUPTED', { message: `The sender stopped before phase ${phase.name} of release ${plan.id}`, details: { releaseId: plan.id, phase: index } }), interrupted: true };
      deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'failed' });
      continue;
    }
    const phaseStarted = performance.now();
    deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'started' });
    const ref = { id: plan.id, phase: index, phases: plan.phases.length };
    await eachLimited(services, parallel, async ({ name, entry }) => {
      const outcome = outcomeOf(name);
      if (!outcome) return;
      await deployService(name, entry, resolved.get(name) ?? [], ref, outcome, runId, deps, options).catch((err: unknown) => failService(outcome, err, deps));
      for (const t of outcome.targets) if (t.host) hosts.set(t.url, t.host);
    });
    const failed = services.filter(({ name }) => outcomeOf(name)?.ok !== true).map((s) => s.name);
    if (failed.length > 0) {
      halt = { phase: index, failed, error: halted(plan, index, failed), interrupted: false };
      deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'failed' });
      continue;
    }
    deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'completed' });
    events.publish('release.phase.completed', {
      phase: index, name: phase.name, outcomes: outcomesOf(record('in-progress'), phase.services), durationMs: Math.round(performance.now() - phaseStarted),
    });
  }

  if (!halt) {
    const done = record('completed', { finishedAt: new Date().toISOString() });
    events.publish('release.completed', { outcomes: done.outcomes, durationMs: Math.round(performance.now() - started) });
    deps.onRelease?.({ kind: 'finished', record: done });
    return { runId, ok: true, services: outcomes, release: done };
  }

  const error = { code: halt.error.code, message: halt.error.message };
  const deployed: RollbackTarget[] = [];
  for (const planned of plan.services) {
    const service = outcomeOf(planned.name);
    if (!service) continue;
    for (const target of service.targets) {
      const found = resolved.get(planned.name)?.find((t) => t.url === target.url);
      const toRelease = target.host ? previous[target.host]?.[planned.name] : undefined;
      if (target.ok && found) deployed.push({ service, target, resolved: found, phase: planned.phase, toRelease });
    }
  }
  const rollback = options.rollback !== false && !halt.interrupted && deployed.length > 0;
  const failedService = halt.failed[0];
  const failedHost = outcomeOf(failedService ?? '')?.targets.find((t) => !t.ok);
  events.publish('release.failed', {
    error, phase: halt.phase,
    ...(failedService ? { failedService } : {}), ...(failedHost ? { failedHost: failedHost.host ?? failedHost.url } : {}),
    outcomes: record('failed').outcomes, rollback,
  });
  if (!rollback) {
    const final = record('failed', { finishedAt: new Date().toISOString(), error });
    deps.onRelease?.({ kind: 'finished', record: final });
    return { runId, ok: false, services: outcomes, release: final };
  }

  const rollbackStarted = performance.now();
  const touched = [...new Set(deployed.map((d) => d.target.host ?? d.target.url))];
  const to = sameRelease(deployed.map((d) => d.toRelease));
  deps.onRelease?.({ kind: 'rollback-started', hosts: touched, ...(to ? { to } : {}) });
  events.publish('release.rollback.started', { reason: error.message, hosts: touched, ...(to ? { to } : {}) });
  await rollbackRelease(deployed, deps, options, (item) => {
    const result = item.target.rollback;
    deps.onRelease?.({
      kind: 'rolled-back', service: item.service.service, host: item.target.host ?? item.target.url, url: item.target.url, ok: result?.ok === true,
      ...(result?.error ? { error: result.error } : {}),
    });
    deps.onUpdate?.(item.service);
  });
  for (const service of outcomes) {
    const back = service.targets.filter((t) => t.rollback);
    if (back.length > 0 && back.every((t) => t.rollback?.ok) && service.targets.every((t) => t.rollback || !t.ok)) {
      service.state = 'rolled-back';
      service.ok = false;
      deps.onUpdate?.(service);
    }
  }
  const notBack = deployed.filter((d) => d.target.rollback?.ok !== true);
  const rollbackError = notBack.length === 0 ? undefined : {
    code: 'FERRY_ERR_ROLLBACK_FAILED' as const,
    message: `Not rolled back: ${notBack.map((d) => `${d.service.service} on ${d.target.host ?? d.target.url} (${d.target.rollback?.error?.message ?? 'no answer'})`).join('; ')}`,
  };
  // Named only when every host went back to that one release.
  const rolledBackTo = rollbackError ? undefined : sameRelease(deployed.map((d) => d.target.rollback?.toRelease));
  const final = record(rollbackError ? 'failed' : 'rolled-back', { finishedAt: new Date().toISOString(), error, rolledBackTo });
  events.publish('release.rolled_back', {
    outcomes: outcomesOf(final, [...new Set(deployed.map((d) => d.service.service))]), durationMs: Math.round(performance.now() - rollbackStarted),
    ...(rolledBackTo ? { rolledBackTo } : {}), ...(rollbackError ? { error: rollbackError } : {}),
  });
  deps.onRelease?.({ kind: 'finished', record: final });
  return { runId, ok: false, services: outcomes, release: final };
}

/** FERRY_ERR_RELEASE_HALTED for a failure in phase `phase` (-1: before the first). */
function halted(plan: ReleasePlan, phase: number, failed: string[], why = 'failed'): FerryError {
  const where = phase < 0 ? 'before its first phase' : `in phase ${plan.phases[phase]?.name ?? phase}`;
  const later = plan.phases.slice(phase + 1).map((p) => p.name);
  return new FerryError('FERRY_ERR_RELEASE_HALTED', {
    message: `Release ${plan.id} halted ${where}: ${failed.join(', ')} ${why}${phase >= 0 && later.length > 0 ? `; not deployed: ${later.join(', ')}` : ''}`,
    details: { releaseId: plan.id, ...(phase >= 0 ? { phase } : {}), failed },
  });
}

/** The one release every item names, if they all name the same. */
function sameRelease(ids: ReadonlyArray<string | undefined>): string | undefined {
  const first = ids[0];
  return first !== undefined && ids.every((id) => id === first) ? first : undefined;
}

/** Each host the release knows by id, with the services it deploys there. */
function hostServices(plan: ReleasePlan, resolved: ReadonlyMap<string, ResolvedTarget[]>, hosts: ReadonlyMap<string, string>): HostServices[] {
  const byHost = new Map<string, HostServices>();
  for (const { name } of plan.services) {
    for (const t of resolved.get(name) ?? []) {
      const host = t.host ?? hosts.get(t.url);
      if (!host) continue;
      const entry = byHost.get(host) ?? { url: t.url, host, hostKey: t.hostKey, services: [] };
      if (!entry.services.includes(name)) entry.services.push(name);
      byHost.set(host, entry);
    }
  }
  return [...byHost.values()];
}

function skip(outcome: ServiceOutcome | undefined, deps: DeployDeps): void {
  if (!outcome || outcome.state === 'failed') return;
  outcome.state = 'skipped';
  outcome.ok = false;
  outcome.targets = outcome.targets.map((t) => ({ ...t, state: 'SKIPPED', ok: false }));
  deps.onUpdate?.(outcome);
}

/**
 * The host id of each receiver, asked of it (its signed identity) before the release starts, so
 * that outcomes are by host from the first event on. A receiver that does not answer now is
 * named by its URL until its phase reaches it; its delivery then retries as any push does.
 */
async function learnHosts(targets: ResolvedTarget[], hosts: Map<string, string>, parallel: number): Promise<void> {
  const unknown = [...new Map(targets.map((t) => [t.url, t])).values()];
  for (const t of unknown) if (t.host) hosts.set(t.url, t.host);
  await eachLimited(unknown.filter((t) => !t.host), parallel, async (t) => {
    try {
      hosts.set(t.url, await new ReceiverClient({ url: t.url, ...(t.hostKey ? { hostKey: t.hostKey } : {}) }).identify());
    } catch (err) {
      if (!isFerryError(err)) throw err;
    }
  });
}

/** The image id of each service that is not built, for the plan (a built one's is known once its phase builds it). */
async function learnImageIds(plan: ReleasePlan, outcomes: ServiceOutcome[], deps: DeployDeps): Promise<void> {
  for (const { name, entry } of plan.services) {
    const outcome = outcomes.find((o) => o.service === name);
    if (!outcome || entry.build) continue;
    const info = await deps.images.inspect(entry.image).catch(() => undefined);
    if (info) outcome.imageId = info.id;
  }
}
