import type { z } from 'zod';
import { FerryError } from '@ferry/protocol';

export * from './vars.ts';

/**
 * Every FERRY_* variable any Ferry component reads. A FERRY_* variable outside this list is a typo
 * (FERRY_NAT_URL) that would otherwise be ignored in silence, so loading refuses it.
 */
export const KNOWN_VARIABLES = [
  'FERRY_LISTEN', 'FERRY_TRUST_FILE', 'FERRY_NATS_URL', 'FERRY_DATA_DIR', 'FERRY_HOST_ID', 'FERRY_LOG_LEVEL',
  'FERRY_KEY_ID', 'FERRY_KEY', 'FERRY_KEY_FILE', 'FERRY_GRANT', 'FERRY_GRANT_FILE', 'FERRY_JOIN_TOKEN', 'FERRY_REDIS_URL', 'FERRY_UPLOAD_TTL_SECONDS',
  'FERRY_POLICY_FILE', 'FERRY_POLICY_IMAGES', 'FERRY_POLICY_BIND_SOURCES', 'FERRY_POLICY_CAPABILITIES', 'FERRY_POLICY_HOST_NETWORK',
  'FERRY_ALLOW_CIDRS', 'FERRY_TRUSTED_PROXIES', 'FERRY_TLS_CERT', 'FERRY_TLS_KEY', 'FERRY_MAX_HEADER_BYTES',
  'FERRY_HEADERS_TIMEOUT_MS', 'FERRY_REQUEST_TIMEOUT_MS', 'FERRY_KEEPALIVE_TIMEOUT_MS', 'FERRY_MIN_BODY_RATE', 'FERRY_BODY_RATE_WINDOW_MS',
  'FERRY_RETAIN_IMAGES', 'FERRY_MIN_FREE_BYTES', 'FERRY_TEST_CRASH_AT', 'FERRY_METRICS_TOKEN', 'FERRY_MAX_CONNECTIONS',
  'FERRY_STABILITY_WINDOW_MS', 'FERRY_RETAIN_RELEASES', 'FERRY_BUDGET_MEMORY', 'FERRY_BUDGET_CPUS',
  // the receiver's proxy (docs/proxy.md)
  'FERRY_PROXY_HTTP', 'FERRY_PROXY_HTTPS', 'FERRY_PROXY_CERTS', 'FERRY_PROXY_DIR', 'FERRY_PROXY_SLOTS', 'FERRY_PROXY_LOG',
  // the registry's dashboard (docs/registry.md "Dashboard")
  'FERRY_DASHBOARD_MAX_STREAMS', 'FERRY_DASHBOARD_HOSTS',
  // the registry (docs/registry.md)
  'FERRY_HOST_TTL_SECONDS', 'FERRY_DRIFT_MODE', 'FERRY_DRIFT_IGNORE', 'FERRY_SENDER_URL', 'FERRY_DASHBOARD_TOKEN', 'FERRY_MAX_HOSTS',
  // receivers, the sender and the CLI talking to the registry
  'FERRY_REGISTRY_URL', 'FERRY_ADVERTISE_URL', 'FERRY_LABELS', 'FERRY_HEARTBEAT_SECONDS',
  // read by deploy/ and test/ scripts, not by the services
  'FERRY_STACK_DIR', 'FERRY_STACK_NATS_PORT', 'FERRY_STACK_REDIS_PORT', 'FERRY_STACK_USE_EXISTING_DOCKER', 'FERRY_STACK_BRIDGE_SUBNET',
  'FERRY_BUILD_DOCKER_HOST', 'FERRY_TARGET_DOCKER_HOST', 'FERRY_DEMO_PORT', 'FERRY_DEMO_DIR',
  'FERRY_NATS_READER_URL', 'FERRY_NATS_REGISTRY_URL', 'FERRY_NATS_ADMIN_URL',
  'FERRY_BOOTSTRAP_KEY', 'FERRY_BOOTSTRAP_KEYS', 'FERRY_PUSH_TEST_CORRUPT',
] as const;

export type Env = Record<string, string | undefined>;

/**
 * Validates the variables `schema` names, all at once: the error lists every problem, so a user
 * fixes a config in one go. The result is frozen.
 */
export function loadConfig<S extends z.ZodObject>(schema: S, env: Env = process.env): Readonly<z.output<S>> {
  const problems: string[] = [];
  for (const name of Object.keys(env)) {
    if (name.startsWith('FERRY_') && !(KNOWN_VARIABLES as readonly string[]).includes(name)) {
      const hint = closest(name, KNOWN_VARIABLES);
      problems.push(`${name}: unknown variable${hint ? ` (did you mean ${hint}?)` : ''}`);
    }
  }
  const picked: Record<string, string> = {};
  for (const key of Object.keys(schema.shape)) {
    const value = env[key];
    // An empty variable means "not set", as shells make it easy to export one by accident.
    if (value !== undefined && value !== '') picked[key] = value;
  }
  const result = schema.safeParse(picked);
  if (!result.success) {
    for (const issue of result.error.issues) problems.push(`${issue.path.join('.')}: ${issue.message}`);
  }
  if (problems.length > 0 || !result.success) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `Invalid configuration:\n  - ${problems.join('\n  - ')}` });
  }
  return Object.freeze(result.data);
}

/** The closest candidate within a small edit distance (case aside), for "did you mean". */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(word.length / 3)) + 1;
  const lower = word.toLowerCase();
  for (const candidate of candidates) {
    const distance = editDistance(lower, candidate.toLowerCase());
    if (distance < bestDistance) { best = candidate; bestDistance = distance; }
  }
  return best;
}

/** Levenshtein distance: the fewest one-character edits from `a` to `b`, for "did you mean" hints. */
export function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}
