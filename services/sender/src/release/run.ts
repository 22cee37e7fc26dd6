import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type { ReleaseEvents } from '@ferry/events';
import { FerryError, isFerryError, type ReleaseRecord, type ReleaseRef, type ReleaseState } from '@ferry/protocol';
import type { DeployDeps, DeployOptions, DeploymentOutcome, ServiceOutcome } from '../deploy.ts';
import { allowedUnhealthy } from '../deployfile/index.ts';
import { DEFAULT_PARALLEL } from '../fanout.ts';
import { ReceiverClient } from '../receiver-client.ts';
import { resolveTargets, type ResolvedTarget } from '../targets.ts';
import { receiverCapacity, refuseOverBudget, refuseToGoOnOverBudget } from './budget.ts';
import { releaseEventsOf } from './events.ts';
import { eachLimited } from './limit.ts';
import { planDigest, type PausedRelease } from './paused.ts';
import type { ReleasePlan } from './plan.ts';
import { newestOf, previousReleases, type HostServices, type PreviousReleases } from './previous.ts';
import { outcomesOf, releaseRecord } from './record.ts';
import { rollbackRelease, type RollbackTarget } from './rollback.ts';
import { deployService, failService, settle, skipTargets } from './service.ts';
import { planWaves, type Wave } from './waves.ts';

/** The steps of a release as they happen, for a live view (`ferry deploy`). */
export type ReleaseStep =
  | { kind: 'planned'; record: ReleaseRecord; waves: Array<{ name: string; hosts: string[] }>; resumed?: { wave: number } }
  | { kind: 'wave'; index: number; name: string; hosts: string[]; state: 'started' | 'completed' | 'failed' | 'skipped'; unhealthy?: string[]; allowed?: number }
  | { kind: 'phase'; index: number; name: string; services: string[]; state: 'started' | 'completed' | 'failed' | 'skipped'; wave?: { index: number; name: string } }
  | { kind: 'paused'; wave: number; name: string; until?: string }
  | { kind: 'rollback-started'; hosts: string[]; to?: string }
  | { kind: 'rolled-back'; service: string; host: string; url: string; ok: boolean; error?: { code: string; message: string } }
  | { kind: 'finished'; record: ReleaseRecord };

/** Why a release stopped: the phase and wave, the services that failed there, and the error the release ends with. */
interface Halt {
  phase: number;
  wave?: number;
  failed: string[];
  error: FerryError;
  /** Stopped from outside (the signal): nothing is rolled back by itself then. */
  interrupted: boolean;
}

/** Everything a release carries from step to step, and from a pause to its `continue`. */
interface Run {
  plan: ReleasePlan;
  runId: string;
  startedAt: string;
  outcomes: ServiceOutcome[];
  resolved: Map<string, ResolvedTarget[]>;
  /** Host id by receiver URL, once proven. */
  hosts: Map<string, string>;
  previous: PreviousReleases;
  waves: Wave[];
  nextWave: number;
}

/**
 * Runs a release: wave after wave of hosts (`rollout:`; without it one wave of every host), and in
 * each wave phase after phase, the services of a phase at once (at most `parallel`), each built
 * only when its phase first starts. A phase starts when every service of the one before deployed
 * on every host of the wave it went to — a receiver answers a deployment once its container runs
 * and its health check passed, which is `healthy`, and `started` is waited for the same way. A
 * host where a service failed is unhealthy: the wave's later phases skip it, and once a wave has
 * more unhealthy hosts than `max_unhealthy` the release halts (FERRY_ERR_RELEASE_HALTED): nothing
 * more is built or deployed, and unless `rollback: false` every service it deployed is rolled
 * back on every host of every wave, the last phase first. After a wave, `pause` waits a time or
 * stops the release as `paused` until `continueRelease`. Every manifest names the release (id,
 * phase, phases, and the wave with a rollout), under the signature; release events tell each
 * step. Never throws for a service's failure.
 *
 * @throws FerryError FERRY_ERR_USAGE for a `pause: manual` without a place to keep the paused release.
 */
export async function runRelease(plan: ReleasePlan, deps: DeployDeps, options: DeployOptions): Promise<DeploymentOutcome> {
  if (plan.rollout?.waves.some((w) => w.pause === 'manual') && !deps.paused) {
    throw new FerryError('FERRY_ERR_USAGE', { message: 'rollout: pause: manual stops the release until "ferry release continue", which needs the state the CLI keeps; here, pause for a time instead' });
  }
  const parallel = options.parallel ?? DEFAULT_PARALLEL;
  const run: Run = {
    plan, runId: options.runId ?? randomUUID(), startedAt: new Date().toISOString(), resolved: new Map(), hosts: new Map(), previous: {}, waves: [], nextWave: 0,
    outcomes: plan.services.map(({ name, entry, phase }) => ({
      service: name, image: entry.image, state: 'pending', ok: false, phase: plan.phases[phase]?.name ?? '',
      targets: entry.targets.map((url) => ({ url, state: 'PENDING', ok: false })),
    })),
  };
  const events = releaseEvents(plan, deps);
  let halt: Halt | undefined;

  // Every target of every service, before anything is built or sent: a release knows its hosts.
  const unresolved: Array<{ name: string; phase: number }> = [];
  await eachLimited(plan.services, parallel, async ({ name, entry, phase }) => {
    const outcome = outcomeOf(run, name);
    if (!outcome) return;
    try {
      const targets = await resolveTargets(entry.targets, { registryUrl: deps.registryUrl, credentials: deps.credentials });
      run.resolved.set(name, targets);
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
  await learnHosts([...run.resolved.values()].flat(), run.hosts, parallel);
  await learnImageIds(plan, run.outcomes, deps);
  for (const outcome of run.outcomes) {
    for (const t of outcome.targets) {
      const host = run.hosts.get(t.url);
      if (host && !t.host) t.host = host;
    }
  }
  if (!halt) {
    try {
      run.waves = await planWaves(plan.rollout, releaseHosts(run), { url: deps.registryUrl, credentials: deps.credentials });
    } catch (err) {
      const error = isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err });
      halt = { phase: -1, failed: [], error, interrupted: false };
    }
  }
  // What each host runs now, so that a halt goes back to exactly that.
  if (!halt) run.previous = await previousReleases(hostServices(run), deps.credentials, parallel);
  // Before anything is built or sent: a release that would overcommit a host's budget is refused.
  if (!halt) halt = await refuseOverBudget(plan, hostServices(run), run.outcomes, deps, parallel);
  const planned = record(run, 'in-progress');
  deps.onRelease?.({ kind: 'planned', record: planned, waves: run.waves.map(({ name, hosts }) => ({ name, hosts })) });
  events.publish('release.started', {
    phases: planned.phases, services: planned.services, waves: planned.waves, ...(planned.previousId ? { previousId: planned.previousId } : {}),
  });
  return await drive(run, deps, options, events, halt);
}

/**
 * Goes on with a release paused by `pause: manual`, from the wave after the one it paused after,
 * with what it knew then: its hosts, its waves, what each host ran before, what it deployed so
 * far (all of it rolled back if a later wave halts it). The plan must be that of the document it
 * started with, and each image the one its first waves sent.
 *
 * Before it sends anything, the hosts of the waves still to go are asked for their capacity
 * again: a release that waited may meet hosts whose budget or load changed.
 *
 * @throws FerryError FERRY_ERR_USAGE when the document differs, FERRY_ERR_IMAGE_MISMATCH when an
 *   image tag moved, FERRY_ERR_OVER_BUDGET when the waves to go would overcommit a host: nothing
 *   is done then.
 */
export async function continueRelease(plan: ReleasePlan, paused: PausedRelease, deps: DeployDeps, options: DeployOptions): Promise<DeploymentOutcome> {
  if (planDigest(plan, plan.rollout) !== paused.digest) {
    throw new FerryError('FERRY_ERR_USAGE', {
      message: `Release ${paused.releaseId} paused with another deployment file (or other values for it: -e, --env-file, the environment): go on with the one it started with, or make a new release`,
    });
  }
  for (const outcome of paused.outcomes) {
    const entry = plan.services.find((s) => s.name === outcome.service)?.entry;
    if (!entry || !outcome.imageId) continue;
    const now = (await deps.images.inspect(entry.image).catch(() => undefined))?.id;
    if (now !== outcome.imageId && outcome.targets.some((t) => t.ok)) {
      throw new FerryError('FERRY_ERR_IMAGE_MISMATCH', {
        message: `${entry.image} is ${now ?? 'gone'} on the build engine now, but release ${paused.releaseId} deployed ${outcome.imageId}: tag that image again to go on, or make a new release`,
        details: { image: entry.image, expected: outcome.imageId, ...(now ? { actual: now } : {}) },
      });
    }
  }
  const run: Run = {
    plan, runId: paused.runId, startedAt: paused.startedAt, outcomes: paused.outcomes,
    resolved: new Map(Object.entries(paused.resolved)), hosts: new Map(Object.entries(paused.hosts)),
    previous: paused.previous, waves: paused.waves, nextWave: paused.nextWave,
  };
  const toGo = new Set(run.waves.slice(run.nextWave).flatMap((w) => w.hosts));
  const next = run.waves[run.nextWave];
  if (next) {
    await refuseToGoOnOverBudget(
      plan, hostServices(run).filter((h) => toGo.has(h.host)), receiverCapacity(deps), deps.onWarning, options.parallel ?? DEFAULT_PARALLEL, next.name,
    );
  }
  deps.onRelease?.({ kind: 'planned', record: record(run, 'in-progress'), waves: run.waves.map(({ name, hosts }) => ({ name, hosts })), resumed: { wave: paused.nextWave } });
  return await drive(run, deps, options, releaseEvents(plan, deps), undefined);
}

/** The waves from `run.nextWave` on, then the end: completed, paused, or halted and rolled back. */
async function drive(run: Run, deps: DeployDeps, options: DeployOptions, events: ReleaseEvents, initial: Halt | undefined): Promise<DeploymentOutcome> {
  const { plan } = run;
  const parallel = options.parallel ?? DEFAULT_PARALLEL;
  const waved = plan.rollout !== undefined;
  let halt = initial;
  if (halt) {
    // Halted before its first phase: every phase is told as skipped.
    for (const [index, phase] of plan.phases.entries()) deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'skipped' });
  }

  for (let w = run.nextWave; w < run.waves.length; w++) {
    const wave = run.waves[w];
    if (halt) {
      if (waved && halt !== initial) deps.onRelease?.({ kind: 'wave', index: w, name: wave.name, hosts: wave.hosts, state: 'skipped' });
      continue;
    }
    const waveStarted = performance.now();
    const inWave = new Set(wave.hosts);
    const unhealthy = new Set<string>();
    const allowed = plan.rollout ? allowedUnhealthy(plan.rollout.maxUnhealthy, wave.hosts.length) : 0;
    const waveRef = waved ? { index: w, name: wave.name } : undefined;
    if (waved) deps.onRelease?.({ kind: 'wave', index: w, name: wave.name, hosts: wave.hosts, state: 'started' });

    for (const [index, phase] of plan.phases.entries()) {
      const services = plan.services.filter((s) => s.phase === index);
      const work = services.map((s) => ({ name: s.name, entry: s.entry, targets: (run.resolved.get(s.name) ?? []).filter((t) => inWave.has(keyOf(run, t.url))) }));
      // A phase with nothing on this wave's hosts has nothing to do in it.
      if (work.every((x) => x.targets.length === 0)) continue;
      if (halt) {
        deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'skipped', ...(waveRef ? { wave: waveRef } : {}) });
        continue;
      }
      if (options.signal?.aborted) {
        for (const x of work) {
          const outcome = outcomeOf(run, x.name);
          if (outcome) failService(outcome, new FerryError('FERRY_ERR_SENDER_INTERRUPTED', { message: 'The sender stopped before this service was deployed' }), deps, new Set(x.targets.map((t) => t.url)));
        }
        halt = { phase: index, wave: w, failed: phase.services, error: new FerryError('FERRY_ERR_SENDER_INTERRUPTED', { message: `The sender stopped before phase ${phase.name} of release ${plan.id}`, details: { releaseId: plan.id, phase: index } }), interrupted: true };
        deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'failed', ...(waveRef ? { wave: waveRef } : {}) });
        continue;
      }
      const phaseStarted = performance.now();
      deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'started', ...(waveRef ? { wave: waveRef } : {}) });
      const ref: ReleaseRef = { id: plan.id, phase: index, phases: plan.phases.length, ...(waved ? { wave: w } : {}) };
      await eachLimited(work, parallel, async ({ name, entry, targets }) => {
        const outcome = outcomeOf(run, name);
        if (!outcome || targets.length === 0) return;
        // A host a service of an earlier phase failed on gets nothing more of this wave.
        const go = targets.filter((t) => !unhealthy.has(keyOf(run, t.url)));
        skipTargets(outcome, new Set(targets.filter((t) => !go.includes(t)).map((t) => t.url)));
        if (go.length === 0) {
          settle(outcome);
          deps.onUpdate?.(outcome);
          return;
        }
        await deployService(name, entry, go, ref, outcome, run.runId, deps, options)
          .catch((err: unknown) => failService(outcome, err, deps, new Set(go.map((t) => t.url))));
        for (const t of outcome.targets) if (t.host) run.hosts.set(t.url, t.host);
      });
      const failed: string[] = [];
      for (const x of work) {
        const outcome = outcomeOf(run, x.name);
        const urls = new Set(x.targets.map((t) => t.url));
        const bad = outcome?.targets.filter((t) => urls.has(t.url) && !t.ok && t.state !== 'SKIPPED') ?? [];
        for (const t of bad) unhealthy.add(keyOf(run, t.url));
        if (bad.length > 0) failed.push(x.name);
      }
      if (unhealthy.size > allowed) {
        halt = { phase: index, ...(waved ? { wave: w } : {}), failed, error: halted(plan, index, failed, 'failed', waved ? { wave, unhealthy: [...unhealthy], allowed, later: run.waves.slice(w + 1) } : undefined), interrupted: false };
        deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'failed', ...(waveRef ? { wave: waveRef } : {}) });
        continue;
      }
      deps.onRelease?.({ kind: 'phase', index, name: phase.name, services: phase.services, state: 'completed', ...(waveRef ? { wave: waveRef } : {}) });
      events.publish('release.phase.completed', {
        phase: index, name: phase.name, ...(waved ? { wave: w } : {}),
        outcomes: outcomesOf(record(run, 'in-progress'), phase.services, waved ? wave.hosts : undefined), durationMs: Math.round(performance.now() - phaseStarted),
      });
    }

    if (halt) {
      if (waved) deps.onRelease?.({ kind: 'wave', index: w, name: wave.name, hosts: wave.hosts, state: 'failed', unhealthy: [...unhealthy], allowed });
      continue;
    }
    if (waved) {
      deps.onRelease?.({ kind: 'wave', index: w, name: wave.name, hosts: wave.hosts, state: 'completed', unhealthy: [...unhealthy], allowed });
      events.publish('release.wave.completed', {
        wave: w, name: wave.name, hosts: wave.hosts, outcomes: outcomesOf(record(run, 'in-progress'), undefined, wave.hosts), durationMs: Math.round(performance.now() - waveStarted),
      });
    }
    const next = run.waves[w + 1];
    if (!next || !wave.pause) continue;
    if (wave.pause === 'manual') {
      run.nextWave = w + 1;
      for (const outcome of run.outcomes) settle(outcome);
      await deps.paused?.save(pausedState(run));
      events.publish('release.paused', { wave: w + 1, reason: 'continue' });
      deps.onRelease?.({ kind: 'paused', wave: w + 1, name: next.name });
      const paused = record(run, 'paused');
      deps.onRelease?.({ kind: 'finished', record: paused });
      return { runId: run.runId, ok: true, services: run.outcomes, release: paused };
    }
    const until = new Date(Date.now() + wave.pause.ms).toISOString();
    events.publish('release.paused', { wave: w + 1, reason: 'pause', until });
    deps.onRelease?.({ kind: 'paused', wave: w + 1, name: next.name, until });
    // An interrupted pause ends at once; the next phase sees the signal and halts the release.
    await sleep(wave.pause.ms, options.signal);
  }
  await deps.paused?.done(plan.id);

  for (const outcome of run.outcomes) {
    skipTargets(outcome);
    settle(outcome);
    deps.onUpdate?.(outcome);
  }
  if (!halt) {
    const done = record(run, 'completed', { finishedAt: new Date().toISOString() });
    events.publish('release.completed', { outcomes: done.outcomes, durationMs: Date.now() - Date.parse(run.startedAt) });
    deps.onRelease?.({ kind: 'finished', record: done });
    return { runId: run.runId, ok: run.outcomes.every((o) => o.ok), services: run.outcomes, release: done };
  }
  return await haltRelease(run, halt, deps, options, events);
}

/** A halted release: release.failed, then unless told otherwise the whole release rolled back. */
async function haltRelease(run: Run, halt: Halt, deps: DeployDeps, options: DeployOptions, events: ReleaseEvents): Promise<DeploymentOutcome> {
  const { plan } = run;
  const error = { code: halt.error.code, message: halt.error.message };
  const deployed: RollbackTarget[] = [];
  for (const planned of plan.services) {
    const service = outcomeOf(run, planned.name);
    if (!service) continue;
    for (const target of service.targets) {
      const found = run.resolved.get(planned.name)?.find((t) => t.url === target.url);
      const toRelease = target.host ? run.previous[target.host]?.[planned.name] : undefined;
      if (target.ok && found) deployed.push({ service, target, resolved: found, phase: planned.phase, toRelease });
    }
  }
  const rollback = options.rollback !== false && !halt.interrupted && deployed.length > 0;
  const failedService = halt.failed[0];
  const failedHost = outcomeOf(run, failedService ?? '')?.targets.find((t) => !t.ok && t.state !== 'SKIPPED');
  events.publish('release.failed', {
    error, phase: halt.phase, ...(halt.wave !== undefined ? { wave: halt.wave } : {}),
    ...(failedService ? { failedService } : {}), ...(failedHost ? { failedHost: failedHost.host ?? failedHost.url } : {}),
    outcomes: record(run, 'failed').outcomes, rollback,
  });
  if (!rollback) {
    const final = record(run, 'failed', { finishedAt: new Date().toISOString(), error });
    deps.onRelease?.({ kind: 'finished', record: final });
    return { runId: run.runId, ok: false, services: run.outcomes, release: final };
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
  for (const service of run.outcomes) {
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
  // Named only when every host went back to that one release. A service the release brought to a
  // host was removed there: the release gone back to did not run it, so it names no other.
  const rolledBackTo = rollbackError ? undefined : sameRelease(deployed.filter((d) => d.target.rollback?.removed !== true).map((d) => d.target.rollback?.toRelease));
  const final = record(run, rollbackError ? 'failed' : 'rolled-back', { finishedAt: new Date().toISOString(), error, rolledBackTo });
  events.publish('release.rolled_back', {
    outcomes: outcomesOf(final, [...new Set(deployed.map((d) => d.service.service))], touched), durationMs: Math.round(performance.now() - rollbackStarted),
    ...(rolledBackTo ? { rolledBackTo } : {}), ...(rollbackError ? { error: rollbackError } : {}),
  });
  deps.onRelease?.({ kind: 'finished', record: final });
  return { runId: run.runId, ok: false, services: run.outcomes, release: final };
}

function releaseEvents(plan: ReleasePlan, deps: DeployDeps): ReleaseEvents {
  return releaseEventsOf(deps, plan.id, plan.project);
}

function outcomeOf(run: Run, name: string): ServiceOutcome | undefined {
  return run.outcomes.find((o) => o.service === name);
}

/** A target's host as the release names it: its proven id, else its URL. */
function keyOf(run: Run, url: string): string {
  return run.hosts.get(url) ?? url;
}

function record(run: Run, state: ReleaseState, extra: { finishedAt?: string; error?: { code: string; message: string }; rolledBackTo?: string | undefined } = {}): ReleaseRecord {
  return releaseRecord(run.plan, run.outcomes, state, {
    ...extra, hostOf: (url) => run.hosts.get(url), previousId: newestOf(run.previous), ...(run.waves.length > 0 ? { waves: run.waves.map((w) => w.hosts) } : {}),
  });
}

function pausedState(run: Run): PausedRelease {
  const { plan } = run;
  return {
    version: 1, releaseId: plan.id, createdAt: plan.createdAt, project: plan.project, digest: planDigest(plan, plan.rollout),
    ...(plan.only ? { only: plan.only } : {}), runId: run.runId, startedAt: run.startedAt, nextWave: run.nextWave, waves: run.waves,
    outcomes: run.outcomes, resolved: Object.fromEntries(run.resolved), hosts: Object.fromEntries(run.hosts), previous: run.previous,
  };
}

/**
 * FERRY_ERR_RELEASE_HALTED for a failure in phase `phase` (-1: before the first), and with a
 * rollout in which wave, on which hosts, and which waves are left untouched.
 */
function halted(plan: ReleasePlan, phase: number, failed: string[], why = 'failed', wave?: { wave: Wave; unhealthy: string[]; allowed: number; later: Wave[] }): FerryError {
  const where = phase < 0 ? 'before its first phase' : `${wave ? `in wave ${wave.wave.name}, ` : 'in '}phase ${plan.phases[phase]?.name ?? phase}`;
  const on = wave ? ` on ${wave.unhealthy.join(', ')} (${wave.unhealthy.length} unhealthy host${wave.unhealthy.length === 1 ? '' : 's'}, max_unhealthy ${wave.allowed})` : '';
  const later = plan.phases.slice(phase + 1).map((p) => p.name);
  const notDeployed = [
    ...(phase >= 0 && later.length > 0 ? [later.join(', ')] : []),
    ...(wave && wave.later.length > 0 ? [`wave${wave.later.length === 1 ? '' : 's'} ${wave.later.map((w) => w.name).join(', ')}`] : []),
  ];
  return new FerryError('FERRY_ERR_RELEASE_HALTED', {
    message: `Release ${plan.id} halted ${where}: ${failed.join(', ')} ${why}${on}${notDeployed.length > 0 ? `; not deployed: ${notDeployed.join('; ')}` : ''}`,
    details: { releaseId: plan.id, ...(phase >= 0 ? { phase } : {}), ...(wave ? { wave: wave.wave.name, unhealthy: wave.unhealthy } : {}), failed },
  });
}

/** The one release every item names, if they all name the same. */
function sameRelease(ids: ReadonlyArray<string | undefined>): string | undefined {
  const first = ids[0];
  return first !== undefined && ids.every((id) => id === first) ? first : undefined;
}

/** The release's hosts, each once, in the order the plan's services first name them. */
function releaseHosts(run: Run): Array<{ key: string; url: string }> {
  const seen = new Map<string, string>();
  for (const { name } of run.plan.services) {
    for (const t of run.resolved.get(name) ?? []) {
      const key = t.host ?? keyOf(run, t.url);
      if (!seen.has(key)) seen.set(key, t.url);
    }
  }
  return [...seen].map(([key, url]) => ({ key, url }));
}

/** Each host the release knows by id, with the services it deploys there. */
function hostServices(run: Run): HostServices[] {
  const byHost = new Map<string, HostServices>();
  for (const { name } of run.plan.services) {
    for (const t of run.resolved.get(name) ?? []) {
      const host = t.host ?? run.hosts.get(t.url);
      if (!host) continue;
      const entry = byHost.get(host) ?? { url: t.url, host, hostKey: t.hostKey, services: [] };
      if (!entry.services.includes(name)) entry.services.push(name);
      byHost.set(host, entry);
    }
  }
  return [...byHost.values()];
}

/** Resolves after `ms`, or at once when `signal` aborts (the next phase sees the abort and halts). */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return delay(ms, undefined, signal ? { signal } : {}).catch(() => undefined);
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
