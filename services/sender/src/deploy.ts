import type { ImageBuilder, ImageStore } from '@ferry/docker';
import type { EventSink } from '@ferry/events';
import type { DeploymentFailure, ReleaseRecord } from '@ferry/protocol';
import type { DeploymentDocument } from './deployfile/index.ts';
import type { DesiredRecorder } from './desired.ts';
import type { FanoutDeps } from './fanout.ts';
import type { CompressionChoice } from './negotiate.ts';
import type { Credentials } from './receiver-client.ts';
import type { PausedRelease, PausedReleases } from './release/paused.ts';
import { planRelease } from './release/plan.ts';
import { continueRelease, runRelease, type ReleaseStep } from './release/run.ts';

export type { ReleaseStep } from './release/run.ts';

/** One target of one service, as `ferry deploy --json` and the sender service report it. */
export interface TargetOutcome {
  /** As written in the document until the target is delivered to, then the receiver's URL. */
  url: string;
  host?: string;
  deploymentId?: string;
  /**
   * `PENDING` before delivery (its wave or phase not reached yet), `DELIVERING` while it is sent,
   * then the receiver's deployment state (`COMPLETED`, `FAILED`, `ROLLED_BACK`…); `FAILED` too
   * when the service failed before any target was tried; `SKIPPED` when the release halted before
   * it, or another service failed on its host earlier in the wave.
   */
  state: string;
  ok: boolean;
  attempts?: number;
  error?: { code: string; message: string };
  /** A deployment that failed on the receiver: its report, as the receiver recorded it (docs/protocol.md §11.2). */
  failure?: DeploymentFailure;
  /** The whole-release rollback's request to this target, once the release halted after it deployed here. */
  rollback?: {
    deploymentId: string; ok: boolean; state: string; error?: { code: string; message: string };
    /** The retained release it went back to; absent: the container the receiver kept. */
    toRelease?: string;
    /** The release brought the service to this host: its rollback takes it off the host (`true` once done). */
    removed?: boolean;
  };
}

export interface ServiceOutcome {
  service: string;
  image: string;
  imageId?: string;
  /**
   * `pending` also between waves, while some targets wait for theirs; `skipped`: the release
   * halted before any of its targets; `rolled-back`: it deployed, then the release was rolled back.
   */
  state: 'pending' | 'building' | 'delivering' | 'succeeded' | 'failed' | 'skipped' | 'rolled-back';
  /** The name of its phase in the release. */
  phase?: string;
  /** The configuration's hash as its receivers computed it (docs/protocol.md §6), once one deployed it. */
  configHash?: string;
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
  /** In phase order. */
  services: ServiceOutcome[];
  /** The release the run was: its id, phases, and per host per service outcome. */
  release?: ReleaseRecord;
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
  /** Told what the release goes on without, e.g. a host whose budget could not be checked. */
  onWarning?: (message: string) => void;
  /** Called whenever a service's outcome changes (state, resolved targets, results). */
  onUpdate?: (outcome: ServiceOutcome) => void;
  /** Told each step of the release: planned, a wave or phase started or ended, a pause, a rollback, finished. */
  onRelease?: (step: ReleaseStep) => void;
  /** Where a release paused by `pause: manual` is kept until `ferry release continue`; without it such a rollout is refused. */
  paused?: PausedReleases;
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
  /** When a phase fails, roll back what the release deployed (default true; `--no-rollback`). */
  rollback?: boolean;
  /** Default a new one. */
  releaseId?: string;
  /** The project the release is filed under; default the document's `name`, else `default`. */
  project?: string;
}

/** The outcomes before anything ran: every service pending, in phase order, every target as written. */
export function pendingOutcomes(document: DeploymentDocument, only?: string[]): ServiceOutcome[] {
  const plan = planRelease(document, { only });
  return plan.services.map(({ name, entry, phase }) => ({
    service: name, image: entry.image, state: 'pending', ok: false, phase: plan.phases[phase]?.name ?? '',
    targets: entry.targets.map((url) => ({ url, state: 'PENDING', ok: false })),
  }));
}

/**
 * Runs a deployment document as one release (release/run.ts): phase after phase, the services of
 * a phase at once, each built when its phase starts and delivered to all its targets by the
 * fan-out; a failed phase halts the release and, unless `rollback: false`, rolls back what it
 * deployed. Never throws for a service's failure — the outcome says what failed.
 */
export async function runDeployment(document: DeploymentDocument, deps: DeployDeps, options: DeployOptions = {}): Promise<DeploymentOutcome> {
  return await runRelease(planRelease(document, { only: options.only, id: options.releaseId, project: options.project }), deps, options);
}

/**
 * Goes on with a release `pause: manual` stopped (release/run.ts continueRelease), `document`
 * being the one it started with.
 *
 * @throws FerryError FERRY_ERR_USAGE when the document is not that one, FERRY_ERR_IMAGE_MISMATCH
 *   when an image it deployed is no longer what its tag names: nothing is done then.
 */
export async function continueDeployment(document: DeploymentDocument, paused: PausedRelease, deps: DeployDeps, options: Omit<DeployOptions, 'only' | 'releaseId' | 'project'> = {}): Promise<DeploymentOutcome> {
  const plan = planRelease(document, { only: paused.only, id: paused.releaseId, project: paused.project, at: new Date(paused.createdAt) });
  return await continueRelease(plan, paused, deps, options);
}
