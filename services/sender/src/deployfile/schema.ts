import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { IMAGE_REF_PATTERN, SELECTOR_PREFIX, effectiveStrategy, SELECTOR_SYNTAX, parseSelector, SERVICE_NAME_PATTERN, ServiceSpecSchema, parseDuration, prototypeKeyPaths, unpublishedHealthPort, unpublishedHealthPortHint, type ServiceSpec } from '@ferry/protocol';
import { orderPhases, MAX_PHASES, type DependencyCondition, type Phase } from './phases.ts';
import { closest, type PathSegment } from './problems.ts';
import { parseRollout, type Rollout } from './rollout.ts';

/** A problem before it is placed in a file: the path is kept as segments to find its YAML node. */
export interface RawProblem {
  path: PathSegment[];
  message: string;
  /** Point at the key itself (an unknown field) rather than at its value. */
  atKey?: boolean;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const DOCUMENT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Compose's project name: lowercase letters, digits, "-" and "_", starting with a letter or digit. */
const PROJECT_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const PHASE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
export const MAX_TARGETS = 256;

/** `http(s)://HOST:PORT[/prefix]` or `selector:…` (docs/protocol.md §2.3; resolved by the registry). */
function isTarget(value: string): boolean {
  if (value.startsWith(SELECTOR_PREFIX)) {
    try {
      parseSelector(value.slice(SELECTOR_PREFIX.length));
      return true;
    } catch {
      return false;
    }
  }
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.search === '' && url.hash === '' && url.username === '';
  } catch {
    return false;
  }
}

const { name: _name, ...SERVICE_FIELDS } = ServiceSpecSchema.shape;

const BuildSchema = z.strictObject({
  /** Absolute once validated: a file's relative context is resolved against the file's directory. */
  context: z.string().min(1).max(4096),
  dockerfile: z.string().min(1).max(4096).optional(),
  args: z.record(z.string().regex(ENV_NAME, 'a build argument name'), z.string().max(65_536)).optional(),
});

/** Canonical `depends_on`: the map form, each dependency with its condition (the list form means healthy). */
const DependsOnSchema = z.record(z.string(), z.strictObject({
  condition: z.enum(['started', 'healthy'], { error: 'started (its container runs) or healthy (its health check passed)' }),
}));

const PhaseSchema = z.strictObject({
  name: z.string().regex(PHASE_NAME, 'letters, digits, ".", "_" and "-", at most 63'),
  services: z.array(z.string().max(63)).min(1, 'at least one service'),
});

const ServiceEntrySchema = z.strictObject({
  image: z.string().min(1).max(255).regex(IMAGE_REF_PATTERN, '[registry[:port]/]name[:tag], lowercase name, no digest').optional(),
  build: BuildSchema.optional(),
  targets: z.array(z.string().max(2048).refine(isTarget, `a receiver URL (http://HOST:PORT) or selector:SELECTOR, a selector being ${SELECTOR_SYNTAX}`))
    .min(1, 'at least one target').max(MAX_TARGETS),
  /** Services deployed, and healthy or started, before this one (docs/usage.md, "Deployment files"). */
  depends_on: DependsOnSchema.optional(),
  ...SERVICE_FIELDS,
})
  .refine((entry) => entry.image !== undefined || entry.build !== undefined, { message: 'give image (an image on the build engine) or build (a directory to build it from), or both' })
  .refine((entry) => entry.network === 'bridge' || (entry.ports ?? []).length === 0, { path: ['ports'], message: 'ports are published only with the bridge network' })
  // The manifest's own rules for routed services (manifest.ts), here so that each names its line.
  .refine((entry) => entry.route === undefined || entry.network === 'bridge', { path: ['route'], message: 'a routed service runs on the bridge network (the proxy reaches its port on loopback): remove network, or set network: bridge' })
  .refine((entry) => entry.strategy !== 'start-first' || entry.route !== undefined, { path: ['strategy'], message: 'start-first needs a route: two containers can run at once only when the proxy chooses between them' })
  .refine((entry) => entry.canary === undefined || effectiveStrategy(entry) === 'start-first', { path: ['canary'], message: 'a canary needs a route and the start-first strategy' })
  .refine((entry) => entry.drain === undefined || entry.route !== undefined, { path: ['drain'], message: 'drain applies to a service with a route' });

export const DeploymentDocumentSchema = z.strictObject({
  version: z.literal(1, { error: 'the only version is 1' }),
  /** Makes a sender-service request idempotent: the same id answers the same job. */
  id: z.string().regex(DOCUMENT_ID, 'letters, digits, ".", "_" and "-", at most 128').optional(),
  /** The project a release belongs to (`ferry releases`); default the file's directory name. */
  name: z.string().regex(PROJECT_NAME, 'lowercase letters, digits, "-" and "_", starting with a letter or digit, at most 63').optional(),
  /** The order as named phases; without it the phases come from depends_on. */
  phases: z.array(PhaseSchema).min(1, 'at least one phase').max(MAX_PHASES, `at most ${MAX_PHASES} phases`).optional(),
  /** The hosts in waves (rollout.ts, which reads it with its own problems). */
  rollout: z.unknown().optional(),
  services: z.record(z.string(), ServiceEntrySchema).superRefine((services, ctx) => {
    if (Object.keys(services).length === 0) ctx.addIssue({ code: 'custom', message: 'at least one service' });
  }),
});

export type ServiceEntry = z.output<typeof ServiceEntrySchema> & { image: string };
export type BuildSpec = z.output<typeof BuildSchema>;

/** A validated deployment document: every service has an image reference (a build's tag). */
export interface DeploymentDocument {
  version: 1;
  id?: string;
  /** The project (Compose's top-level `name`). */
  name?: string;
  /** As written; `phasesOf` (phases.ts) gives the order whether written or computed. */
  phases?: Phase[];
  /** The hosts in waves; without it, one wave of every host. */
  rollout?: Rollout;
  services: Record<string, ServiceEntry>;
}

/** The manifest's service spec of one entry: what the receiver gets. */
export function serviceSpecOf(name: string, entry: ServiceEntry): ServiceSpec {
  const { image: _image, build: _build, targets: _targets, depends_on: _dependsOn, ...spec } = entry;
  return { name, ...spec };
}

const KNOWN_KEYS = {
  document: ['version', 'id', 'name', 'phases', 'rollout', 'services'],
  service: Object.keys(ServiceEntrySchema.shape),
  build: Object.keys(BuildSchema.shape),
  dependency: ['condition'],
  phase: Object.keys(PhaseSchema.shape),
  route: ['host', 'path', 'port', 'tls'],
  canary: ['weight', 'for', 'max_error_rate', 'min_requests'],
  health: ['type', 'url', 'host', 'port', 'expectStatus', 'intervalMs', 'timeoutMs', 'retries', 'startPeriodMs', 'interval', 'timeout', 'startPeriod', 'http', 'tcp'],
} as const;

/** What a Compose or Kamal user may reach for, and the field Ferry has instead. */
const HINTS: Record<string, string> = {
  environment: 'env', cap_add: 'capAdd', security_opt: 'securityOpt', healthcheck: 'health', mem_limit: 'memory',
  network_mode: 'network', hosts: 'targets', servers: 'targets', to: 'targets', test: 'url or type: cmd',
  start_period: 'startPeriod', expect_status: 'expectStatus', build_args: 'args',
  dependsOn: 'depends_on', depends: 'depends_on', after: 'depends_on', stages: 'phases', project: 'name',
  serial: 'rollout', waves: 'rollout', rolling_update: 'rollout',
  update_strategy: 'strategy', update_config: 'strategy', order: 'strategy', drain_timeout: 'drain', stop_grace_period: 'drain',
  proxy: 'route', domain: 'route', forMs: 'for', maxErrorRate: 'max_error_rate', minRequests: 'min_requests', duration: 'for', error_rate: 'max_error_rate',
};

export interface ValidateOptions {
  /** Where relative build contexts start; without it they are refused (a JSON body has no file). */
  baseDir?: string;
  /**
   * Values for `${VAR}` in env values; without it `${…}` stays as written. The sender service
   * passes none: a remote caller must not read the sender's own environment.
   */
  env?: Record<string, string | undefined>;
}

export type ValidationResult = { ok: true; document: DeploymentDocument } | { ok: false; problems: RawProblem[] };

/**
 * Validates a deployment document (parsed YAML or a JSON body): the friendly forms are turned
 * into the canonical ones first (env lists, duration strings, health shorthands…), then the
 * schema — whose service fields are the manifest's own — judges the result. Every problem is
 * reported, each with its field path.
 */
export function validateDeployment(value: unknown, options: ValidateOptions = {}): ValidationResult {
  // Parsed as an own key, it would be dropped below without a word (a service or env variable missing).
  const problems: RawProblem[] = prototypeKeyPaths(value).map((path) => ({ path, atKey: true, message: '"__proto__" is not allowed as a name' }));
  const normalized = normalizeDocument(value, options, problems);
  const result = DeploymentDocumentSchema.safeParse(normalized);
  if (!result.success) {
    for (const issue of result.error.issues) problems.push(...fromIssue(issue));
  }
  const services = isDict(normalized) && isDict(normalized.services) ? normalized.services : {};
  for (const name of Object.keys(services)) {
    if (!SERVICE_NAME_PATTERN.test(name)) problems.push({ path: ['services', name], atKey: true, message: 'a service name: lowercase letters, digits, "-" and "_", at most 63' });
  }
  if (result.success) {
    for (const [name, entry] of Object.entries(result.data.services)) {
      const port = unpublishedHealthPort(entry);
      if (port !== undefined) problems.push({ path: ['services', name, 'health'], message: unpublishedHealthPortHint(port, 'file') });
    }
    const rawServices = isDict(value) && isDict(value.services) ? value.services : {};
    problems.push(...orderPhases({
      services: Object.entries(result.data.services).map(([name, entry]) => [name, entry.depends_on ?? {}]),
      phases: result.data.phases,
      dependencyPath: (service, dependency) => {
        // The list form has the name at an index: point at that item, not at the list.
        const entry = rawServices[service];
        const raw = isDict(entry) ? entry.depends_on : undefined;
        const index = Array.isArray(raw) ? raw.indexOf(dependency) : -1;
        return ['services', service, 'depends_on', index >= 0 ? index : dependency];
      },
    }).problems);
  }
  let rollout: Rollout | undefined;
  if (isDict(value) && value.rollout !== undefined && value.rollout !== null) {
    const targets = new Set(Object.values(services).flatMap((entry) => (isDict(entry) && Array.isArray(entry.targets) ? entry.targets.filter((t): t is string => typeof t === 'string') : [])));
    rollout = parseRollout(value.rollout, problems, targets);
  }
  if (problems.length > 0 || !result.success) return { ok: false, problems: dedupe(problems) };
  const document: DeploymentDocument = {
    version: 1, ...(result.data.id ? { id: result.data.id } : {}), ...(result.data.name ? { name: result.data.name } : {}),
    ...(result.data.phases ? { phases: result.data.phases } : {}), ...(rollout ? { rollout } : {}), services: {},
  };
  for (const [name, entry] of Object.entries(result.data.services)) {
    // A build without an image names its result after the service, as Compose does.
    document.services[name] = { ...entry, image: entry.image ?? `${name}:latest` };
  }
  return { ok: true, document };
}

function fromIssue(issue: z.core.$ZodIssue): RawProblem[] {
  const path = issue.path.filter((s): s is string | number => typeof s !== 'symbol');
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeysAt(path);
    return issue.keys.map((key) => {
      const hint = (Object.hasOwn(HINTS, key) ? HINTS[key] : undefined) ?? closest(key, known) ?? HINTS[closest(key, Object.keys(HINTS)) ?? ''];
      return { path: [...path, key], atKey: true, message: `unknown field${hint ? ` (did you mean ${hint}?)` : ''}; known: ${known.join(', ')}` };
    });
  }
  // The manifest's canary names, as the file spells them.
  const canaryAt = path.indexOf('canary');
  if (canaryAt === 2 && path[0] === 'services' && typeof path[3] === 'string') {
    const friendly = CANARY_FIELDS.find(([, canonical]) => canonical === path[3])?.[0];
    if (friendly) return [{ path: [...path.slice(0, 3), friendly, ...path.slice(4)], message: issue.message }];
  }
  if (issue.code === 'invalid_union' && path.at(-1) === 'health') {
    return [{ path, message: 'type: http (with url), tcp (with host and port) or cmd' }];
  }
  return [{ path, message: issue.message }];
}

function knownKeysAt(path: PathSegment[]): readonly string[] {
  if (path.length === 0) return KNOWN_KEYS.document;
  if (path[0] === 'services' && path.length === 2) return KNOWN_KEYS.service;
  if (path[0] === 'services' && path[2] === 'build') return KNOWN_KEYS.build;
  if (path[0] === 'services' && path[2] === 'health') return KNOWN_KEYS.health;
  if (path[0] === 'services' && path[2] === 'route' && path.length === 3) return KNOWN_KEYS.route;
  if (path[0] === 'services' && path[2] === 'canary' && path.length === 3) return KNOWN_KEYS.canary;
  if (path[0] === 'services' && path[2] === 'depends_on' && path.length === 4) return KNOWN_KEYS.dependency;
  if (path[0] === 'phases' && path.length === 2) return KNOWN_KEYS.phase;
  return [];
}

function dedupe(problems: RawProblem[]): RawProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const key = `${p.path.join('\0')}\0${p.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

type Dict = Record<string, unknown>;

function isDict(value: unknown): value is Dict {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function normalizeDocument(value: unknown, options: ValidateOptions, problems: RawProblem[]): unknown {
  if (!isDict(value) || !isDict(value.services)) return value;
  const services: Dict = {};
  for (const [name, entry] of Object.entries(value.services)) {
    services[name] = isDict(entry) ? normalizeService(entry, ['services', name], options, problems) : entry;
  }
  return { ...value, services };
}

function normalizeService(entry: Dict, at: PathSegment[], options: ValidateOptions, problems: RawProblem[]): Dict {
  const out: Dict = { ...entry };
  if ('env' in entry) out.env = normalizeEnv(entry.env, [...at, 'env'], options, problems);
  if (Array.isArray(entry.labels)) out.labels = pairsToRecord(entry.labels, [...at, 'labels'], problems);
  if (typeof entry.memory === 'number') out.memory = String(entry.memory);
  if (typeof entry.cpus === 'string' && /^\d+(?:\.\d+)?$/.test(entry.cpus)) out.cpus = Number(entry.cpus);
  if (typeof entry.targets === 'string') out.targets = [entry.targets];
  if ('build' in entry) out.build = normalizeBuild(entry.build, [...at, 'build'], options, problems);
  if ('health' in entry) out.health = normalizeHealth(entry.health, [...at, 'health'], problems);
  if ('depends_on' in entry) out.depends_on = normalizeDependsOn(entry.depends_on, [...at, 'depends_on'], problems);
  if ('canary' in entry) out.canary = normalizeCanary(entry.canary, [...at, 'canary'], problems);
  return out;
}

/** The file's snake_case canary fields, as the manifest names them. */
const CANARY_FIELDS = [['for', 'forMs'], ['max_error_rate', 'maxErrorRate'], ['min_requests', 'minRequests']] as const;

/**
 * `canary: {weight: 10%, for: 2m, max_error_rate: 1%, min_requests: 20}` as the manifest's
 * CanarySchema has it (weight and max_error_rate keep their `%`, which it reads).
 */
function normalizeCanary(canary: unknown, at: PathSegment[], problems: RawProblem[]): unknown {
  if (!isDict(canary)) return canary;
  const out: Dict = { ...canary };
  for (const [friendly, canonical] of CANARY_FIELDS) {
    if (!(friendly in out)) continue;
    if (canonical in out) { problems.push({ path: [...at, friendly], atKey: true, message: `give ${friendly} only` }); continue; }
    out[canonical] = out[friendly];
    delete out[friendly];
  }
  // Reported under the names the file uses, not the manifest's.
  for (const [, canonical] of CANARY_FIELDS) {
    if (canonical in canary) { problems.push({ path: [...at, canonical], atKey: true, message: `unknown field (did you mean ${CANARY_FIELDS.find(([, c]) => c === canonical)?.[0]}?)` }); }
  }
  return out;
}

/** Compose's words for the conditions Ferry has. */
const CONDITIONS: Record<string, DependencyCondition> = { started: 'started', healthy: 'healthy', service_started: 'started', service_healthy: 'healthy' };

/**
 * `depends_on` as Compose has it: a list of names (each waited for healthy, the condition a
 * Compose user with health checks means), or a map of name → `{condition}` (default healthy),
 * `condition` in Ferry's words or Compose's (`service_healthy`).
 */
function normalizeDependsOn(dependsOn: unknown, at: PathSegment[], problems: RawProblem[]): unknown {
  if (dependsOn === null) return {};
  if (typeof dependsOn === 'string') return { [dependsOn]: { condition: 'healthy' } };
  if (Array.isArray(dependsOn)) {
    const out: Dict = {};
    dependsOn.forEach((item, index) => {
      if (typeof item !== 'string' || item === '') problems.push({ path: [...at, index], message: 'a service name' });
      else if (Object.hasOwn(out, item)) problems.push({ path: [...at, index], message: `${item} is listed twice` });
      else out[item] = { condition: 'healthy' };
    });
    return out;
  }
  if (!isDict(dependsOn)) return dependsOn;
  const out: Dict = {};
  for (const [name, spec] of Object.entries(dependsOn)) {
    if (spec === null || (isDict(spec) && spec.condition === undefined)) { out[name] = { ...(isDict(spec) ? spec : {}), condition: 'healthy' }; continue; }
    if (!isDict(spec) || typeof spec.condition !== 'string') { out[name] = spec; continue; }
    const condition = Object.hasOwn(CONDITIONS, spec.condition) ? CONDITIONS[spec.condition] : undefined;
    if (condition === undefined) {
      const why = spec.condition === 'service_completed_successfully' ? ' (Ferry deploys long-running services; a one-off job has no place in the order)' : '';
      problems.push({ path: [...at, name, 'condition'], message: `started or healthy${why}` });
      out[name] = { ...spec, condition: 'healthy' };
      continue;
    }
    out[name] = { ...spec, condition };
  }
  return out;
}

/** `env` as a map or as Compose's list of `KEY=VALUE`; scalar values become strings, `${VAR}` is filled in. */
function normalizeEnv(env: unknown, at: PathSegment[], options: ValidateOptions, problems: RawProblem[]): unknown {
  const record = Array.isArray(env) ? pairsToRecord(env, at, problems, options.env) : env;
  if (!isDict(record)) return record;
  const out: Dict = {};
  for (const [key, raw] of Object.entries(record)) {
    const value = typeof raw === 'number' || typeof raw === 'boolean' ? String(raw) : raw === null ? '' : raw;
    out[key] = typeof value === 'string' && options.env ? substitute(value, options.env, [...at, key], problems) : value;
  }
  return out;
}

/** `KEY=VALUE` items; with `passThrough`, a bare `KEY` takes its value from there, as Compose's env list does. */
function pairsToRecord(items: unknown[], at: PathSegment[], problems: RawProblem[], passThrough?: Record<string, string | undefined>): Dict {
  const out: Dict = {};
  items.forEach((item, index) => {
    const eq = typeof item === 'string' ? item.indexOf('=') : -1;
    if (typeof item === 'string' && eq < 0 && passThrough && ENV_NAME.test(item)) {
      const value = Object.hasOwn(passThrough, item) ? passThrough[item] : undefined;
      if (value === undefined) problems.push({ path: [...at, index], message: `${item} is not set in the environment (write ${item}=VALUE)` });
      else out[item] = value.replaceAll('$', '$$$$');
      return;
    }
    if (typeof item !== 'string' || eq <= 0) {
      problems.push({ path: [...at, index], message: 'KEY=VALUE' });
      return;
    }
    out[item.slice(0, eq)] = item.slice(eq + 1);
  });
  return out;
}

const VARIABLE = /\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))/g;

/** Compose's interpolation: `${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`, `$$` for a `$`. */
function substitute(value: string, env: Record<string, string | undefined>, at: PathSegment[], problems: RawProblem[]): string {
  return value.replace(VARIABLE, (match, braced: string | undefined, operator: string | undefined, fallback: string | undefined, bare: string | undefined) => {
    if (match === '$$') return '$';
    const name = braced ?? bare ?? '';
    // Only the environment's own variables: `${constructor}` is not Object.prototype.constructor.
    const found = Object.hasOwn(env, name) ? env[name] : undefined;
    if (operator === ':-' && (found === undefined || found === '')) return fallback ?? '';
    if (operator === '-' && found === undefined) return fallback ?? '';
    if (found === undefined) {
      problems.push({ path: at, message: `\${${name}} is not set in the environment (write $$ for a literal $, or \${${name}:-default})` });
      return '';
    }
    return found;
  });
}

function normalizeBuild(build: unknown, at: PathSegment[], options: ValidateOptions, problems: RawProblem[]): unknown {
  const spec = typeof build === 'string' ? { context: build } : build;
  if (!isDict(spec)) return spec;
  const out: Dict = { ...spec };
  if (Array.isArray(spec.args)) out.args = pairsToRecord(spec.args, [...at, 'args'], problems);
  if (isDict(out.args)) {
    out.args = Object.fromEntries(Object.entries(out.args).map(([k, v]) => [k, typeof v === 'number' || typeof v === 'boolean' ? String(v) : v]));
  }
  if (typeof spec.context === 'string' && spec.context !== '' && !isAbsolute(spec.context)) {
    if (options.baseDir === undefined) problems.push({ path: [...at, 'context'], message: 'an absolute path on the sender (a relative one needs a file to be relative to)' });
    else out.context = resolve(options.baseDir, spec.context);
  }
  return out;
}

const DURATION_FIELDS = [['interval', 'intervalMs'], ['timeout', 'timeoutMs'], ['startPeriod', 'startPeriodMs']] as const;

/**
 * `health` as the manifest has it, or: a string like `--health` takes (`http://…`, `tcp://HOST:PORT`,
 * `cmd`), `{ http: URL }` / `{ tcp: HOST:PORT }` without `type`, and durations as `2s`, `500ms`,
 * `1m30s` (a plain number is milliseconds, as in intervalMs).
 */
function normalizeHealth(health: unknown, at: PathSegment[], problems: RawProblem[]): unknown {
  let spec: unknown = health;
  if (typeof health === 'string') spec = healthFromString(health);
  if (!isDict(spec)) return spec;
  const out: Dict = { ...spec };
  if (out.type === undefined && typeof out.http === 'string') { out.type = 'http'; out.url = out.http; delete out.http; }
  if (out.type === undefined && typeof out.tcp === 'string') {
    const tcp = healthFromString(`tcp://${out.tcp}`);
    if (isDict(tcp)) { Object.assign(out, tcp); delete out.tcp; } else problems.push({ path: [...at, 'tcp'], message: 'HOST:PORT' });
  }
  if (out.type === undefined) out.type = out.url !== undefined ? 'http' : out.host !== undefined ? 'tcp' : 'cmd';
  for (const [friendly, canonical] of DURATION_FIELDS) {
    if (!(friendly in out)) continue;
    const text = out[friendly];
    delete out[friendly];
    if (canonical in out) { problems.push({ path: [...at, friendly], atKey: true, message: `give ${friendly} or ${canonical}, not both` }); continue; }
    const ms = typeof text === 'string' || typeof text === 'number' ? parseDuration(String(text), 'ms') : undefined;
    if (ms === undefined) { problems.push({ path: [...at, friendly], message: 'a duration such as 500ms, 2s or 1m (a plain number is milliseconds)' }); continue; }
    out[canonical] = ms;
  }
  if (typeof out.type === 'string' && !['http', 'tcp', 'cmd'].includes(out.type)) {
    problems.push({ path: [...at, 'type'], message: 'http, tcp or cmd' });
    return undefined;
  }
  return out;
}

function healthFromString(text: string): unknown {
  if (text === 'cmd') return { type: 'cmd' };
  const tcp = /^tcp:\/\/(\[[0-9A-Fa-f:.]+\]|[^:/[\]]+):(\d{1,5})$/.exec(text);
  if (tcp) return { type: 'tcp', host: (tcp[1] ?? '').replace(/^\[|\]$/g, ''), port: Number(tcp[2]) };
  return { type: 'http', url: text };
}
