import { parseArgs, type ParseArgsConfig } from 'node:util';
import {
  FerryError, RESTART_POLICIES, ServiceSpecSchema, durationText, parseDuration, unpublishedHealthPort, unpublishedHealthPortHint,
  type DurationUnit, type HealthCheck, type ServiceSpec,
} from '@ferry/protocol';
import { closest, editDistance } from '@ferry/config';
import { readEnvFiles } from './env-file.ts';

type Options = NonNullable<ParseArgsConfig['options']>;

/** parseArgs with its errors turned into the CLI's usage error, so every mistake exits 2. */
export function parse<O extends Options>(args: string[], options: O, positionals = 0) {
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: positionals > 0, strict: true });
  } catch (err) {
    const unknown = (err as { code?: unknown }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? /'(-[^']*)'/.exec((err as Error).message)?.[1] : undefined;
    if (unknown !== undefined) throw usage(unknownOption(unknown, options));
    throw usage((err as Error).message.replace(/\. To specify a positional.*$/s, ''));
  }
  if (parsed.positionals.length > positionals) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `Unexpected argument "${parsed.positionals[positionals]}"` });
  }
  return parsed;
}

/**
 * `Unknown option "--helth"; did you mean "--health"?`: the nearest of the command's own long
 * options when one is a typo away (a one-letter option has no typo but another letter).
 */
function unknownOption(given: string, options: Options): string {
  const match = given.startsWith('--') ? suggest(given.slice(2), Object.keys(options)) : undefined;
  return `Unknown option "${given}"${match !== undefined ? `; did you mean "--${match}"?` : ''}`;
}

/**
 * The candidate a typo away from `word`, for "did you mean": at most two edits, and at most half
 * the word, so that `--rm` is not taken for `--to`.
 */
export function suggest(word: string, candidates: readonly string[]): string | undefined {
  const match = closest(word, candidates);
  return match !== undefined && editDistance(word.toLowerCase(), match.toLowerCase()) <= Math.min(2, Math.floor(word.length / 2)) ? match : undefined;
}

/**
 * `-e KEY=VALUE`, or `-e KEY` to pass KEY on from `environment` — left out when it is not set
 * there, as `docker run -e` does. Errors name the variable, never its value.
 */
export function parseEnvPairs(pairs: string[] | undefined, environment: Record<string, string | undefined> = {}, flag = '--env'): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs ?? []) {
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (key === '') throw usage(`${flag}: expected KEY=VALUE or KEY, and the name is missing`);
    // As a key it would replace the object's prototype, and the variable would be lost in silence.
    if (key === '__proto__') throw usage(`${flag} __proto__: not allowed as a name`);
    if (eq >= 0) env[key] = pair.slice(eq + 1);
    else if (Object.hasOwn(environment, key) && environment[key] !== undefined) env[key] = environment[key];
  }
  return env;
}

const BARE_UNIT: Record<DurationUnit, string> = { ms: 'milliseconds', s: 'seconds', m: 'minutes', h: 'hours', d: 'days' };

/**
 * A duration flag in milliseconds: `500ms`, `2s`, `1m`, `1h`, `1m30s`…, or a plain number in
 * `bareUnit`, the unit the flag took before units were accepted.
 */
export function parseDurationFlag(name: string, value: string | undefined, bareUnit: DurationUnit, minMs: number, maxMs: number): number | undefined {
  if (value === undefined) return undefined;
  const ms = parseDuration(value, bareUnit);
  if (ms === undefined || ms < minMs || ms > maxMs) {
    throw usage(`--${name} ${value}: expected a duration from ${durationText(minMs)} to ${durationText(maxMs)}, such as 500ms, 2s, 1m or 1h (a plain number is in ${BARE_UNIT[bareUnit]})`);
  }
  return ms;
}

export function parseInteger(name: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new FerryError('FERRY_ERR_USAGE', { message: `--${name}: expected a whole number from ${min} to ${max}` });
  return n;
}

/** The `docker run` flags `ferry push` takes for the container, spelled as Docker spells them. */
export const SERVICE_OPTIONS = {
  env: { type: 'string', short: 'e', multiple: true },
  'env-file': { type: 'string', multiple: true },
  network: { type: 'string' },
  publish: { type: 'string', short: 'p', multiple: true },
  volume: { type: 'string', short: 'v', multiple: true },
  memory: { type: 'string', short: 'm' },
  cpus: { type: 'string' },
  'cap-add': { type: 'string', multiple: true },
  restart: { type: 'string' },
  label: { type: 'string', short: 'l', multiple: true },
  user: { type: 'string', short: 'u' },
  entrypoint: { type: 'string' },
  command: { type: 'string' },
  privileged: { type: 'boolean' },
  device: { type: 'string', multiple: true },
  'security-opt': { type: 'string', multiple: true },
  pid: { type: 'string' },
  ipc: { type: 'string' },
} as const;

export interface ServiceFlagValues {
  env?: string[];
  'env-file'?: string[];
  network?: string;
  publish?: string[];
  volume?: string[];
  memory?: string;
  cpus?: string;
  'cap-add'?: string[];
  restart?: string;
  label?: string[];
  user?: string;
  entrypoint?: string;
  command?: string;
  privileged?: boolean;
  device?: string[];
  'security-opt'?: string[];
  pid?: string;
  ipc?: string;
}

/** Which flag wrote each ServiceSpec field, so a refused value is reported by the flag the user typed. */
const FLAG_OF: Record<string, string> = {
  env: '-e/--env', network: '--network', ports: '-p/--publish', volumes: '-v/--volume', memory: '-m/--memory',
  cpus: '--cpus', capAdd: '--cap-add', restart: '--restart', labels: '--label', user: '-u/--user',
  entrypoint: '--entrypoint', command: '--command', privileged: '--privileged', devices: '--device',
  securityOpt: '--security-opt', pid: '--pid', ipc: '--ipc', health: '--health',
};

/**
 * The container part of a push, from `docker run`-style flags and the words after `--` (the
 * command). Checked against the manifest schema here, so a mistake exits 2 naming its flag
 * before anything is packaged, rather than coming back from the receiver as a manifest problem.
 * `environment` is where `-e KEY` (and `KEY` alone in an env file) takes its value from.
 */
export function serviceSpecFromFlags(name: string, values: ServiceFlagValues, trailing: string[] = [], health?: HealthCheck, environment: Record<string, string | undefined> = {}): ServiceSpec {
  const network = values.network ?? 'bridge';
  if (network !== 'host' && network !== 'bridge' && network !== 'none') throw usage('--network must be host, bridge or none');
  if (values.command !== undefined && trailing.length > 0) throw usage('give the command either with --command or after "--", not both');
  let cpus: number | undefined;
  if (values.cpus !== undefined) {
    cpus = Number(values.cpus);
    if (!/^\d*\.?\d+$/.test(values.cpus) || !(cpus > 0) || cpus > 1024) throw usage(`--cpus ${values.cpus}: expected a number of CPUs above 0, e.g. 0.5 or 2`);
  }
  if (values.restart !== undefined && !(RESTART_POLICIES as readonly string[]).includes(values.restart)) {
    throw usage(`--restart ${values.restart}: expected one of ${RESTART_POLICIES.join(', ')}`);
  }
  const command = values.command !== undefined ? splitCommand('command', values.command) : trailing;
  const candidate = {
    name,
    env: envFromFlags(values, environment),
    network,
    ...(values.publish?.length ? { ports: values.publish } : {}),
    ...(values.volume?.length ? { volumes: values.volume } : {}),
    ...(values.memory !== undefined ? { memory: values.memory } : {}),
    ...(cpus !== undefined ? { cpus } : {}),
    ...(values['cap-add']?.length ? { capAdd: values['cap-add'] } : {}),
    ...(values.restart !== undefined ? { restart: values.restart } : {}),
    ...(values.label?.length ? { labels: parseLabels(values.label) } : {}),
    ...(values.user !== undefined ? { user: values.user } : {}),
    // As `docker run --entrypoint`: one executable; "" clears the image's entrypoint.
    ...(values.entrypoint !== undefined ? { entrypoint: values.entrypoint === '' ? [] : [values.entrypoint] } : {}),
    ...(command.length > 0 ? { command } : {}),
    ...(values.privileged ? { privileged: true } : {}),
    ...(values.device?.length ? { devices: values.device } : {}),
    ...(values['security-opt']?.length ? { securityOpt: values['security-opt'] } : {}),
    ...(values.pid !== undefined ? { pid: values.pid } : {}),
    ...(values.ipc !== undefined ? { ipc: values.ipc } : {}),
    ...(health ? { health } : {}),
  };
  const parsed = ServiceSpecSchema.safeParse(candidate);
  if (parsed.success) {
    const port = unpublishedHealthPort(parsed.data);
    if (port !== undefined) throw usage(`--health ${healthText(health)}: ${unpublishedHealthPortHint(port)}`);
    return parsed.data;
  }
  const issue = parsed.error.issues[0];
  const [field, index] = issue?.path ?? [];
  const flag = FLAG_OF[String(field)] ?? (field === 'name' ? '--name' : String(field));
  const given = candidate[field as keyof typeof candidate];
  const value = Array.isArray(given) && typeof index === 'number' ? given[index]
    : typeof given === 'string' ? given
      : typeof index === 'string' ? index : undefined;
  throw usage(`${flag}${typeof value === 'string' ? ` ${value}` : ''}: ${issue?.message ?? 'invalid'}`);
}

/** A health check as `--health` takes it. */
function healthText(check: HealthCheck | undefined): string {
  if (check?.type === 'http') return check.url;
  if (check?.type === 'tcp') return `tcp://${check.host.includes(':') ? `[${check.host}]` : check.host}:${check.port}`;
  return 'cmd';
}

/** `--env-file` entries first, then `-e`, so that a flag overrides its file, as with `docker run`. */
export function envFromFlags(values: Pick<ServiceFlagValues, 'env' | 'env-file'>, environment: Record<string, string | undefined>): Record<string, string> {
  const env = parseEnvPairs([...readEnvFiles(values['env-file']), ...(values.env ?? [])], environment);
  // The manifest's own rule for names, checked here too for `ferry deploy`, whose file was checked before.
  const checked = ServiceSpecSchema.shape.env.safeParse(env);
  if (!checked.success) throw usage(`-e/--env ${String(checked.error.issues[0]?.path[0] ?? '')}: not an environment variable name (letters, digits and "_", not starting with a digit)`);
  return env;
}

function usage(message: string): FerryError {
  return new FerryError('FERRY_ERR_USAGE', { message });
}

/** `--label KEY=VALUE`, or `--label KEY` for an empty value, as Docker takes it. */
export function parseLabels(pairs: string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (key === '') throw usage(`--label ${pair}: expected KEY=VALUE`);
    if (key === '__proto__') throw usage('--label __proto__: not allowed as a name');
    labels[key] = eq < 0 ? '' : pair.slice(eq + 1);
  }
  return labels;
}

/**
 * `--command` as one string: a JSON array (`["sh", "-c", "echo hi"]`) is taken as is; anything
 * else is split into words like a POSIX shell would, honouring '…', "…" and backslashes, but
 * without expanding anything.
 */
export function splitCommand(flag: string, text: string): string[] {
  if (text.trimStart().startsWith('[')) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw usage(`--${flag}: a value starting with "[" must be a JSON array of strings`);
    }
    if (!Array.isArray(json) || !json.every((item) => typeof item === 'string')) throw usage(`--${flag}: a value starting with "[" must be a JSON array of strings`);
    return json;
  }
  const words: string[] = [];
  let word: string | undefined;
  let quote: '"' | "'" | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text.charAt(i);
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else word += c;
    } else if (c === '\\' && i + 1 < text.length && (quote === undefined || /["\\$`]/.test(text.charAt(i + 1)))) {
      word = (word ?? '') + text.charAt(++i);
    } else if (quote === '"') {
      if (c === '"') quote = undefined;
      else word += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      word ??= '';
    } else if (/\s/.test(c)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else {
      word = (word ?? '') + c;
    }
  }
  if (quote) throw usage(`--${flag}: unterminated ${quote} quote`);
  if (word !== undefined) words.push(word);
  return words;
}
