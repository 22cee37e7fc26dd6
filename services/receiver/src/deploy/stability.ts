import type { ContainerInfo } from '@ferry/docker';

/** What FERRY_STABILITY_WINDOW_MS defaults to: as long as Swarm watches an updated task. */
export const DEFAULT_STABILITY_WINDOW_MS = 5000;

/** Between two looks at the container; a crash is caught by its restart count even between them. */
const POLL_MS = 250;

export type Stability = { ok: true; durationMs: number } | { ok: false; reason: string; durationMs: number };

export interface StabilityDeps {
  inspect: () => Promise<ContainerInfo | undefined>;
  /** What the window follows, for the reason: `its check passed`, `it started`. */
  after: string;
  sleep?: (ms: number) => Promise<void>;
}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Watches the new container for `windowMs` after its check passed: it must stay running with the
 * restart count it had then. A probe proves that something answers, not that this container
 * does: a crash-looping container behind a port another process holds passes every probe, and
 * only its restart count tells. The container was made for this deployment, so any restart at
 * all counts; the count survives the restart, so a crash between two looks is seen at the next
 * one. The last look comes once the window is over; a window of `0` looks once.
 */
export async function watchStable(windowMs: number, deps: StabilityDeps): Promise<Stability> {
  const sleep = deps.sleep ?? defaultSleep;
  const started = performance.now();
  const elapsed = (): number => Math.round(performance.now() - started);
  for (;;) {
    const why = unstableReason(await deps.inspect());
    if (why) return { ok: false, reason: `${why} ${elapsed()} ms after ${deps.after} (stability window ${windowMs} ms)`, durationMs: elapsed() };
    const left = windowMs - (performance.now() - started);
    if (left <= 0) return { ok: true, durationMs: elapsed() };
    await sleep(Math.min(POLL_MS, left));
  }
}

/** Why `info` is not the container that passed the check, still running; undefined when it is. */
function unstableReason(info: ContainerInfo | undefined): string | undefined {
  if (!info) return 'the container was removed';
  const { restarts } = info;
  if (restarts > 0) return `the container crashed and was restarted ${restarts} time${restarts === 1 ? '' : 's'} by its restart policy`;
  if (info.status === 'restarting') return 'the container crashed and is being restarted by its restart policy';
  if (!info.running) return `the container ${info.status === 'exited' ? `exited with code ${info.exitCode}` : `is ${info.status}`}`;
  return undefined;
}
