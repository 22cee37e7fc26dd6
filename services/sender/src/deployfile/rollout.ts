import { SELECTOR_PREFIX, SELECTOR_SYNTAX, parseDuration, parseSelector } from '@ferry/protocol';
import { closest, type PathSegment } from './problems.ts';
import type { RawProblem } from './schema.ts';

/** Which hosts a wave takes, of those not in an earlier wave. */
export type WaveHosts =
  /** The first N (in the order the file's targets name them). */
  | { count: number }
  /** The first N% of all the release's hosts, rounded up. */
  | { percent: number }
  /** Those whose registry labels match (`role=canary`, the selector grammar). */
  | { selector: string }
  /** Those named: host ids or receiver URLs. */
  | { names: string[] };

/** A pause after a wave: a time, or until `ferry release continue`. */
export type WavePause = { ms: number } | 'manual';

export interface WaveSpec {
  name?: string;
  hosts: WaveHosts;
  pause?: WavePause;
}

/** How many hosts of one wave may fail before the release halts: a count, or a share of the wave. */
export type MaxUnhealthy = { count: number } | { percent: number };

/** `rollout:` of a deployment file: the release's hosts in waves, one after the other. */
export interface Rollout {
  waves: WaveSpec[];
  maxUnhealthy: MaxUnhealthy;
}

/** Waves written in a file; the hosts left over form one more. */
export const MAX_WAVES = 32;
/** The longest timed pause: longer ones are `manual`. */
export const MAX_PAUSE_MS = 24 * 3_600_000;
const WAVE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const KNOWN = { rollout: ['waves', 'max_unhealthy'], wave: ['name', 'hosts', 'pause'] } as const;
/** What an Ansible, Kamal or Nomad user may reach for. */
const HINTS: Record<string, string> = {
  serial: 'waves', batches: 'waves', stages: 'waves', groups: 'waves', canary: 'waves (a first wave of hosts: 1)',
  max_fail_percentage: 'max_unhealthy', max_failures: 'max_unhealthy', max_unavailable: 'max_unhealthy', maxUnhealthy: 'max_unhealthy',
  count: 'hosts', size: 'hosts', limit: 'hosts', selector: 'hosts', labels: 'hosts', wait: 'pause', delay: 'pause', min_healthy_time: 'pause',
};

type Dict = Record<string, unknown>;

function isDict(value: unknown): value is Dict {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads `rollout:`: a list of waves, or `{waves: [...], max_unhealthy}`. Each wave is
 * `{name?, hosts, pause?}`, `hosts` being a count (`1`), a share of all the hosts (`"25%"`), a
 * label selector (`role=canary`, also written `selector:role=canary`) or a list of host ids and
 * receiver URLs; `pause` a duration (`30s`, `5m`; a plain number is seconds) or `manual`.
 * `max_unhealthy` is a count of hosts, or a share of each wave's (`"10%"`); default 0. Problems
 * are pushed with the path of what is written, so they get its line.
 */
export function parseRollout(value: unknown, problems: RawProblem[], targets: ReadonlySet<string>): Rollout | undefined {
  const at: PathSegment[] = ['rollout'];
  let waves: unknown;
  let wavesAt: PathSegment[];
  let maxUnhealthy: MaxUnhealthy = { count: 0 };
  const before = problems.length;
  if (Array.isArray(value)) {
    waves = value;
    wavesAt = at;
  } else if (isDict(value)) {
    unknownKeys(value, KNOWN.rollout, at, problems);
    waves = value.waves;
    wavesAt = [...at, 'waves'];
    if (value.max_unhealthy !== undefined) maxUnhealthy = parseMaxUnhealthy(value.max_unhealthy, [...at, 'max_unhealthy'], problems) ?? maxUnhealthy;
    if (waves === undefined) problems.push({ path: at, message: 'waves: the list of waves, first to last' });
  } else {
    problems.push({ path: at, message: 'a list of waves ({hosts, pause?, name?}), or {waves: [...], max_unhealthy}' });
    return undefined;
  }
  const parsed: WaveSpec[] = [];
  if (waves !== undefined && !Array.isArray(waves)) problems.push({ path: wavesAt, message: 'a list of waves, first to last' });
  if (Array.isArray(waves)) {
    if (waves.length === 0) problems.push({ path: wavesAt, message: 'at least one wave' });
    if (waves.length > MAX_WAVES) problems.push({ path: wavesAt, message: `at most ${MAX_WAVES} waves (the hosts left over form one more)` });
    const names = new Set<string>();
    waves.forEach((raw, i) => {
      const wave = parseWave(raw, [...wavesAt, i], problems, targets);
      if (!wave) return;
      if (wave.name !== undefined) {
        if (names.has(wave.name)) problems.push({ path: [...wavesAt, i, 'name'], message: `another wave is named "${wave.name}"` });
        names.add(wave.name);
      }
      parsed.push(wave);
    });
  }
  return problems.length > before ? undefined : { waves: parsed, maxUnhealthy };
}

function parseWave(raw: unknown, at: PathSegment[], problems: RawProblem[], targets: ReadonlySet<string>): WaveSpec | undefined {
  if (!isDict(raw)) {
    problems.push({ path: at, message: 'a wave: {hosts: 1 | "25%" | role=canary | [host, …], pause?: 30s | manual, name?}' });
    return undefined;
  }
  unknownKeys(raw, KNOWN.wave, at, problems);
  let ok = true;
  let name: string | undefined;
  if (raw.name !== undefined) {
    if (typeof raw.name === 'string' && WAVE_NAME.test(raw.name)) name = raw.name;
    else { problems.push({ path: [...at, 'name'], message: 'letters, digits, ".", "_" and "-", at most 63' }); ok = false; }
  }
  const hosts = raw.hosts === undefined ? undefined : parseHosts(raw.hosts, [...at, 'hosts'], problems, targets);
  if (raw.hosts === undefined) problems.push({ path: at, message: 'hosts: which hosts the wave takes (1, "25%", role=canary, or a list)' });
  let pause: WavePause | undefined;
  if (raw.pause !== undefined && raw.pause !== null) {
    if (raw.pause === 'manual') {
      pause = 'manual';
    } else {
      const ms = typeof raw.pause === 'string' || typeof raw.pause === 'number' ? parseDuration(String(raw.pause), 's') : undefined;
      if (ms === undefined || ms > MAX_PAUSE_MS) { problems.push({ path: [...at, 'pause'], message: 'a duration up to 24h such as 30s, 5m or 1h (a plain number is seconds), or manual (until "ferry release continue")' }); ok = false; }
      else if (ms > 0) pause = { ms };
    }
  }
  if (!ok || !hosts) return undefined;
  return { ...(name !== undefined ? { name } : {}), hosts, ...(pause !== undefined ? { pause } : {}) };
}

function parseHosts(value: unknown, at: PathSegment[], problems: RawProblem[], targets: ReadonlySet<string>): WaveHosts | undefined {
  const bad = (message: string): undefined => {
    problems.push({ path: at, message });
    return undefined;
  };
  if (typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value))) {
    const count = Number(value);
    return Number.isSafeInteger(count) && count >= 1 ? { count } : bad('a number of hosts, 1 or more');
  }
  if (typeof value === 'string' && value.endsWith('%')) {
    const percent = Number(value.slice(0, -1));
    return /^\d{1,3}%$/.test(value) && percent >= 1 && percent <= 100 ? { percent } : bad('a share of the hosts from "1%" to "100%"');
  }
  if (typeof value === 'string') {
    const selector = value.startsWith(SELECTOR_PREFIX) ? value.slice(SELECTOR_PREFIX.length) : value;
    if (!selector.includes('=')) return bad(`a number of hosts (1), a share ("25%"), labels the hosts have (role=canary: ${SELECTOR_SYNTAX}) or a list of host ids and URLs`);
    try {
      parseSelector(selector);
    } catch (err) {
      return bad(`${(err as Error).message}; labels are ${SELECTOR_SYNTAX}`);
    }
    return { selector };
  }
  if (Array.isArray(value)) {
    const names: string[] = [];
    value.forEach((item, i) => {
      if (typeof item !== 'string' || !(HOST_ID.test(item) || targets.has(item))) {
        const hint = typeof item === 'string' && /^https?:\/\//.test(item) ? ` (no service targets ${item}; its targets are ${[...targets].filter((t) => !t.startsWith(SELECTOR_PREFIX)).join(', ') || 'selectors only'})` : '';
        problems.push({ path: [...at, i], message: `a host id (as the host proves it, e.g. edge-1) or a receiver URL one of the services targets${hint}` });
        return;
      }
      if (names.includes(item)) { problems.push({ path: [...at, i], message: `${item} is listed twice` }); return; }
      names.push(item);
    });
    if (value.length === 0) return bad('at least one host');
    return names.length === value.length ? { names } : undefined;
  }
  return bad('a number of hosts (1), a share ("25%"), labels (role=canary) or a list of host ids and URLs');
}

function parseMaxUnhealthy(value: unknown, at: PathSegment[], problems: RawProblem[]): MaxUnhealthy | undefined {
  if (typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value))) {
    const count = Number(value);
    if (Number.isSafeInteger(count) && count >= 0) return { count };
  } else if (typeof value === 'string' && /^\d{1,3}%$/.test(value) && Number(value.slice(0, -1)) <= 100) {
    return { percent: Number(value.slice(0, -1)) };
  }
  problems.push({ path: at, message: 'hosts of a wave that may fail before the release halts: a count (0, 1…) or a share of the wave ("10%")' });
  return undefined;
}

function unknownKeys(value: Dict, known: readonly string[], at: PathSegment[], problems: RawProblem[]): void {
  for (const key of Object.keys(value)) {
    if (known.includes(key)) continue;
    const hint = (Object.hasOwn(HINTS, key) ? HINTS[key] : undefined) ?? closest(key, known);
    problems.push({ path: [...at, key], atKey: true, message: `unknown field${hint ? ` (did you mean ${hint}?)` : ''}; known: ${known.join(', ')}` });
  }
}

/** How many hosts of a wave of `size` may fail. */
export function allowedUnhealthy(max: MaxUnhealthy, size: number): number {
  return 'count' in max ? max.count : Math.floor((max.percent * size) / 100);
}
