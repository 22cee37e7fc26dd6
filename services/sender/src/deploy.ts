import { randomUUID } from 'node:crypto';
import type { ImageBuilder, ImageStore } from '@ferry/docker';
import { createEvent, type EventSink } from '@ferry/events';
import { FerryError, isFerryError, type DeploymentFailure } from '@ferry/protocol';
import { buildImage } from './build.ts';
import { serviceSpecOf, type DeploymentDocument, type ServiceEntry } from './deployfile/index.ts';
import type { DesiredRecorder } from './desired.ts';
import { DEFAULT_PARALLEL, pushMany, type FanoutDeps, type TargetResult } from './fanout.ts';
import type { CompressionChoice } from './negotiate.ts';
import { DEFAULT_BACKOFF } from './retry.ts';
import { resolveTargets } from './targets.ts';
import type { Credentials } from './receiver-client.ts';

/** One target of one service, as `ferry deploy --json` and the sender service report it. */
export interface TargetOutcome {
  /** As written in the document until the target is delivered to, then the receiver's URL. */
  url: string;
  host?: string;
  deploymentId?: string;
  /** `PENDING` before delivery, then the receiver's deployment state (`COMPLETED`, `FAILED`, `ROLLED_BACK`…). */
  state: string;
  ok: boolean;
  attempts?: number;
  error?: { code: string; message: string };
  /** A deployment that failed on the receiver: its report, as the receiver recorded it (docs/protocol.md §11.2). */
  failure?: DeploymentFailure;
}

export interface ServiceOutcome {
  service: string;
  image: string;
  imageId?: string;
  state: 'pending' | 'building' | 'delivering' | 'succeeded' | 'failed';
  ok: boolean;
  targets: TargetOutcome[];
  /** Why the service failed before any target was tried (build, selector, packaging). */
  error?: { code: string; message: string };
  build?: { imageId: string; bytes: number; durationMs: number };
}

export interface DeploymentOutcome {
  /** Correlates the build events of this run; each target has its own deployment id besides. */
  runId: string;
  ok: boolean;
  services: ServiceOutcome[];
}

export interface DeployDeps {
  images: ImageStore;
  builder: ImageBuilder;
  events: EventSink;
  credentials: Credentials;
  /** CloudEvents source of the sender. */
  source: string;
  /** The sender's name in build events (they have no receiver host yet). */
  senderHost: string;
  /** FERRY_REGISTRY_URL: resolves `selector:` targets. */
  registryUrl?: string | undefined;
  /** Records each target's successful deployment in the registry (with FERRY_REGISTRY_URL). */
  desired?: DesiredRecorder;
  onRetry?: FanoutDeps['onRetry'];
  onBuildLog?: (service: string, line: string) => void;
  /** Called whenever a service's outcome changes (state, resolved targets, results). */
  onUpdate?: (outcome: ServiceOutcome) => void;
}

export interface DeployOptions {
  /** Deploy only these services of the document. */
  only?: string[];
  /** Targets served at once per service. */
  parallel?: number;
  /** Attempts per target. */
  attempts?: number;
  /** Default `auto`: none when every target of a service is on a loopback or private address, zstd otherwise. */
  compression?: CompressionChoice;
  runId?: string;
  signal?: AbortSignal;
}

/** The outcomes before anything ran: every service pending, every target as written. */
export function pendingOutcomes(document: DeploymentDocument, only?: string[]): ServiceOutcome[] {
  return selectServices(document, only).map(([service, entry]) => ({
    service, image: entry.image, state: 'pending', ok: false,
    targets: entry.targets.map((url) => ({ url, state: 'PENDING', ok: false })),
  }));
}

/**
 * Runs a deployment document: service after service, in the document's order (so a database
 * listed before its clients is up first), each built on the build engine if it has `build`, then
 * packaged once and delivered to all its targets by the fan-out (`pushMany`). A failed service
 * does not stop the next; never throws for a service's failure — the outcome says what failed.
 */
export async function runDeployment(document: DeploymentDocument, deps: DeployDeps, options: DeployOptions = {}): Promise<DeploymentOutcome> {
  const runId = options.runId ?? randomUUID();
  const outcomes = pendingOutcomes(document, options.only);
  const entries = selectServices(document, options.only);
  for (const [index, [name, entry]] of entries.entries()) {
    const outcome = outcomes[index];
    if (!outcome) continue;
    if (options.signal?.aborted) {
      fail(outcome, new FerryError('FERRY_ERR_SENDER_INTERRUPTED', { message: 'The sender stopped before this service was deployed' }), deps);
      continue;
    }
    await deployService(name, entry, outcome, runId, deps, options).catch((err: unknown) => fail(outcome, err, deps));
  }
  return { runId, ok: outcomes.every((o) => o.ok), services: outcomes };
}

function selectServices(document: DeploymentDocument, only: string[] | undefined): [string, ServiceEntry][] {
  const all = Object.entries(document.services);
  if (!only || only.length === 0) return all;
  const unknown = only.filter((name) => !(name in document.services));
  if (unknown.length > 0) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `--only ${unknown.join(', ')}: no such service in the document (it has ${Object.keys(document.services).join(', ')})` });
  }
  return all.filter(([name]) => only.includes(name));
}

async function deployService(name: string, entry: ServiceEntry, outcome: ServiceOutcome, runId: string, deps: DeployDeps, options: DeployOptions): Promise<void> {
  if (entry.build) {
    outcome.state = 'building';
    deps.onUpdate?.(outcome);
    outcome.build = await buildStep(name, entry, runId, deps, options.signal);
    outcome.imageId = outcome.build.imageId;
  }
  const targets = await resolveTargets(entry.targets, { registryUrl: deps.registryUrl, credentials: deps.credentials });
  outcome.targets = targets.map((t) => ({ url: t.url, ...(t.host ? { host: t.host } : {}), state: 'PENDING', ok: false }));
  outcome.state = 'delivering';
  deps.onUpdate?.(outcome);
  const result = await pushMany({
    image: entry.image, targets, service: serviceSpecOf(name, entry),
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

function fail(outcome: ServiceOutcome, err: unknown, deps: DeployDeps): void {
  const error = isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err });
  outcome.ok = false;
  outcome.state = 'failed';
  outcome.error = { code: error.code, message: error.message };
  deps.onUpdate?.(outcome);
}
