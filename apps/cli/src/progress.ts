import type { Writable } from 'node:stream';
import { oneLine, printable } from './terminal.ts';

const WIDTH = 24;
/** Repaints at most this often: a fast link must not spend its time redrawing. */
const REDRAW_MS = 100;

export type Stage = 'package' | 'transfer' | 'deploy';

/**
 * Where a push tells the user how it goes. Three renderings of the same calls: bars redrawn in
 * place on a terminal, plain lines when stderr is a file or a pipe, JSON lines under --json. All
 * of it goes to stderr, so stdout keeps exactly the result (one JSON object under --json).
 */
export interface Progress {
  stage(stage: 'package', detail: { image: string; compression: string }): void;
  stage(stage: 'transfer', detail: { bytes: number }): void;
  /** Package bytes handed to this target's socket: its position in the package. */
  sent(target: string, position: number): void;
  /** Every byte is there; the receiver loads and starts the image. */
  deploying(target: string): void;
  /** An attempt failed and will be made again after `delayMs`. */
  retrying(target: string, attempt: number, delayMs: number, reason: string): void;
  done(target: string, ok: boolean, state: string): void;
  /**
   * Ends the display: what follows (the summary) is printed below it, never drawn over. Called
   * before the summary and again on the way out; later calls do nothing.
   */
  close(): void;
}

export interface ProgressOptions {
  json: boolean;
  /** The targets in the order they are shown, as the user named them (receiver URLs). */
  targets: string[];
}

export function createProgress(out: Writable & { isTTY?: boolean; columns?: number }, options: ProgressOptions): Progress {
  if (options.json) return new JsonProgress(out);
  return onOneLine(out.isTTY === true ? new TtyProgress(out, options.targets.map(oneLine)) : new PlainProgress(out));
}

/**
 * Target names (receiver URLs, some from the registry), retry reasons (errors a receiver sent)
 * and states reach the terminal on one line each, without control sequences: the bars are redrawn
 * by counting lines and moving the cursor, which such text could otherwise upset.
 */
function onOneLine(progress: Progress): Progress {
  return {
    stage: (stage: 'package' | 'transfer', detail: { image?: string; compression?: string; bytes?: number }) => {
      if (stage === 'package') progress.stage('package', { image: oneLine(detail.image ?? ''), compression: oneLine(detail.compression ?? '') });
      else progress.stage('transfer', { bytes: detail.bytes ?? 0 });
    },
    sent: (target, position) => progress.sent(oneLine(target), position),
    deploying: (target) => progress.deploying(oneLine(target)),
    retrying: (target, attempt, delayMs, reason) => progress.retrying(oneLine(target), attempt, delayMs, oneLine(reason)),
    done: (target, ok, state) => progress.done(oneLine(target), ok, oneLine(state)),
    close: () => progress.close(),
  };
}

interface Row {
  target: string;
  position: number;
  /** Where this row's current attempt started, for its rate. */
  started: number;
  status: string;
}

/** One line per target, redrawn in place: bar, percentage, bytes, rate and ETA, or its state. */
class TtyProgress implements Progress {
  readonly #out: Writable & { columns?: number };
  readonly #rows: Row[];
  #total = 0;
  #drawn = 0;
  #lastDraw = 0;
  #closed = false;

  constructor(out: Writable & { columns?: number }, targets: string[]) {
    this.#out = out;
    this.#rows = targets.map((target) => ({ target, position: 0, started: performance.now(), status: 'waiting' }));
  }

  stage(stage: 'package' | 'transfer', detail: { image?: string; compression?: string; bytes?: number }): void {
    if (stage === 'package') this.#print(`packaging ${detail.image ?? ''} (${detail.compression ?? ''})…`);
    else {
      this.#total = detail.bytes ?? 0;
      const now = performance.now();
      for (const row of this.#rows) { row.status = 'sending'; row.started = now; }
      this.#draw(true);
    }
  }

  sent(target: string, position: number): void {
    const row = this.#row(target);
    row.position = position;
    row.status = 'sending';
    this.#draw(false);
  }

  deploying(target: string): void {
    this.#row(target).status = 'deploying';
    this.#draw(true);
  }

  retrying(target: string, attempt: number, delayMs: number, reason: string): void {
    const row = this.#row(target);
    row.status = `retry ${attempt + 1} in ${formatMs(delayMs)}`;
    row.started = performance.now();
    this.#print(`  retrying ${target} (attempt ${attempt + 1}) in ${formatMs(delayMs)}: ${reason}`);
  }

  done(target: string, ok: boolean, state: string): void {
    this.#row(target).status = `${ok ? '✔' : '✖'} ${state}`;
    this.#draw(true);
  }

  close(): void {
    if (this.#closed) return;
    this.#draw(true);
    this.#closed = true;
    // The bars stay as drawn; nothing moves the cursor back over them any more.
    this.#drawn = 0;
  }

  #row(target: string): Row {
    let row = this.#rows.find((r) => r.target === target);
    if (!row) {
      row = { target, position: 0, started: performance.now(), status: 'sending' };
      this.#rows.push(row);
    }
    return row;
  }

  /** A line above the bars: the bars are wiped, the line printed, the bars drawn again below it. */
  #print(text: string): void {
    if (this.#closed) {
      this.#out.write(`${text}\n`);
      return;
    }
    this.#wipe();
    this.#out.write(`${text}\n`);
    this.#draw(true);
  }

  #wipe(): void {
    if (this.#drawn > 0) this.#out.write(`\x1b[${this.#drawn}A\x1b[J`);
    this.#drawn = 0;
  }

  #draw(force: boolean): void {
    if (this.#total === 0 || this.#closed) return;
    const now = performance.now();
    if (!force && now - this.#lastDraw < REDRAW_MS) return;
    this.#lastDraw = now;
    const columns = (this.#out.columns ?? 120) - 1;
    const name = Math.min(32, Math.max(...this.#rows.map((r) => r.target.length)));
    // Narrow terminals give up bar before they give up the state at the end of the line.
    const width = Math.max(8, Math.min(WIDTH, columns - name - 58));
    const text = this.#rows.map((row) => `${row.target.slice(-name).padEnd(name)} ${this.#describe(row, now, width)}`.slice(0, columns));
    const up = this.#drawn > 0 ? `\x1b[${this.#drawn}A` : '';
    this.#out.write(`${up}${text.map((t) => `\r${t}\x1b[K\n`).join('')}`);
    this.#drawn = text.length;
  }

  #describe(row: Row, now: number, width: number): string {
    const fraction = this.#total > 0 ? Math.min(1, row.position / this.#total) : 1;
    const filled = Math.round(fraction * width);
    const bar = `${'█'.repeat(filled)}${'░'.repeat(width - filled)}`;
    const head = `${bar} ${(fraction * 100).toFixed(0).padStart(3)}% ${formatBytes(row.position)}/${formatBytes(this.#total)}`;
    if (row.status !== 'sending') return `${head} ${row.status}`;
    const seconds = (now - row.started) / 1000;
    const rate = seconds > 0 ? row.position / seconds : 0;
    const eta = rate > 0 ? (this.#total - row.position) / rate : Infinity;
    return `${head} ${formatBytes(rate)}/s ETA ${formatDuration(eta)}`;
  }
}

/** Lines for a log file or CI: each stage, each quarter of each target's transfer, each outcome. */
class PlainProgress implements Progress {
  readonly #out: Writable;
  readonly #quarters = new Map<string, number>();
  #total = 0;

  constructor(out: Writable) {
    this.#out = out;
  }

  stage(stage: 'package' | 'transfer', detail: { image?: string; compression?: string; bytes?: number }): void {
    if (stage === 'package') this.#line(`packaging ${detail.image ?? ''} (${detail.compression ?? ''})`);
    else {
      this.#total = detail.bytes ?? 0;
      this.#line(`sending ${formatBytes(this.#total)}`);
    }
  }

  sent(target: string, position: number): void {
    if (this.#total === 0) return;
    const quarter = Math.floor((4 * Math.min(position, this.#total)) / this.#total);
    if (quarter <= (this.#quarters.get(target) ?? 0)) return;
    this.#quarters.set(target, quarter);
    this.#line(`${target} ${quarter * 25}% ${formatBytes(position)}/${formatBytes(this.#total)}`);
  }

  deploying(target: string): void {
    this.#line(`${target} deploying`);
  }

  retrying(target: string, attempt: number, delayMs: number, reason: string): void {
    // A resumed transfer reports its quarters again from where it stands.
    this.#quarters.delete(target);
    this.#line(`  retrying ${target} (attempt ${attempt + 1}) in ${formatMs(delayMs)}: ${reason}`);
  }

  done(target: string, ok: boolean, state: string): void {
    this.#line(`${target} ${ok ? 'done' : 'failed'}: ${state}`);
  }

  close(): void {}

  #line(text: string): void {
    this.#out.write(`${text}\n`);
  }
}

/**
 * One JSON object per line, `{"progress": kind, …}`, so tools can follow a push. Byte positions
 * are reported at most every REDRAW_MS per target and at the end.
 */
class JsonProgress implements Progress {
  readonly #out: Writable;
  readonly #last = new Map<string, number>();
  #total = 0;

  constructor(out: Writable) {
    this.#out = out;
  }

  stage(stage: 'package' | 'transfer', detail: { image?: string; compression?: string; bytes?: number }): void {
    if (stage === 'transfer') this.#total = detail.bytes ?? 0;
    this.#emit({ progress: 'stage', stage, ...detail });
  }

  sent(target: string, position: number): void {
    const now = performance.now();
    if (position < this.#total && now - (this.#last.get(target) ?? -Infinity) < REDRAW_MS) return;
    this.#last.set(target, now);
    this.#emit({ progress: 'sent', target, bytes: position, total: this.#total });
  }

  deploying(target: string): void {
    this.#emit({ progress: 'stage', stage: 'deploy', target });
  }

  retrying(target: string, attempt: number, delayMs: number, reason: string): void {
    this.#emit({ progress: 'retry', target, attempt: attempt + 1, delayMs, reason });
  }

  done(target: string, ok: boolean, state: string): void {
    this.#emit({ progress: 'done', target, ok, state });
  }

  close(): void {}

  #emit(record: Record<string, unknown>): void {
    this.#out.write(`${printable(JSON.stringify({ time: new Date().toISOString(), ...record }))}\n`);
  }
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--';
  if (seconds < 60) return `${Math.ceil(seconds)}s`;
  return `${Math.floor(seconds / 60)}m${String(Math.ceil(seconds % 60)).padStart(2, '0')}s`;
}

export function formatMs(ms: number | undefined): string {
  if (ms === undefined) return '-';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}
