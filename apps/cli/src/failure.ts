/*
 * The one report of a failed deployment. `ferry push` (one target or several), `ferry deploy`,
 * `ferry status ID` and the error handler all print it from the same facts — the receiver's record
 * of the deployment (docs/protocol.md §11.2, `failure`) — so a deployment read back later shows
 * what the push showed.
 */
import type { DeploymentFailure, DeploymentResult, ErrorCode, FerryError, ProbeResult } from '@ferry/protocol';
import type { DeploymentRecord, TargetOutcome, TargetResult } from '@ferry/sender';
import { nextStep } from './next.ts';
import { oneLine } from './terminal.ts';

/** One failed deployment on one target, as far as the CLI learnt of it. */
export interface FailedDeployment {
  error: { code: string; message: string };
  service?: string | undefined;
  host?: string | undefined;
  url?: string | undefined;
  deploymentId?: string | undefined;
  /** The receiver's state of the deployment (`ROLLED_BACK`, `FAILED`…). */
  state?: string | undefined;
  failure?: DeploymentFailure | undefined;
}

/** Log lines printed; the record keeps more (`ferry status ID --json`). */
const LOG_LINES_SHOWN = 20;

/** The lines of the report, each safe for a terminal; the first names the error, the last says what to do. */
export function failureLines(f: FailedDeployment, command?: string): string[] {
  const rows = [`✖ ${f.error.message} [${f.error.code}]`];
  const where = [f.service, f.host ? `${f.service ? 'on ' : ''}${f.host}` : undefined, f.url ? `(${f.url})` : undefined].filter(Boolean).join(' ');
  if (where) rows.push(`  target      ${where}`);
  const failure = f.failure;
  if (f.deploymentId) {
    const how = [failure ? `failed while ${failure.stage}` : undefined, f.state ? `now ${f.state}` : undefined].filter(Boolean).join(', ');
    rows.push(`  deployment  ${f.deploymentId}${how ? ` — ${how}` : ''}`);
  }
  const container = failure?.container;
  if (container) rows.push(`  container   ${shortId(container.id)} ${containerState(container)}`);
  if (failure?.health) rows.push(`  health      ${healthText(failure.health)}`);
  if (container) {
    const shown = container.logs.slice(-LOG_LINES_SHOWN);
    rows.push(shown.length === 0
      ? '  log         the container wrote nothing'
      : `  log         the container's last ${shown.length === 1 ? 'line' : `${shown.length} lines`}${shown.length < container.logs.length ? ` (of ${container.logs.length} kept)` : ''}:`);
    // One row each, whatever the container wrote: a line break in one must not forge another.
    for (const text of shown) rows.push(`    ${String(text)}`);
  }
  if (failure) rows.push(`  restored    ${restoredText(failure, f.service)}`);
  rows.push(`  next: ${failureNext(f.error.code as ErrorCode, failure, command)}`);
  return rows.map(oneLine);
}

/**
 * What to do: for a container that exited or a health check that failed, what the report shows
 * points the way; otherwise the error code's own advice.
 */
export function failureNext(code: ErrorCode, failure: DeploymentFailure | undefined, command?: string): string {
  const container = failure?.container;
  if (container && (code === 'FERRY_ERR_HEALTHCHECK_FAILED' || code === 'FERRY_ERR_CONTAINER_FAILED' || code === 'FERRY_ERR_UNSTABLE')) {
    if (container.exitCode !== undefined) {
      return container.logs.length > 0
        ? `the container exited with code ${container.exitCode}: its log lines above say why; fix that and push again`
        : `the container exited with code ${container.exitCode} and wrote nothing: run the image by hand ("docker run") to see why, then push again`;
    }
    const last = failure.health?.probes.at(-1);
    if (failure.health && code !== 'FERRY_ERR_UNSTABLE') {
      return `the container runs but did not pass its health check${last ? ` (last answer: ${probeAnswer(last)})` : ''}: check the check's address and port${container.logs.length > 0 ? ' and the log lines above' : ''}, then push again`;
    }
  }
  return nextStep(code, command);
}

/** From the error a one-target push or any other command ended with. */
export function fromError(error: FerryError): FailedDeployment {
  const deployment = error.details?.deployment as Partial<DeploymentResult> | undefined;
  const text = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);
  return {
    error: { code: error.code, message: error.message },
    service: deployment?.service, host: deployment?.host ?? text(error.details?.host), url: text(error.details?.url),
    deploymentId: deployment?.deploymentId ?? text(error.details?.deploymentId),
    state: deployment?.state, failure: deployment?.failure,
  };
}

/** From a target of a fan-out push (`ferry push --to A --to B`). */
export function fromTarget(service: string, t: TargetResult): FailedDeployment {
  const error = t.error ?? t.deployment?.error ?? { code: 'FERRY_ERR_INTERNAL', message: `deployment ${t.state}` };
  return {
    // The receiver's own id for what it recorded: the target may have taken a new one for another attempt.
    error: { code: error.code, message: error.message }, service, host: t.host, url: t.url, deploymentId: t.deployment?.deploymentId ?? t.deploymentId,
    state: t.deployment?.state ?? t.state, failure: t.deployment?.failure,
  };
}

/** From a target of a `ferry deploy` service. */
export function fromOutcome(service: string, t: TargetOutcome): FailedDeployment {
  return {
    error: t.error ?? { code: 'FERRY_ERR_INTERNAL', message: `deployment ${t.state}` },
    service, host: t.host, url: t.url, deploymentId: t.deploymentId, state: t.state, failure: t.failure,
  };
}

/** From the receiver's record (`ferry status ID --to URL`). */
export function fromRecord(r: DeploymentRecord, url: string): FailedDeployment {
  return {
    error: r.error ?? { code: 'FERRY_ERR_INTERNAL', message: `deployment ${r.state}` },
    service: r.service, host: r.host, url, deploymentId: r.deploymentId, state: r.state, failure: r.failure,
  };
}

function containerState(c: NonNullable<DeploymentFailure['container']>): string {
  const restarts = c.restarts > 0 ? `, restarted ${c.restarts} time${c.restarts === 1 ? '' : 's'} by its restart policy` : '';
  if (c.exitCode !== undefined) return `exited with code ${c.exitCode}${restarts}${c.status === 'exited' ? '' : ` (now ${c.status})`}`;
  if (c.status === 'created') return 'was created but never started';
  return c.status === 'running' ? 'was running' : `was ${c.status}`;
}

function healthText(h: NonNullable<DeploymentFailure['health']>): string {
  const count = `${h.attempts} probe${h.attempts === 1 ? '' : 's'} (${h.type})`;
  if (h.probes.length === 0) return h.attempts === 0 ? `${count}: the container stopped before the first` : count;
  return `${count}; the last ${h.probes.length === 1 ? 'answer' : `${h.probes.length}`}: ${runs(h.probes.map(probeAnswer))}`;
}

/** `HTTP 404 ×3, ECONNREFUSED`: repeated answers in a row counted once. */
function runs(answers: string[]): string {
  const out: { text: string; count: number }[] = [];
  for (const text of answers) {
    const last = out.at(-1);
    if (last?.text === text) last.count += 1;
    else out.push({ text, count: 1 });
  }
  return out.map((r) => (r.count > 1 ? `${r.text} ×${r.count}` : r.text)).join(', ');
}

function probeAnswer(p: ProbeResult): string {
  if (p.ok) return p.status !== undefined ? `HTTP ${p.status} (passed)` : 'passed';
  return p.status !== undefined ? `HTTP ${p.status}` : (p.error ?? 'no answer');
}

function restoredText(failure: DeploymentFailure, service: string | undefined): string {
  const restored = failure.restored;
  switch (restored?.outcome) {
    case 'previous': return `the previous container${restored.containerId ? ` ${shortId(restored.containerId)}` : ''} runs again`;
    case 'nothing': return `nothing: no earlier version${service ? ` of ${service}` : ''} was on this host, so none runs now`;
    case 'untouched': return 'not needed: the running version was never stopped';
    case 'failed': return 'no: the rollback failed (see the error); what runs now is unknown';
    case undefined: return 'not yet: the rollback is under way';
  }
}

function shortId(id: string): string {
  return id.replace(/^sha256:/, '').slice(0, 12);
}
