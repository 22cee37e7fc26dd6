import type { DeploymentState, ProbeResult } from './deployment.ts';
import type { HealthCheck } from './manifest.ts';

/**
 * What a failure report keeps of a container's output and of its health checks (docs/protocol.md
 * §11.2): enough to say why, small enough that the journal, an error answer and an event carry it.
 */
export const FAILURE_LIMITS = {
  /** The container's newest log lines. */
  logLines: 50,
  /** Characters per log line; a longer one is cut and ends with "…". */
  logLineChars: 500,
  /** The newest probe answers. */
  probes: 10,
  /** Characters of a probe's error (a `cmd` check's output is part of it). */
  probeErrorChars: 200,
} as const;

/** The new container of a failed deployment, as the engine saw it when the failure was found. */
export interface FailedContainer {
  id: string;
  /** The engine's word for its state: `running`, `restarting`, `exited`, `created`… */
  status: string;
  /** Its last exit code, once it has exited at least once. */
  exitCode?: number;
  /** How often the engine restarted it by its restart policy. */
  restarts: number;
  /** Its newest log lines, stdout and stderr interleaved, oldest first. */
  logs: string[];
}

/** How the health check went: every probe counted, the newest answers kept. */
export interface HealthReport {
  type: HealthCheck['type'];
  /** Probes made (for `cmd`: the runs Docker reported). */
  attempts: number;
  /** The newest answers, oldest first, at most FAILURE_LIMITS.probes. */
  probes: ProbeResult[];
}

/**
 * What runs for the service after the failure: `previous` — the container that ran before runs
 * again (`containerId`); `nothing` — there was none, so nothing runs; `untouched` — the failure came
 * before the running container was stopped; `failed` — the rollback failed (the error says why).
 */
export interface Restored {
  outcome: 'previous' | 'nothing' | 'untouched' | 'failed';
  containerId?: string;
}

/**
 * The evidence of a failed deployment, journalled by the receiver and answered with its record:
 * every client shows the same report from it. Safe to show: control characters are removed and
 * no value of the manifest's env appears in it.
 */
export interface DeploymentFailure {
  /** The state the deployment was in when it failed: `LOADING`, `DEPLOYING` or `VALIDATING`. */
  stage: DeploymentState;
  /** The new container, once one was created and found. */
  container?: FailedContainer;
  /** Present when the manifest had a health check and it ran. */
  health?: HealthReport;
  /** Absent until the rollback is over. */
  restored?: Restored;
}
