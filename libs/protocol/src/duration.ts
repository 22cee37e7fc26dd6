/**
 * Durations as people write them, for every Ferry flag and file field that takes one: `500ms`,
 * `2s`, `1.5m`, `1h`, `7d`, or Go's (and so `docker run --health-interval`'s) compound form,
 * `1m30s`. A plain number is in `bareUnit`: each setting keeps the unit it always had.
 */
export type DurationUnit = 'ms' | 's' | 'm' | 'h' | 'd';

export const DURATION_UNIT_MS: Readonly<Record<DurationUnit, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

// `ms` before `m`, so that `500ms` is not read as 500 minutes and a stray "s".
const PART = /(\d{1,12}(?:\.\d{1,9})?)(ms|s|m|h|d)/y;
const BARE = /^\d{1,15}(?:\.\d{1,9})?$/;

/**
 * Milliseconds (rounded to a whole one), or undefined when `text` is not a duration. Only digits,
 * units and one optional fraction per part: no sign, no spaces, no exponent, nothing after.
 */
export function parseDuration(text: string, bareUnit: DurationUnit): number | undefined {
  if (BARE.test(text)) return Math.round(Number(text) * DURATION_UNIT_MS[bareUnit]);
  if (text === '' || text.length > 64) return undefined;
  let ms = 0;
  PART.lastIndex = 0;
  while (PART.lastIndex < text.length) {
    const match = PART.exec(text);
    if (!match) return undefined;
    ms += Number(match[1]) * DURATION_UNIT_MS[match[2] as DurationUnit];
  }
  return Number.isSafeInteger(Math.round(ms)) ? Math.round(ms) : undefined;
}

/** `90000` → `1m30s`, `1500` → `1.5s`, `250` → `250ms`: how help texts and errors show a bound. */
export function durationText(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  if (ms % 1000 !== 0) return `${ms / 1000}s`;
  let rest = ms / 1000;
  let text = '';
  for (const [unit, seconds] of [['d', 86_400], ['h', 3600], ['m', 60], ['s', 1]] as const) {
    if (rest >= seconds) {
      text += `${Math.floor(rest / seconds)}${unit}`;
      rest %= seconds;
    }
  }
  return text;
}
