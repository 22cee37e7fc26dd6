import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import type { ContainerHealth } from '@ferry/docker';
import { FAILURE_LIMITS, FerryError, unpublishedHealthPort, unpublishedHealthPortHint, type HealthCheck, type ProbeResult, type ServiceSpec } from '@ferry/protocol';

/** Kept short: a failure report carries the history, and a long one says nothing more. */
const HISTORY = FAILURE_LIMITS.probes;

export interface HealthOutcome {
  ok: boolean;
  /** Every probe made, however many of them `probes` keeps. */
  attempts: number;
  probes: ProbeResult[];
  reason?: string;
  durationMs: number;
}

export interface HealthDeps {
  /** False once the container has exited: no point probing a process that is gone. */
  isRunning: () => Promise<boolean>;
  /** Docker's health state of the container, for `cmd` checks; undefined when it has none. */
  dockerHealth?: () => Promise<ContainerHealth | undefined>;
  sleep?: (ms: number) => Promise<void>;
  /** Told of each `http` or `tcp` probe as it answers, `attempts` counting it: the check's progress. */
  onProbe?: (attempts: number, probe: ProbeResult) => Promise<void>;
}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits until the new container is healthy or the check gives up. `http` and `tcp` probes run
 * here, each cut by `timeoutMs` so a service that accepts and never answers still fails; a `cmd`
 * check lets Docker run the image's HEALTHCHECK and follows its verdict.
 */
export async function waitHealthy(check: HealthCheck, deps: HealthDeps): Promise<HealthOutcome> {
  if (check.type === 'cmd') return waitDockerHealthy(check, deps);
  const sleep = deps.sleep ?? defaultSleep;
  const started = performance.now();
  const probes: ProbeResult[] = [];
  const finish = (ok: boolean, attempts: number, reason?: string): HealthOutcome => ({
    ok, attempts, probes: probes.slice(-HISTORY), durationMs: Math.round(performance.now() - started), ...(reason ? { reason } : {}),
  });
  if (check.startPeriodMs > 0) await sleep(check.startPeriodMs);
  for (let attempt = 1; attempt <= check.retries; attempt++) {
    if (!(await deps.isRunning())) return finish(false, attempt - 1, 'the container exited before it became healthy');
    const probe = check.type === 'http' ? await probeHttp(check) : await probeTcp(check);
    probes.push(probe);
    await deps.onProbe?.(attempt, probe);
    if (probe.ok) return finish(true, attempt);
    if (attempt < check.retries) await sleep(check.intervalMs);
  }
  const last = probes.at(-1);
  const lastSaid = last?.status !== undefined ? `HTTP ${last.status}` : (last?.error ?? 'no answer');
  return finish(false, check.retries, `health check failed ${check.retries} times (last: ${lastSaid})`);
}

/**
 * Why a check failed, with what to change when the spec itself explains it: a bare ECONNREFUSED
 * from 127.0.0.1 says nothing of the unpublished port of a container on the bridge network.
 */
export function healthFailureReason(outcome: HealthOutcome, service: Pick<ServiceSpec, 'network' | 'ports' | 'health' | 'route'>): string {
  const reason = outcome.reason ?? 'health check failed';
  const port = unpublishedHealthPort(service);
  return port === undefined ? reason : `${reason}; ${unpublishedHealthPortHint(port)}`;
}

const RESTORED = '; the previous version was restored';

/** The deployment's error for a failed check, as the rollback is expected to end: the old version runs again. */
export function healthCheckFailed(reason: string): FerryError {
  return new FerryError('FERRY_ERR_HEALTHCHECK_FAILED', { message: `Health check failed: ${reason}${RESTORED}` });
}

/** The same failure when there was no previous version to run again: why it failed still said. */
export function healthCheckFailedWithoutRestore(error: FerryError): FerryError {
  const failed = error.message.endsWith(RESTORED) ? error.message.slice(0, -RESTORED.length) : 'Health check failed';
  return new FerryError('FERRY_ERR_HEALTHCHECK_FAILED', { message: `${failed}; there was no previous version to restore` });
}

/**
 * The deployment's error when the check passed but the container did not stay up through the
 * stability window (stability.ts): what answered the probe was not, or not only, this container.
 */
export function unstable(reason: string): FerryError {
  return new FerryError('FERRY_ERR_UNSTABLE', { message: `Unstable: ${reason}${RESTORED}` });
}

/** {@link unstable} when there was no previous version to run again. */
export function unstableWithoutRestore(error: FerryError): FerryError {
  const failed = error.message.endsWith(RESTORED) ? error.message.slice(0, -RESTORED.length) : 'Unstable';
  return new FerryError('FERRY_ERR_UNSTABLE', { message: `${failed}; there was no previous version to restore` });
}

type HttpCheck = Extract<HealthCheck, { type: 'http' }>;
type TcpCheck = Extract<HealthCheck, { type: 'tcp' }>;
type CmdCheck = Extract<HealthCheck, { type: 'cmd' }>;

export async function probeHttp(check: HttpCheck): Promise<ProbeResult> {
  const at = new Date().toISOString();
  const started = performance.now();
  const signal = AbortSignal.timeout(check.timeoutMs);
  try {
    const status = await statusOf(check.url, signal);
    const ok = check.expectStatus !== undefined ? status === check.expectStatus : status >= 200 && status < 400;
    return { at, ok, status, ms: Math.round(performance.now() - started) };
  } catch (err) {
    const error = signal.aborted ? `timed out after ${check.timeoutMs} ms` : ((err as NodeJS.ErrnoException).code ?? (err as Error).message);
    return { at, ok: false, error, ms: Math.round(performance.now() - started) };
  }
}

/**
 * The status of a GET of `url`: redirects are not followed and the body is not read. node:http
 * rather than fetch, whose first call loads undici and its WebAssembly HTTP parser: ~17 MiB more
 * for the rest of the receiver's life, for one status line.
 */
function statusOf(url: string, signal: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(target, { method: 'GET', signal, agent: false }, (res) => {
      resolve(res.statusCode ?? 0);
      res.destroy();
    });
    req.once('error', reject);
    req.end();
  });
}

/** Passes when a TCP connection is accepted within the timeout; nothing is sent. */
export function probeTcp(check: TcpCheck): Promise<ProbeResult> {
  const at = new Date().toISOString();
  const started = performance.now();
  return new Promise((resolve) => {
    const socket = connect({ host: check.host, port: check.port });
    const done = (error?: string): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ at, ok: error === undefined, ...(error !== undefined ? { error } : {}), ms: Math.round(performance.now() - started) });
    };
    const timer = setTimeout(() => done(`timed out after ${check.timeoutMs} ms`), check.timeoutMs);
    socket.once('connect', () => done());
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
  });
}

/**
 * Follows Docker's health status (starting → healthy | unhealthy). The engine runs the image's
 * check with the manifest's timings, so it has said its last word within the start period plus
 * `retries` rounds of interval and timeout; past that plus a margin, starting counts as failed.
 */
async function waitDockerHealthy(check: CmdCheck, deps: HealthDeps): Promise<HealthOutcome> {
  const sleep = deps.sleep ?? defaultSleep;
  const started = performance.now();
  const deadline = started + check.startPeriodMs + check.retries * (check.intervalMs + check.timeoutMs) + 2 * check.intervalMs + 1000;
  const poll = Math.min(check.intervalMs, 500);
  let health: ContainerHealth | undefined;
  const finish = (ok: boolean, reason?: string): HealthOutcome => {
    const runs = health?.log ?? [];
    const probes = runs.map(probeOfDockerRun).slice(-HISTORY);
    // Docker keeps its last five runs only; its failing streak counts further back.
    return { ok, attempts: Math.max(runs.length, health?.failingStreak ?? 0), probes, durationMs: Math.round(performance.now() - started), ...(reason ? { reason } : {}) };
  };
  if (!deps.dockerHealth) return finish(false, 'this receiver cannot read Docker health states');
  for (;;) {
    health = await deps.dockerHealth();
    if (health === undefined) return finish(false, 'the image declares no HEALTHCHECK');
    if (health.status === 'healthy') return finish(true);
    if (health.status === 'unhealthy') return finish(false, `Docker reports the container unhealthy after ${health.failingStreak} failed checks`);
    if (!(await deps.isRunning())) return finish(false, 'the container exited before it became healthy');
    if (performance.now() >= deadline) return finish(false, `still "${health.status}" after ${Math.round(performance.now() - started)} ms`);
    await sleep(poll);
  }
}

function probeOfDockerRun(run: ContainerHealth['log'][number]): ProbeResult {
  const ms = Math.max(0, Date.parse(run.end) - Date.parse(run.start));
  const output = run.output.trim().slice(-200);
  return {
    at: run.start, ok: run.exitCode === 0, ms: Number.isFinite(ms) ? ms : 0,
    ...(run.exitCode !== 0 ? { error: `exit ${run.exitCode}${output ? `: ${output}` : ''}` } : {}),
  };
}
