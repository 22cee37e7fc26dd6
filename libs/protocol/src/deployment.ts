import type { ErrorBody } from './errors.ts';
import type { DeploymentFailure } from './failure.ts';

/** The deployment states (docs/protocol.md §6, `state`), in the order a successful deployment passes them. */
export const DEPLOYMENT_STATES = [
  'PENDING', 'RECEIVING', 'VERIFYING', 'LOADING', 'DEPLOYING', 'VALIDATING', 'COMPLETED',
  'ROLLING_BACK', 'ROLLED_BACK', 'FAILED',
] as const;
export type DeploymentState = (typeof DEPLOYMENT_STATES)[number];

/** Milliseconds spent in each receiver-side stage. */
export interface StageTimings {
  receive?: number;
  verify?: number;
  load?: number;
  deploy?: number;
  health?: number;
  rollback?: number;
  total?: number;
}

export interface ProbeResult {
  at: string;
  ok: boolean;
  status?: number;
  error?: string;
  ms: number;
}

/**
 * How far an `http` or `tcp` health check got while it runs, as a journal record carries it
 * (docs/protocol.md §11.2, `healthCheck`): the probes made of the `retries` allowed, and whether
 * the last one passed.
 */
export interface HealthCheckProgress {
  attempts: number;
  retries: number;
  lastOk: boolean;
}

/** The receiver's answer to a completed upload, success or not. */
export interface DeploymentResult {
  deploymentId: string;
  host: string;
  service: string;
  image: string;
  imageId: string;
  /**
   * The container's `ferry.config-hash` as the receiver computed it (`configHash()`): what a
   * client that cannot compute it records as desired state. Deployments only, not rollbacks.
   */
  configHash?: string;
  state: DeploymentState;
  containerId?: string;
  bytes: number;
  timings: StageTimings;
  error?: ErrorBody['error'];
  /** Only in a failed record: the stage, the container's exit and last log lines, the probes, what runs now. */
  failure?: DeploymentFailure;
}
