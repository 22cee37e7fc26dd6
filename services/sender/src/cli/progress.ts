import type { WriteStream } from 'node:tty';

const WIDTH = 28;

/**
 * One line redrawn in place on a terminal: bytes, rate and ETA. Drawing is throttled so a fast
 * link does not spend its time repainting.
 */
export class ProgressBar {
  readonly #out: WriteStream;
  readonly #total: number;
  readonly #label: string;
  readonly #started = performance.now();
  #lastDraw = 0;

  constructor(out: WriteStream, total: number, label: string) {
    this.#out = out;
    this.#total = total;
    this.#label = label;
  }

  update(done: number): void {
    const now = performance.now();
    if (now - this.#lastDraw < 100 && done < this.#total) return;
    this.#lastDraw = now;
    const fraction = this.#total > 0 ? Math.min(1, done / this.#total) : 1;
    const seconds = (now - this.#started) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    const eta = rate > 0 ? (this.#total - done) / rate : Infinity;
    const filled = Math.round(fraction * WIDTH);
    const bar = `${'█'.repeat(filled)}${'░'.repeat(WIDTH - filled)}`;
    const line = `${this.#label} ${bar} ${(fraction * 100).toFixed(0).padStart(3)}% ${formatBytes(done)}/${formatBytes(this.#total)} ${formatBytes(rate)}/s ETA ${formatDuration(eta)}`;
    this.#out.write(`\r${line.slice(0, (this.#out.columns || 120) - 1)}\x1b[K`);
  }

  finish(): void {
    this.update(this.#total);
    this.#out.write('\n');
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
