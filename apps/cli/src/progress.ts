import type { Writable } from 'node:stream';
import type { HealthCheckProgress } from '@ferry/protocol';
import { oneLine, printable } from './terminal.ts';

const WIDTH = 24;
/** Repaints at most this often: a fast link must not spend its time redrawing. */
const REDRAW_MS = 100;
/** A JSON `sent` line per target at most this often (and always the last position). */
const JSON_EVERY_MS = 500;
/** Without a terminal, a target's position is printed at each quarter, and at least this often. */
const PLAIN_EVERY_MS = 5000;
/** The rate is what the last few seconds carried: a stalled or resumed link shows at once. */
const RATE_WINDOW_MS = 5000;
/** Samples of a target's position are kept this far apart at least. */
const SAMPLE_MS = 100;

export type Stage = 'package' | 'transfer' | 'deploy';

/** A package's size as far as it is known: a stream's is an estimate until its last byte. */
export interface Total {
  bytes: number;
  estimated: boolean;
}

/** Where a target was left when the push was interrupted. */
export interface TargetLeft {
  target: string;
  /** `not started`, `interrupted` (mid-transfer), `deploying` (every byte sent, the receiver was at it), `deployed`, `failed`. */
  state: 'not started' | 'interrupted' | 'deploying' | 'deployed' | 'failed';
  /** Package bytes the target had acknowledged (or been handed). */
  bytes: number;
  total?: Total;
  /** The receiver's last known deployment state, or the target's final one. */
  deployment?: string;
  /** The same in words, for a person. */
  text: string;
}

/**
 * Where a push tells the user how it goes. Three renderings of the same calls: a line per target
 * redrawn in place on a terminal, plain lines when stderr is a file or a pipe, JSON lines under
 * --json. All of it goes to stderr, so stdout keeps exactly the result (one JSON object under --json).
 */
export interface Progress {
  stage(stage: 'package', detail: { image: string; compression: string }): void;
  /** The transfer begins: `bytes` is the package's size, 0 when it is streamed while the image is read. */
  stage(stage: 'transfer', detail: { bytes: number }): void;
  /** Package bytes this target acknowledged or was handed: its position in the package. */
  sent(target: string, position: number, total?: Total): void;
  /** Every byte is there; the receiver loads and starts the image. */
  deploying(target: string): void;
  /** A state the receiver's deployment entered (its journal's: LOADING, DEPLOYING, VALIDATING…), with the health check's progress. */
  deployState(target: string, state: string, check?: HealthCheckProgress): void;
  /** An attempt failed and will be made again after `delayMs`. */
  retrying(target: string, attempt: number, delayMs: number, reason: string): void;
  done(target: string, ok: boolean, state: string): void;
  /**
   * The push was interrupted: ends the display and prints, for every target, where it was left
   * (a JSON line each under --json); answers the same as data.
   */
  interrupted(): TargetLeft[];
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
  /** The service, for the `ferry status` a person is pointed to after an interruption. */
  service?: string;
}

export function createProgress(out: Writable & { isTTY?: boolean; columns?: number }, options: ProgressOptions): Progress {
  const board = new Board(options.targets.map(oneLine), options.service === undefined ? undefined : oneLine(options.service));
  if (options.json) return onOneLine(new JsonProgress(out, board));
  return onOneLine(out.isTTY === true ? new TtyProgress(out, board) : new PlainProgress(out, board));
}

/**
 * Target names (receiver URLs, some from the registry), retry reasons (errors a receiver sent)
 * and states reach the terminal on one line each, without control sequences: the lines are
 * redrawn by counting them and moving the cursor, which such text could otherwise upset.
 */
function onOneLine(progress: Progress): Progress {
  return {
    stage: (stage: 'package' | 'transfer', detail: { image?: string; compression?: string; bytes?: number }) => {
      if (stage === 'package') progress.stage('package', { image: oneLine(detail.image ?? ''), compression: oneLine(detail.compression ?? '') });
      else progress.stage('transfer', { bytes: detail.bytes ?? 0 });
    },
    sent: (target, position, total) => progress.sent(oneLine(target), position, total),
    deploying: (target) => progress.deploying(oneLine(target)),
    deployState: (target, state, check) => {
      // The journal's first states say what the transfer already showed.
      if (state === 'PENDING' || state === 'RECEIVING') return;
      const probes = check ? { attempts: count(check.attempts), retries: count(check.retries), lastOk: check.lastOk === true } : undefined;
      progress.deployState(oneLine(target), oneLine(state).slice(0, 40), probes);
    },
    retrying: (target, attempt, delayMs, reason) => progress.retrying(oneLine(target), attempt, delayMs, oneLine(reason)),
    done: (target, ok, state) => progress.done(oneLine(target), ok, oneLine(state)),
    interrupted: () => progress.interrupted(),
    close: () => progress.close(),
  };
}

/** A count a receiver sent, as a number whatever it sent. */
function count(value: unknown): number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : 0;
}

type Phase = 'waiting' | 'sending' | 'retrying' | 'deploying' | 'done' | 'failed';

/** One target as the push goes: where it stands, and the samples its rate comes from. */
interface Row {
  target: string;
  phase: Phase;
  position: number;
  total: Total | undefined;
  /** Recent (time, position) pairs, oldest first. */
  samples: [number, number][];
  /** The receiver's deployment state, while it deploys; the final state once done. */
  state: string | undefined;
  /** The health check's progress, while the receiver runs it. */
  check: HealthCheckProgress | undefined;
  /** The retry's words, while one is awaited. */
  retry: string | undefined;
}

/** What every rendering shares: each target's row, its rate and ETA, and where it was left. */
class Board {
  readonly rows: Row[];
  readonly service: string | undefined;

  constructor(targets: string[], service: string | undefined) {
    this.rows = targets.map((target) => newRow(target));
    this.service = service;
  }

  row(target: string): Row {
    let row = this.rows.find((r) => r.target === target);
    if (!row) {
      row = newRow(target);
      this.rows.push(row);
    }
    return row;
  }

  sent(target: string, position: number, total: Total | undefined, now: number): Row {
    const row = this.row(target);
    // Fewer bytes than before: the package started over (another compression, a new attempt).
    if (position < row.position) row.samples = [];
    row.position = position;
    if (total) row.total = total;
    row.phase = 'sending';
    row.retry = undefined;
    // A sample per SAMPLE_MS at most: a one-shot upload reports every 64 KiB it hands over.
    if (row.samples.length > 1 && now - (row.samples.at(-2)?.[0] ?? now) < SAMPLE_MS) row.samples[row.samples.length - 1] = [now, position];
    else row.samples.push([now, position]);
    while (row.samples.length > 2 && now - (row.samples[1]?.[0] ?? now) >= RATE_WINDOW_MS) row.samples.shift();
    return row;
  }

  /** Every byte is there: the position is the package's size now, estimated or not before. */
  deploying(target: string): Row {
    const row = this.row(target);
    row.phase = 'deploying';
    row.total = { bytes: row.position, estimated: false };
    return row;
  }

  deployState(target: string, state: string, check: HealthCheckProgress | undefined): Row {
    const row = this.row(target);
    if (row.phase !== 'deploying') this.deploying(target);
    row.state = state;
    row.check = check;
    return row;
  }

  retrying(target: string, text: string): Row {
    const row = this.row(target);
    row.phase = 'retrying';
    row.retry = text;
    row.samples = [];
    return row;
  }

  done(target: string, ok: boolean, state: string): Row {
    const row = this.row(target);
    row.phase = ok ? 'done' : 'failed';
    row.state = state;
    return row;
  }

  /** Bytes per second over the last few seconds; 0 before a second sample. */
  rate(row: Row): number {
    const first = row.samples[0];
    const last = row.samples.at(-1);
    if (!first || !last || last[0] <= first[0]) return 0;
    return ((last[1] - first[1]) * 1000) / (last[0] - first[0]);
  }

  /** Seconds left at the current rate, when the size is known (an estimate past which the stream went is not). */
  eta(row: Row): number | undefined {
    const rate = this.rate(row);
    if (!row.total || rate <= 0 || row.position > row.total.bytes) return undefined;
    return (row.total.bytes - row.position) / rate;
  }

  left(): TargetLeft[] {
    return this.rows.map((row) => {
      const base = { target: row.target, bytes: row.position, ...(row.total ? { total: row.total } : {}) };
      switch (row.phase) {
        case 'done':
          return { ...base, state: 'deployed', deployment: row.state ?? 'COMPLETED', text: `deployed (${row.state ?? 'COMPLETED'})` };
        case 'failed':
          return { ...base, state: 'failed', deployment: row.state ?? 'FAILED', text: `failed: ${row.state ?? 'FAILED'}` };
        case 'deploying': {
          const status = `ferry status --to ${row.target}${this.service ? ` --service ${this.service}` : ''}`;
          return {
            ...base, state: 'deploying', ...(row.state ? { deployment: row.state } : {}),
            text: `every byte sent; the receiver was ${row.state ? deployText(row) : 'deploying it'}, and may still finish: see ${status}`,
          };
        }
        default:
          if (row.position === 0 && row.phase === 'waiting') return { ...base, state: 'not started', text: 'not started' };
          return { ...base, state: 'interrupted', text: `interrupted at ${amount(row)}; nothing was deployed there (a new push sends the package again)` };
      }
    });
  }
}

function newRow(target: string): Row {
  return { target, phase: 'waiting', position: 0, total: undefined, samples: [], state: undefined, check: undefined, retry: undefined };
}

/** "102 MB of ~212 MB", "102 MB of 212 MB" or "102 MB". */
function amount(row: Row): string {
  if (!row.total || row.position > row.total.bytes) return formatBytes(row.position);
  return `${formatBytes(row.position)} of ${row.total.estimated ? '~' : ''}${formatBytes(row.total.bytes)}`;
}

/** What a receiver's deployment state means, in words. */
const STATE_TEXT: Readonly<Record<string, string>> = {
  PENDING: 'pending', RECEIVING: 'receiving', VERIFYING: 'verifying the package', LOADING: 'loading the image',
  DEPLOYING: 'starting the container', VALIDATING: 'running the health check', ROLLING_BACK: 'rolling back',
  COMPLETED: 'completed', ROLLED_BACK: 'rolled back', FAILED: 'failed',
};

function stateText(state: string): string {
  return Object.hasOwn(STATE_TEXT, state) ? STATE_TEXT[state] ?? state : state;
}

/** What the receiver does now: its state in words, and how far the health check got while it runs. */
function deployText(row: Row): string {
  const { check } = row;
  if (row.state !== 'VALIDATING' || !check) return stateText(row.state ?? 'DEPLOYING');
  return `running the health check: probe ${check.attempts} of ${check.retries} ${check.lastOk ? 'passed' : 'failed'}`;
}

/** One line per target, redrawn in place: bar, percentage, bytes, rate and ETA, or its state. */
class TtyProgress implements Progress {
  readonly #out: Writable & { columns?: number };
  readonly #board: Board;
  #transferring = false;
  #drawn = 0;
  #lastDraw = 0;
  #closed = false;

  constructor(out: Writable & { columns?: number }, board: Board) {
    this.#out = out;
    this.#board = board;
  }

  stage(stage: 'package' | 'transfer', detail: { image?: string; compression?: string; bytes?: number }): void {
    if (stage === 'package') {
      this.#print(`packaging ${detail.image ?? ''} (${detail.compression ?? ''})…`);
      return;
    }
    this.#transferring = true;
    this.#draw(true);
  }

  sent(target: string, position: number, total?: Total): void {
    this.#transferring = true;
    this.#board.sent(target, position, total, performance.now());
    this.#draw(false);
  }

  deploying(target: string): void {
    this.#board.deploying(target);
    this.#draw(true);
  }

  deployState(target: string, state: string, check?: HealthCheckProgress): void {
    this.#board.deployState(target, state, check);
    this.#draw(true);
  }

  retrying(target: string, attempt: number, delayMs: number, reason: string): void {
    this.#board.retrying(target, `retry ${attempt + 1} in ${formatMs(delayMs)}`);
    this.#print(`  retrying ${target} (attempt ${attempt + 1}) in ${formatMs(delayMs)}: ${reason}`);
  }

  done(target: string, ok: boolean, state: string): void {
    this.#board.done(target, ok, state);
    this.#draw(true);
  }

  interrupted(): TargetLeft[] {
    this.close();
    const left = this.#board.left();
    this.#out.write('\r✖ interrupted\x1b[K\n');
    for (const target of left) this.#out.write(`  ${target.target}  ${target.text}\n`);
    return left;
  }

  close(): void {
    if (this.#closed) return;
    this.#draw(true);
    this.#closed = true;
    // The lines stay as drawn; nothing moves the cursor back over them any more.
    this.#drawn = 0;
  }

  /** A line above the targets' lines: those are wiped, the line printed, and they are drawn again below it. */
  #print(text: string): void {
    if (!this.#closed) this.#wipe();
    this.#out.write(`${text}\n`);
    this.#draw(true);
  }

  #wipe(): void {
    if (this.#drawn > 0) this.#out.write(`\x1b[${this.#drawn}A\x1b[J`);
    this.#drawn = 0;
  }

  #draw(force: boolean): void {
    if (!this.#transferring || this.#closed) return;
    const now = performance.now();
    if (!force && now - this.#lastDraw < REDRAW_MS) return;
    this.#lastDraw = now;
    // A pseudo-terminal whose size was never set says 0 columns.
    const columns = (this.#out.columns || 80) - 1;
    const rows = this.#board.rows;
    const name = Math.min(32, Math.max(...rows.map((r) => r.target.length)));
    // Narrow terminals give up bar before they give up the state at the end of the line.
    const width = Math.max(8, Math.min(WIDTH, columns - name - 58));
    const text = rows.map((row) => `${row.target.slice(-name).padEnd(name)} ${this.#describe(row, width)}`.slice(0, columns));
    const up = this.#drawn > 0 ? `\x1b[${this.#drawn}A` : '';
    this.#out.write(`${up}${text.map((t) => `\r${t}\x1b[K\n`).join('')}`);
    this.#drawn = text.length;
  }

  #describe(row: Row, width: number): string {
    const { total } = row;
    const known = total !== undefined && row.position <= total.bytes;
    const sentAll = row.phase === 'deploying' || row.phase === 'done';
    const fraction = sentAll ? 1 : known ? row.position / Math.max(1, total.bytes) : 0;
    const filled = Math.round(fraction * width);
    const bar = `${'█'.repeat(filled)}${'░'.repeat(width - filled)}`;
    const percent = sentAll || known ? `${(fraction * 100).toFixed(0).padStart(3)}%` : '    ';
    const head = `${bar} ${percent} ${sentAll ? formatBytes(row.position) : amount(row)}`;
    switch (row.phase) {
      case 'waiting': return row.position === 0 ? `${bar}      waiting` : head;
      case 'retrying': return `${head} ${row.retry ?? ''}`;
      case 'deploying': return `${head} ${row.state ? deployText(row) : 'deploying'}…`;
      case 'done': return `${head} ✔ ${row.state ?? ''}`;
      case 'failed': return `${head} ✖ ${row.state ?? ''}`;
      case 'sending': {
        const rate = this.#board.rate(row);
        const eta = this.#board.eta(row);
        return `${head} ${rate > 0 ? `${formatBytes(rate)}/s` : '-'}${known ? ` ETA ${eta === undefined ? '--' : `${total.estimated ? '~' : ''}${formatDuration(eta)}`}` : ''}`;
      }
    }
  }
}

/** Lines for a log file or CI: each stage, each target's position at each quarter and every few seconds, each outcome. */
class PlainProgress implements Progress {
  readonly #out: Writable;
  readonly #board: Board;
  /** Per target: the last quarter printed and when its last line was. */
  readonly #printed = new Map<string, { quarter: number; at: number }>();

  constructor(out: Writable, board: Board) {
    this.#out = out;
    this.#board = board;
  }

  stage(stage: 'package' | 'transfer', detail: { image?: string; compression?: string; bytes?: number }): void {
    if (stage === 'package') this.#line(`packaging ${detail.image ?? ''} (${detail.compression ?? ''})`);
    else this.#line(detail.bytes ? `sending ${formatBytes(detail.bytes)}` : 'sending while the image is read');
  }

  sent(target: string, position: number, total?: Total): void {
    const now = performance.now();
    const row = this.#board.sent(target, position, total, now);
    const known = row.total !== undefined && position <= row.total.bytes;
    const quarter = known && row.total ? Math.floor((4 * position) / Math.max(1, row.total.bytes)) : 0;
    let last = this.#printed.get(target);
    if (!last) {
      last = { quarter: 0, at: now };
      this.#printed.set(target, last);
    }
    if (quarter <= last.quarter && now - last.at < PLAIN_EVERY_MS) return;
    last.quarter = Math.max(quarter, last.quarter);
    last.at = now;
    const rate = this.#board.rate(row);
    const eta = this.#board.eta(row);
    const percent = known && row.total ? `${Math.floor((100 * position) / Math.max(1, row.total.bytes))}% ` : '';
    this.#line(`${target} ${percent}${amount(row)}${rate > 0 ? `, ${formatBytes(rate)}/s` : ''}${eta === undefined ? '' : `, ETA ${row.total?.estimated ? '~' : ''}${formatDuration(eta)}`}`);
  }

  deploying(target: string): void {
    const row = this.#board.deploying(target);
    this.#line(`${target} ${formatBytes(row.position)} sent; deploying`);
  }

  deployState(target: string, state: string, check?: HealthCheckProgress): void {
    this.#line(`${target} ${deployText(this.#board.deployState(target, state, check))}`);
  }

  retrying(target: string, attempt: number, delayMs: number, reason: string): void {
    this.#board.retrying(target, `retry ${attempt + 1} in ${formatMs(delayMs)}`);
    // A resumed transfer reports its quarters again from where it stands.
    this.#printed.delete(target);
    this.#line(`  retrying ${target} (attempt ${attempt + 1}) in ${formatMs(delayMs)}: ${reason}`);
  }

  done(target: string, ok: boolean, state: string): void {
    this.#board.done(target, ok, state);
    this.#line(`${target} ${ok ? 'done' : 'failed'}: ${state}`);
  }

  interrupted(): TargetLeft[] {
    const left = this.#board.left();
    this.#line('interrupted');
    for (const target of left) this.#line(`  ${target.target}  ${target.text}`);
    return left;
  }

  close(): void {}

  #line(text: string): void {
    this.#out.write(`${text}\n`);
  }
}

/**
 * One JSON object per line, `{"time", "progress": kind, …}`, so tools can follow a push (the
 * kinds are listed in `ferry push --help` and docs/usage.md). A target's position is reported at
 * most every JSON_EVERY_MS, and always once it reached the package's size.
 */
class JsonProgress implements Progress {
  readonly #out: Writable;
  readonly #board: Board;
  /** Per target: when its last `sent` line was, and the position it gave. */
  readonly #last = new Map<string, { at: number; bytes: number }>();

  constructor(out: Writable, board: Board) {
    this.#out = out;
    this.#board = board;
  }

  stage(stage: 'package' | 'transfer', detail: { image?: string; compression?: string; bytes?: number }): void {
    this.#emit({ progress: 'stage', stage, ...detail });
  }

  sent(target: string, position: number, total?: Total): void {
    const now = performance.now();
    const row = this.#board.sent(target, position, total, now);
    const last = this.#last.get(target);
    // The same position again (an acknowledgement of bytes already handed over) is no news.
    if (last?.bytes === position) return;
    const end = row.total !== undefined && !row.total.estimated && position >= row.total.bytes;
    if (!end && now - (last?.at ?? -Infinity) < JSON_EVERY_MS) return;
    this.#sentLine(row, now);
  }

  deploying(target: string): void {
    const row = this.#board.deploying(target);
    // A stream's size is known only now: its last position is always reported.
    if (this.#last.get(target)?.bytes !== row.position) this.#sentLine(row, performance.now());
    this.#emit({ progress: 'stage', stage: 'deploy', target });
  }

  deployState(target: string, state: string, check?: HealthCheckProgress): void {
    this.#board.deployState(target, state, check);
    this.#emit({ progress: 'deploy', target, state, ...(check ? { probes: check.attempts, retries: check.retries, lastOk: check.lastOk } : {}) });
  }

  retrying(target: string, attempt: number, delayMs: number, reason: string): void {
    this.#board.retrying(target, '');
    this.#emit({ progress: 'retry', target, attempt: attempt + 1, delayMs, reason });
  }

  done(target: string, ok: boolean, state: string): void {
    this.#board.done(target, ok, state);
    this.#emit({ progress: 'done', target, ok, state });
  }

  interrupted(): TargetLeft[] {
    const left = this.#board.left();
    for (const target of left) {
      this.#emit({
        progress: 'interrupted', target: target.target, state: target.state, bytes: target.bytes,
        ...(target.total ? { total: target.total.bytes, estimated: target.total.estimated } : {}),
        ...(target.deployment ? { deployment: target.deployment } : {}),
      });
    }
    return left;
  }

  close(): void {}

  #sentLine(row: Row, now: number): void {
    this.#last.set(row.target, { at: now, bytes: row.position });
    const eta = this.#board.eta(row);
    this.#emit({
      progress: 'sent', target: row.target, bytes: row.position,
      ...(row.total ? { total: row.total.bytes, estimated: row.total.estimated } : {}),
      bytesPerSecond: Math.round(this.#board.rate(row)), ...(eta === undefined ? {} : { etaSeconds: Math.ceil(eta) }),
    });
  }

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
  const whole = Math.ceil(seconds);
  if (whole < 60) return `${whole}s`;
  return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, '0')}s`;
}

export function formatMs(ms: number | undefined): string {
  if (ms === undefined) return '-';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}
