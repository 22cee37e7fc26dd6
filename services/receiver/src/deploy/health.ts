import type { HealthCheck, ProbeResult } from '@ferry/protocol';

/** Kept short: a failure event carries the history, and a long one says nothing more. */
const HISTORY = 10;

export interface HealthOutcome {
  ok: boolean;
  attempts: number;
  probes: ProbeResult[];
  reason?: string;
  durationMs: number;
}

export interface HealthDeps {
  /** False once the container has exited: no point probing a process that is gone. */
  isRunning: () => Promise<boolean>;
  sleep?: (ms: number) => Promise<void>;
}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Probes an HTTP health URL until it answers as expected or the retries run out. A 2xx or 3xx
 * passes unless the check names the one status it expects.
 */
export async function waitHealthy(check: HealthCheck, deps: HealthDeps): Promise<HealthOutcome> {
  const sleep = deps.sleep ?? defaultSleep;
  const started = performance.now();
  const probes: ProbeResult[] = [];
  const finish = (ok: boolean, attempts: number, reason?: string): HealthOutcome => ({
    ok, attempts, probes: probes.slice(-HISTORY), durationMs: Math.round(performance.now() - started), ...(reason ? { reason } : {}),
  });
  if (check.startPeriodMs > 0) await sleep(check.startPeriodMs);
  for (let attempt = 1; attempt <= check.retries; attempt++) {
    if (!(await deps.isRunning())) return finish(false, attempt - 1, 'the container exited before it became healthy');
    const probe = await probeHttp(check);
    probes.push(probe);
    if (probe.ok) return finish(true, attempt);
    if (attempt < check.retries) await sleep(check.intervalMs);
  }
  const last = probes.at(-1);
  const lastSaid = last?.status !== undefined ? `HTTP ${last.status}` : (last?.error ?? 'no answer');
  return finish(false, check.retries, `health check failed ${check.retries} times (last: ${lastSaid})`);
}

export async function probeHttp(check: HealthCheck): Promise<ProbeResult> {
  const at = new Date().toISOString();
  const started = performance.now();
  try {
    const response = await fetch(check.url, { redirect: 'manual', signal: AbortSignal.timeout(check.timeoutMs) });
    await response.body?.cancel();
    const ok = check.expectStatus !== undefined ? response.status === check.expectStatus : response.status >= 200 && response.status < 400;
    return { at, ok, status: response.status, ms: Math.round(performance.now() - started) };
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    const error = (err as Error).name === 'TimeoutError' ? `timed out after ${check.timeoutMs} ms` : (cause?.code ?? (err as Error).message);
    return { at, ok: false, error, ms: Math.round(performance.now() - started) };
  }
}
