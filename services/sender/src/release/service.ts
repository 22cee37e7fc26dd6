import { createEvent } from '@ferry/events';
import { FerryError, isFerryError, type ReleaseRef } from '@ferry/protocol';
import { buildImage } from '../build.ts';
import type { DeployDeps, DeployOptions, ServiceOutcome, TargetOutcome } from '../deploy.ts';
import { serviceSpecOf, type ServiceEntry } from '../deployfile/index.ts';
import { DEFAULT_PARALLEL, pushMany, type TargetResult } from '../fanout.ts';
import { DEFAULT_BACKOFF } from '../retry.ts';
import type { ResolvedTarget } from '../targets.ts';

/**
 * One service of a release: built on the build engine if it has `build` (only now, when its
 * phase starts: a release halted earlier builds nothing more), then packaged once and delivered to
 * all its targets by the fan-out, every manifest naming the release. Throws for a failure before
 * any target was tried (the build, the image); a target's failure is in the outcome.
 */
export async function deployService(
  name: string, entry: ServiceEntry, targets: ResolvedTarget[], release: ReleaseRef, outcome: ServiceOutcome,
  runId: string, deps: DeployDeps, options: DeployOptions,
): Promise<void> {
  if (entry.build) {
    outcome.state = 'building';
    deps.onUpdate?.(outcome);
    outcome.build = await buildStep(name, entry, runId, deps, options.signal);
    outcome.imageId = outcome.build.imageId;
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
      const index = targets.findIndex((t) => t.url === target.url);
      if (index >= 0) outcome.targets[index] = targetOutcome(target);
      deps.onUpdate?.(outcome);
    },
  });
  outcome.imageId = result.imageId;
  const hash = result.targets.find((t) => t.deployment?.configHash)?.deployment?.configHash;
  if (hash) outcome.configHash = hash;
  outcome.targets = result.targets.map(targetOutcome);
  outcome.ok = result.ok;
  outcome.state = result.ok ? 'succeeded' : 'failed';
  deps.onUpdate?.(outcome);
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

/** A service that failed before any target was tried: its build, its selector, its image. */
export function failService(outcome: ServiceOutcome, err: unknown, deps: DeployDeps): void {
  const error = isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err });
  outcome.ok = false;
  outcome.state = 'failed';
  outcome.error = { code: error.code, message: error.message };
  deps.onUpdate?.(outcome);
}
