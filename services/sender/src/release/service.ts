import { createEvent } from '@ferry/events';
import { FerryError, isFerryError, type ReleaseRef } from '@ferry/protocol';
import { buildImage } from '../build.ts';
import type { DeployDeps, DeployOptions, ServiceOutcome, TargetOutcome } from '../deploy.ts';
import { serviceSpecOf, type ServiceEntry } from '../deployfile/index.ts';
import { DEFAULT_PARALLEL, pushMany, type TargetResult } from '../fanout.ts';
import { DEFAULT_BACKOFF } from '../retry.ts';
import type { ResolvedTarget } from '../targets.ts';

/** Target states of the sender's own: not delivered yet, or being delivered now. */
const WAITING: ReadonlySet<string> = new Set(['PENDING', 'DELIVERING']);

/**
 * One service of a release on some of its targets (a wave's): built on the build engine if it has
 * `build` and was not built yet (only now, when its phase starts: a release halted earlier builds
 * nothing more), then packaged once and delivered to those targets by the fan-out, every manifest
 * naming the release. A later wave sends the image the first one did: if the tag names another
 * image by then, the service fails there (FERRY_ERR_IMAGE_MISMATCH). Throws for a failure before
 * any target was tried (the build, the image); a target's failure is in the outcome.
 */
export async function deployService(
  name: string, entry: ServiceEntry, targets: ResolvedTarget[], release: ReleaseRef, outcome: ServiceOutcome,
  runId: string, deps: DeployDeps, options: DeployOptions,
): Promise<void> {
  const urls = new Set(targets.map((t) => t.url));
  const sentBefore = outcome.targets.some((t) => !WAITING.has(t.state) && t.state !== 'SKIPPED');
  outcome.targets = outcome.targets.map((t) => (urls.has(t.url) ? { url: t.url, ...(t.host ? { host: t.host } : {}), state: 'DELIVERING', ok: false } : t));
  if (entry.build && !outcome.build) {
    outcome.state = 'building';
    deps.onUpdate?.(outcome);
    outcome.build = await buildStep(name, entry, runId, deps, options.signal);
    outcome.imageId = outcome.build.imageId;
  } else if (sentBefore && outcome.imageId) {
    const now = (await deps.images.inspect(entry.image).catch(() => undefined))?.id;
    if (now !== outcome.imageId) {
      throw new FerryError('FERRY_ERR_IMAGE_MISMATCH', {
        message: `${entry.image} is ${now ?? 'gone'} on the build engine now, but release ${release.id} deployed ${outcome.imageId} to its first hosts: retag it, or make a new release`,
        details: { image: entry.image, expected: outcome.imageId, ...(now ? { actual: now } : {}) },
      });
    }
  }
  outcome.state = 'delivering';
  deps.onUpdate?.(outcome);
  const result = await pushMany({
    image: entry.image, targets, service: serviceSpecOf(name, entry), release,
    compression: options.compression ?? 'auto', parallel: options.parallel ?? DEFAULT_PARALLEL,
    policy: { ...DEFAULT_BACKOFF, attempts: options.attempts ?? DEFAULT_BACKOFF.attempts },
  }, {
    images: deps.images, events: deps.events, credentials: deps.credentials, source: deps.source,
    ...(deps.onRetry ? { onRetry: deps.onRetry } : {}), ...(deps.desired ? { desired: deps.desired } : {}),
    onDone: (target) => {
      replaceTarget(outcome, targetOutcome(target));
      deps.onUpdate?.(outcome);
    },
  });
  outcome.imageId = result.imageId;
  const hash = result.targets.find((t) => t.deployment?.configHash)?.deployment?.configHash;
  if (hash) outcome.configHash = hash;
  for (const t of result.targets) replaceTarget(outcome, targetOutcome(t));
  settle(outcome);
  deps.onUpdate?.(outcome);
}

function replaceTarget(outcome: ServiceOutcome, target: TargetOutcome): void {
  const index = outcome.targets.findIndex((t) => t.url === target.url);
  if (index >= 0) outcome.targets[index] = target;
  else outcome.targets.push(target);
}

/**
 * A service's state from its targets': `failed` when one failed (or the service did before any
 * was tried), `pending` while some wait for a later wave, `succeeded` when it deployed everywhere
 * it was not skipped, `skipped` when it was tried nowhere.
 */
export function settle(outcome: ServiceOutcome): void {
  const failed = outcome.error !== undefined || outcome.targets.some((t) => !t.ok && !WAITING.has(t.state) && t.state !== 'SKIPPED');
  const waiting = outcome.targets.some((t) => WAITING.has(t.state));
  outcome.state = failed ? 'failed' : waiting ? 'pending' : outcome.targets.some((t) => t.ok) ? 'succeeded' : 'skipped';
  outcome.ok = outcome.state === 'succeeded';
}

/** Targets not tried: the release halted before them, or their host failed earlier in the wave. */
export function skipTargets(outcome: ServiceOutcome, urls?: ReadonlySet<string>): void {
  outcome.targets = outcome.targets.map((t) => (WAITING.has(t.state) && (!urls || urls.has(t.url)) ? { ...t, state: 'SKIPPED', ok: false } : t));
}

async function buildStep(name: string, entry: ServiceEntry, runId: string, deps: DeployDeps, signal: AbortSignal | undefined): Promise<NonNullable<ServiceOutcome['build']>> {
  const build = entry.build;
  if (!build) throw new FerryError('FERRY_ERR_INTERNAL', { message: 'buildStep without build' });
  const correlation = { source: deps.source, host: deps.senderHost, service: name, deploymentId: runId };
  deps.events.publish(createEvent('build.started', {
    ...correlation, data: { image: entry.image, context: build.context, ...(build.dockerfile ? { dockerfile: build.dockerfile } : {}) },
  }));
  const result = await buildImage({
    context: build.context, tag: entry.image,
    ...(build.dockerfile ? { dockerfile: build.dockerfile } : {}),
    ...(build.args ? { buildArgs: build.args } : {}),
    ...(signal ? { signal } : {}),
  }, { builder: deps.builder, images: deps.images, ...(deps.onBuildLog ? { onLog: (text: string) => deps.onBuildLog?.(name, text) } : {}) });
  deps.events.publish(createEvent('build.completed', {
    ...correlation, data: { image: result.image, imageId: result.imageId, bytes: result.bytes, durationMs: result.durationMs },
  }));
  return { imageId: result.imageId, bytes: result.bytes, durationMs: result.durationMs };
}

function targetOutcome(t: TargetResult): TargetOutcome {
  return {
    // The id the receiver recorded the deployment under, which `ferry status ID` finds; the target
    // takes a fresh one after a failure, for an attempt that may follow.
    url: t.url, ...(t.host ? { host: t.host } : {}), deploymentId: t.deployment?.deploymentId ?? t.deploymentId, state: t.state, ok: t.ok, attempts: t.attempts,
    ...(t.error ? { error: t.error } : t.ok ? {} : { error: deploymentError(t) }),
    ...(t.deployment?.failure ? { failure: t.deployment.failure } : {}),
  };
}

/** A target whose receiver answered with a failed deployment carries that deployment's error. */
function deploymentError(t: TargetResult): { code: string; message: string } {
  const error = t.deployment?.error;
  return { code: error?.code ?? 'FERRY_ERR_INTERNAL', message: error?.message ?? `deployment ${t.state}` };
}

/**
 * A service that failed before any of `urls` (default every target still waiting) was tried: its
 * build, its selector, its image. Those targets fail with it.
 */
export function failService(outcome: ServiceOutcome, err: unknown, deps: DeployDeps, urls?: ReadonlySet<string>): void {
  const error = isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err });
  outcome.error = { code: error.code, message: error.message };
  outcome.targets = outcome.targets.map((t) => (WAITING.has(t.state) && (!urls || urls.has(t.url)) ? { ...t, state: 'FAILED', ok: false } : t));
  settle(outcome);
  deps.onUpdate?.(outcome);
}
