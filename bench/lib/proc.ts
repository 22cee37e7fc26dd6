import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

/**
 * Every process the bench starts, so that the end of the run and Ctrl-C can stop them all. Each
 * child leads its own process group: a shell pipeline (`docker save | gzip | ssh …`) is stopped
 * as a whole, not just the shell that runs it.
 */
export class Processes {
  readonly #children = new Set<ChildProcess>();

  spawn(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options, detached: true });
    this.#children.add(child);
    child.once('exit', () => this.#children.delete(child));
    // A spawn failure (ENOENT) is reported through the awaited exit; it must not crash the bench.
    child.once('error', () => this.#children.delete(child));
    return child;
  }

  /** Stops every live child group: SIGTERM, then SIGKILL for whatever is still there after `graceMs`. */
  async stopAll(graceMs = 3000): Promise<void> {
    const live = [...this.#children];
    for (const child of live) signalGroup(child, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline && live.some(running)) await sleep(50);
    for (const child of live) if (running(child)) signalGroup(child, 'SIGKILL');
  }
}

export interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tracked command to its end and keeps what it printed; a non-zero exit is an error. */
export async function run(procs: Processes, command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Outcome> {
  const outcome = await runAllowingFailure(procs, command, args, env);
  if (outcome.code !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${outcome.code}: ${outcome.stderr.trim().slice(-2000)}`);
  return outcome;
}

export function runAllowingFailure(procs: Processes, command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = procs.spawn(command, args, { env });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk; });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr }));
  });
}

/** Resolves with the exit code once the child is gone (its stdio closed). */
export function exited(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null) {
      resolve(child.exitCode);
      return;
    }
    child.once('error', reject);
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : -1)));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // Already gone.
  }
}

/** The kernel's high-water mark of a process's resident memory, in KiB; 0 once it is gone. */
export function peakKb(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    return Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** Resets a live process's VmHWM to its current resident size (proc(5), clear_refs value 5). */
export function resetPeak(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    // Not ours or gone: its peak then covers its whole life, which the report says.
  }
}

/**
 * Follows a short-lived process's VmHWM until it exits: the value only grows, so the last
 * sample before the exit is its peak, give or take the final interval.
 */
export class PeakSampler {
  #peak = 0;
  readonly #pid: number | undefined;
  readonly #timer: NodeJS.Timeout;

  constructor(pid: number | undefined, intervalMs = 50) {
    this.#pid = pid;
    this.#timer = setInterval(() => this.sample(), intervalMs);
    this.sample();
  }

  sample(): void {
    this.#peak = Math.max(this.#peak, peakKb(this.#pid));
  }

  stop(): number {
    clearInterval(this.#timer);
    return this.#peak;
  }
}
