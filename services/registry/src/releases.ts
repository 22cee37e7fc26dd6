import type { ProjectedRelease, ReleaseSummary } from '@ferry/auth';
import {
  RELEASE_ID_PATTERN, RELEASE_OUTCOMES, SERVICE_NAME_PATTERN, isReleaseEventType,
  type ReleaseOutcome, type ReleaseService, type ReleaseState,
} from '@ferry/protocol';

/*
 * The registry's projection of releases: one record per release id, made from the sender's
 * release.* events (the plan, the steps, the end) and from the receivers' deployment events that
 * carry `data.release` (each host's outcome of each service). Both come from the stream, so
 * everything here is bounded: a key that may deploy could otherwise grow one record without end.
 */

/** Services a record lists at most; more in a release.started are left out. */
export const MAX_RELEASE_SERVICES = 128;
/** Hosts a record knows at most (by waves and outcomes). */
export const MAX_RELEASE_HOSTS = 256;
/** Outcome cells (host × service) a record holds at most. */
export const MAX_RELEASE_OUTCOMES = 4096;
/** Phases and waves a record names at most (the manifest's release reference allows 64 phases). */
export const MAX_RELEASE_PHASES = 64;
export const MAX_RELEASE_WAVES = 64;
/** Completed steps (phase of a wave, wave) a record remembers. */
const MAX_STEPS = 256;
/** Releases the registry keeps; the oldest (by id, i.e. by when they were made) go first. */
export const RELEASES_LIMIT = 1000;

const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const ERROR_CODE = /^FERRY_ERR_[A-Z0-9_]{1,64}$/;

// The wire shapes, defined once with the client that reads them.
export type { ProjectedRelease, ReleaseSummary };

// Which outcome may replace which: a later step of the same (host, service) wins, but nothing goes
// back to `deploying` from an end, nor from a rollback's end to a deploy's, whatever order two
// publishers' events reach the stream in.
const RANK: Record<ReleaseOutcome, number> = {
  pending: 0, deploying: 1, healthy: 2, failed: 2, skipped: 2, 'rolled-back': 3, 'rollback-failed': 3,
};
const TERMINAL: ReadonlySet<ReleaseState> = new Set(['completed', 'rolled-back']);

type Data = Record<string, unknown>;

/**
 * Applies a release event or a deployment event of a release to `releases` (mutated); answers the
 * record it changed, or undefined when the event concerns no release (or says nothing usable).
 * `signer` is the key id a release event was admitted with. Pure: a replay gives the same records.
 */
export function applyReleaseEvent(
  releases: Record<string, ProjectedRelease>, type: string, time: string, data: Data, signer?: string,
): { id: string; value: ProjectedRelease; removed?: string } | undefined {
  if (isReleaseEventType(type)) {
    const id = data.releaseId;
    if (typeof id !== 'string' || !RELEASE_ID_PATTERN.test(id)) return undefined;
    const { record, removed } = recordFor(releases, id, time);
    applyStep(record, type, time, data, signer);
    touch(record, time);
    return { id, value: record, ...(removed === undefined ? {} : { removed }) };
  }
  const ref = data.release;
  if (typeof ref !== 'object' || ref === null) return undefined;
  const id = (ref as Data).id;
  const host = data.host;
  const service = data.service;
  if (typeof id !== 'string' || !RELEASE_ID_PATTERN.test(id) || typeof host !== 'string' || typeof service !== 'string') return undefined;
  const outcome = deploymentOutcome(type);
  if (outcome === undefined) return undefined;
  const { record, removed } = recordFor(releases, id, time);
  setOutcome(record, host, service, outcome);
  touch(record, time);
  return { id, value: record, ...(removed === undefined ? {} : { removed }) };
}

/** What a receiver's deployment event says of its service's outcome on its host. */
function deploymentOutcome(type: string): ReleaseOutcome | undefined {
  switch (type) {
    case 'deployment.completed': return 'healthy';
    case 'deployment.failed': return 'failed';
    case 'deployment.removed': return 'rolled-back';
    case 'package.verified': case 'image.loaded': case 'container.started': case 'healthcheck.passed': case 'healthcheck.failed':
      return 'deploying';
    default: return undefined;
  }
}

function recordFor(releases: Record<string, ProjectedRelease>, id: string, time: string): { record: ProjectedRelease; removed?: string } {
  const known = Object.hasOwn(releases, id) ? releases[id] : undefined;
  if (known) return { record: known };
  // A receiver's event may be stored before the sender's release.started: the record starts bare.
  const record: ProjectedRelease = {
    id, createdAt: time, updatedAt: time, project: '', state: 'in-progress', phases: [], services: [], waves: [], outcomes: Object.create(null) as ProjectedRelease['outcomes'],
    completed: { phases: [], waves: [] },
  };
  Object.defineProperty(releases, id, { value: record, writable: true, enumerable: true, configurable: true });
  const ids = Object.keys(releases);
  if (ids.length <= RELEASES_LIMIT) return { record };
  // Ids sort as the releases were made: the oldest goes, the same way in a replay.
  const oldest = ids.reduce((a, b) => (a < b ? a : b));
  delete releases[oldest];
  return oldest === id ? { record } : { record, removed: oldest };
}

function touch(record: ProjectedRelease, time: string): void {
  if (time > record.updatedAt) record.updatedAt = time;
  if (time < record.createdAt) record.createdAt = time;
}

function applyStep(record: ProjectedRelease, type: string, time: string, data: Data, signer: string | undefined): void {
  const terminal = TERMINAL.has(record.state);
  switch (type) {
    case 'release.started': {
      record.project = text(data.project, 128) ?? record.project;
      record.phases = strings(data.phases, MAX_RELEASE_PHASES, 64);
      record.services = releaseServices(data.services);
      record.waves = waves(data.waves);
      const previous = data.previousId;
      if (typeof previous === 'string' && RELEASE_ID_PATTERN.test(previous)) record.previousId = previous;
      if (signer !== undefined) record.startedBy = signer;
      record.createdAt = time < record.createdAt ? time : record.createdAt;
      // Every planned cell starts pending, unless a receiver already told more.
      const planned = new Set(record.waves.flat());
      for (const service of record.services) {
        for (const host of service.hosts) if (planned.size === 0 || planned.has(host)) setOutcome(record, host, service.name, 'pending');
      }
      break;
    }
    case 'release.phase.completed': {
      mergeOutcomes(record, data.outcomes);
      const phase = int(data.phase, MAX_RELEASE_PHASES);
      const wave = int(data.wave, MAX_RELEASE_WAVES);
      if (phase !== undefined && record.completed.phases.length < MAX_STEPS) {
        record.completed.phases.push({ phase, name: text(data.name, 64) ?? `phase-${phase + 1}`, ...(wave === undefined ? {} : { wave }) });
      }
      if (!terminal) resume(record);
      break;
    }
    case 'release.wave.completed': {
      mergeOutcomes(record, data.outcomes);
      const wave = int(data.wave, MAX_RELEASE_WAVES);
      if (wave !== undefined && record.completed.waves.length < MAX_STEPS) record.completed.waves.push({ wave, name: text(data.name, 64) ?? `wave-${wave + 1}` });
      if (!terminal) resume(record);
      break;
    }
    case 'release.paused': {
      if (terminal || record.state === 'failed') break;
      const wave = int(data.wave, MAX_RELEASE_WAVES) ?? 0;
      const until = typeof data.until === 'string' && !Number.isNaN(Date.parse(data.until)) ? new Date(data.until).toISOString() : undefined;
      record.state = 'paused';
      record.paused = { wave, reason: data.reason === 'pause' ? 'pause' : 'continue', since: time, ...(until === undefined ? {} : { until }) };
      break;
    }
    case 'release.completed':
      mergeOutcomes(record, data.outcomes);
      if (record.state === 'rolling-back' || record.state === 'rolled-back') break;
      record.state = 'completed';
      record.finishedAt = time;
      delete record.paused;
      break;
    case 'release.failed':
      mergeOutcomes(record, data.outcomes);
      if (terminal || record.state === 'rolling-back') break;
      record.state = 'failed';
      record.finishedAt = time;
      delete record.paused;
      setError(record, data.error);
      break;
    case 'release.rollback.started':
      if (record.state === 'rolled-back') break;
      record.state = 'rolling-back';
      delete record.finishedAt;
      delete record.paused;
      break;
    case 'release.rolled_back': {
      mergeOutcomes(record, data.outcomes);
      record.state = 'rolled-back';
      record.finishedAt = time;
      delete record.paused;
      const to = data.rolledBackTo;
      if (typeof to === 'string' && RELEASE_ID_PATTERN.test(to)) record.rolledBackTo = to;
      if (data.error !== undefined) setError(record, data.error);
      break;
    }
  }
}

function resume(record: ProjectedRelease): void {
  if (record.state === 'paused') record.state = 'in-progress';
  delete record.paused;
}

function setError(record: ProjectedRelease, value: unknown): void {
  if (typeof value !== 'object' || value === null) return;
  const { code, message } = value as Data;
  record.error = {
    code: typeof code === 'string' && ERROR_CODE.test(code) ? code : 'FERRY_ERR_INTERNAL',
    message: text(message, 1000) ?? '',
  };
}

function mergeOutcomes(record: ProjectedRelease, value: unknown): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return;
  for (const [host, services] of Object.entries(value as Data)) {
    if (typeof services !== 'object' || services === null || Array.isArray(services)) continue;
    for (const [service, outcome] of Object.entries(services as Data)) {
      if (typeof outcome === 'string' && (RELEASE_OUTCOMES as readonly string[]).includes(outcome)) setOutcome(record, host, service, outcome as ReleaseOutcome);
    }
  }
}

/** Sets one cell where the rank allows it; a new host or service only while the record has room. */
function setOutcome(record: ProjectedRelease, host: string, service: string, outcome: ReleaseOutcome): void {
  if (!HOST_ID.test(host) || !SERVICE_NAME_PATTERN.test(service)) return;
  let row = Object.hasOwn(record.outcomes, host) ? record.outcomes[host] : undefined;
  if (!row) {
    if (Object.keys(record.outcomes).length >= MAX_RELEASE_HOSTS || cells(record) >= MAX_RELEASE_OUTCOMES) return;
    row = Object.create(null) as Record<string, ReleaseOutcome>;
    Object.defineProperty(record.outcomes, host, { value: row, writable: true, enumerable: true, configurable: true });
  }
  const current = Object.hasOwn(row, service) ? row[service] : undefined;
  if (current === undefined) {
    if (cells(record) >= MAX_RELEASE_OUTCOMES || Object.keys(row).length >= MAX_RELEASE_SERVICES) return;
  } else if (RANK[outcome] < RANK[current]) {
    return;
  }
  Object.defineProperty(row, service, { value: outcome, writable: true, enumerable: true, configurable: true });
  if (current === undefined) cellCounts.set(record, cells(record) + 1);
}

// Cells per record, counted once and kept up to date by setOutcome: an event with many outcomes
// must not count them all again for each one.
const cellCounts = new WeakMap<ProjectedRelease, number>();

function cells(record: ProjectedRelease): number {
  let n = cellCounts.get(record);
  if (n === undefined) {
    n = 0;
    for (const row of Object.values(record.outcomes)) n += Object.keys(row).length;
    cellCounts.set(record, n);
  }
  return n;
}

/** The services of a release.started, field by field: nothing but these fields (no spec, no env) is kept. */
function releaseServices(value: unknown): ReleaseService[] {
  if (!Array.isArray(value)) return [];
  const services: ReleaseService[] = [];
  const seen = new Set<string>();
  for (const entry of value.slice(0, MAX_RELEASE_SERVICES)) {
    if (typeof entry !== 'object' || entry === null) continue;
    const s = entry as Data;
    if (typeof s.name !== 'string' || !SERVICE_NAME_PATTERN.test(s.name) || seen.has(s.name)) continue;
    seen.add(s.name);
    const configHash = text(s.configHash, 128);
    const dependsOn = Array.isArray(s.dependsOn)
      ? s.dependsOn.slice(0, MAX_RELEASE_SERVICES).flatMap((d: unknown) => {
        const dep = (typeof d === 'object' && d !== null ? d : {}) as Data;
        return typeof dep.service === 'string' && SERVICE_NAME_PATTERN.test(dep.service)
          ? [{ service: dep.service, condition: dep.condition === 'started' ? 'started' as const : 'healthy' as const }]
          : [];
      })
      : [];
    services.push({
      name: s.name,
      image: text(s.image, 512) ?? '',
      imageId: text(s.imageId, 128) ?? '',
      ...(configHash === undefined ? {} : { configHash }),
      phase: int(s.phase, MAX_RELEASE_PHASES) ?? 0,
      dependsOn,
      hosts: strings(s.hosts, MAX_RELEASE_HOSTS, 63).filter((h) => HOST_ID.test(h)),
    });
  }
  return services;
}

function waves(value: unknown): string[][] {
  if (!Array.isArray(value)) return [];
  let room = MAX_RELEASE_HOSTS;
  const result: string[][] = [];
  for (const wave of value.slice(0, MAX_RELEASE_WAVES)) {
    const hosts = strings(wave, room, 63).filter((h) => HOST_ID.test(h));
    room -= hosts.length;
    result.push(hosts);
  }
  return result;
}

function strings(value: unknown, max: number, length: number): string[] {
  if (!Array.isArray(value)) return [];
  return value.slice(0, max).flatMap((v: unknown) => {
    const t = text(v, length);
    return t === undefined ? [] : [t];
  });
}

/** A string without control characters, cut to `max`; undefined for anything else. */
function text(value: unknown, max: number): string | undefined {
  if (typeof value !== 'string') return undefined;
  // eslint-disable-next-line no-control-regex
  return value.replace(/[\u0000-\u001f\u007f]/g, ' ').slice(0, max);
}

function int(value: unknown, below: number): number | undefined {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < below ? value : undefined;
}

/** The list form of a record. */
export function releaseSummary(record: ProjectedRelease): ReleaseSummary {
  const hosts = new Set<string>(record.waves.flat());
  const services = new Set<string>(record.services.map((s) => s.name));
  const outcomes: Partial<Record<ReleaseOutcome, number>> = {};
  for (const [host, row] of Object.entries(record.outcomes)) {
    hosts.add(host);
    for (const [service, outcome] of Object.entries(row)) {
      services.add(service);
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    }
  }
  return {
    id: record.id, project: record.project, state: record.state, createdAt: record.createdAt, updatedAt: record.updatedAt,
    ...(record.finishedAt === undefined ? {} : { finishedAt: record.finishedAt }),
    services: [...services].sort(), hosts: [...hosts].sort(), outcomes,
    ...(record.error === undefined ? {} : { error: record.error }),
    ...(record.rolledBackTo === undefined ? {} : { rolledBackTo: record.rolledBackTo }),
  };
}

/**
 * Releases newest first (ids sort as they were made), `limit` of them from just below `before`
 * (an id, exclusive); `next` is the cursor of the following page, absent on the last.
 */
export function listReleases(releases: Record<string, ProjectedRelease>, options: { limit: number; before?: string; project?: string }): { releases: ReleaseSummary[]; next?: string } {
  const ids = Object.keys(releases)
    .filter((id) => options.before === undefined || id < options.before)
    .filter((id) => options.project === undefined || releases[id]?.project === options.project)
    .sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
  const page = ids.slice(0, options.limit);
  const list = page.flatMap((id) => {
    const record = releases[id];
    return record ? [releaseSummary(record)] : [];
  });
  const last = page.at(-1);
  return { releases: list, ...(ids.length > options.limit && last !== undefined ? { next: last } : {}) };
}
