import { hostname } from 'node:os';
import { z } from 'zod';
import { join } from 'node:path';
import { AddressList } from '@ferry/auth';
import { parseHostLabels, parseMemory } from '@ferry/protocol';
import {
  dataDirVar, dockerHostVar, hostIdVar, listenVar, loadConfig, logLevelVar, maxConnectionsVar, natsUrlVar, parsedVar, redisUrlVar, trustFileVar, type Env,
} from '@ferry/config';
import { DEFAULT_SLOTS, MAX_SLOTS, type ProxySettings } from '@ferry/proxy';
import { loadPolicy, type Policy } from './policy/index.ts';
import { CRASH_POINTS, type CrashPoint } from './deploy/crash.ts';
import { DEFAULT_MIN_FREE_BYTES } from './deploy/disk.ts';
import { DEFAULT_RETAIN_IMAGES } from './deploy/retention.ts';
import { DEFAULT_STABILITY_WINDOW_MS } from './deploy/stability.ts';
import { DEFAULT_RETAIN_RELEASES } from './releases/store.ts';

const schema = z.object({
  DOCKER_HOST: dockerHostVar(),
  FERRY_LISTEN: listenVar('127.0.0.1:7701'),
  FERRY_TRUST_FILE: trustFileVar(),
  FERRY_NATS_URL: natsUrlVar(),
  FERRY_DATA_DIR: dataDirVar('/var/lib/ferry'),
  FERRY_HOST_ID: hostIdVar('it becomes a NATS subject token', defaultHostId()),
  FERRY_UPLOAD_TTL_SECONDS: z.coerce.number({ error: 'a whole number of seconds' }).int('a whole number of seconds').min(1, 'at least 1').max(30 * 24 * 3600, 'at most 30 days (2592000)').default(24 * 3600),
  FERRY_LOG_LEVEL: logLevelVar(),
  FERRY_METRICS_TOKEN: z.string().regex(/^[\x21-\x7e]{16,256}$/, '16–256 printable characters without spaces (it is sent as a bearer token)').optional(),
  // The receiver policy (policy/load.ts checks the file and the lists' items).
  FERRY_POLICY_FILE: z.string().startsWith('/', 'an absolute path to a JSON policy file').optional(),
  FERRY_POLICY_IMAGES: z.string().optional(),
  FERRY_POLICY_BIND_SOURCES: z.string().optional(),
  FERRY_POLICY_CAPABILITIES: z.string().optional(),
  FERRY_POLICY_HOST_NETWORK: z.enum(['true', 'false'], { error: 'true or false' }).optional(),
  // Auth and HTTP hardening (docs/receiver.md "Hardening").
  FERRY_REDIS_URL: redisUrlVar(),
  FERRY_ALLOW_CIDRS: parsedVar((v) => AddressList.parse(v)).optional(),
  FERRY_TRUSTED_PROXIES: parsedVar((v) => AddressList.parse(v)).optional(),
  FERRY_TLS_CERT: z.string().startsWith('/', 'an absolute path to a PEM certificate (chain)').optional(),
  FERRY_TLS_KEY: z.string().startsWith('/', 'an absolute path to a PEM private key').optional(),
  FERRY_MAX_HEADER_BYTES: wholeNumber(1024, 1024 ** 2).default(16 * 1024),
  FERRY_HEADERS_TIMEOUT_MS: wholeNumber(100, 600_000).default(30_000),
  FERRY_REQUEST_TIMEOUT_MS: wholeNumber(0, 7 * 24 * 3600 * 1000).default(0),
  FERRY_KEEPALIVE_TIMEOUT_MS: wholeNumber(0, 600_000).default(5_000),
  FERRY_MIN_BODY_RATE: wholeNumber(0, 1024 ** 3).default(1024),
  FERRY_BODY_RATE_WINDOW_MS: wholeNumber(100, 600_000).default(30_000),
  FERRY_MAX_CONNECTIONS: maxConnectionsVar(),
  // Deployment engine (docs/receiver.md "Deployments, journal and rollback").
  FERRY_RETAIN_IMAGES: wholeNumber(1, 1000).default(DEFAULT_RETAIN_IMAGES),
  FERRY_MIN_FREE_BYTES: wholeNumber(0, Number.MAX_SAFE_INTEGER).default(DEFAULT_MIN_FREE_BYTES),
  FERRY_STABILITY_WINDOW_MS: wholeNumber(0, 600_000).default(DEFAULT_STABILITY_WINDOW_MS),
  FERRY_RETAIN_RELEASES: wholeNumber(1, 100).default(DEFAULT_RETAIN_RELEASES),
  // Resource budget (docs/receiver.md "Resource budget"); defaults are computed from the engine at start.
  FERRY_BUDGET_MEMORY: parsedVar(budgetMemory).optional(),
  FERRY_BUDGET_CPUS: z.coerce.number({ error: 'a number of CPUs, e.g. 2 or 1.5' }).positive('more than 0').max(1024, 'at most 1024').optional(),
  FERRY_TEST_CRASH_AT: z.enum(CRASH_POINTS, { error: `a test hook: ${CRASH_POINTS.join(', ')}` }).optional(),
  // Registration with the registry (docs/receiver.md "Registering with the registry").
  FERRY_REGISTRY_URL: z.url({ protocol: /^https?$/, error: 'http(s)://host:port of the registry' }).optional(),
  FERRY_ADVERTISE_URL: z.url({ protocol: /^https?$/, error: 'the http(s):// URL senders reach this receiver at' }).optional(),
  FERRY_LABELS: parsedVar(hostLabels).optional(),
  FERRY_HEARTBEAT_SECONDS: wholeNumber(1, 3600).optional(),
  FERRY_JOIN_TOKEN: z.string().regex(/^[A-Za-z0-9_-]{22,256}$/, 'the one-time token "ferry hosts join-token" printed').optional(),
  // The reverse proxy for routed services (docs/proxy.md); on when FERRY_PROXY_HTTP is set.
  FERRY_PROXY_HTTP: proxyListenVar().optional(),
  FERRY_PROXY_HTTPS: proxyListenVar().optional(),
  FERRY_PROXY_CERTS: z.string().startsWith('/', 'an absolute path to a directory of <host>.pem files').optional(),
  FERRY_PROXY_DIR: z.string().regex(/^\/[A-Za-z0-9._~:@/-]{1,80}$/, 'an absolute path of at most 80 letters, digits and . _ ~ : @ - / (HAProxy\'s sockets live there)').optional(),
  FERRY_PROXY_SLOTS: wholeNumber(1, MAX_SLOTS).default(DEFAULT_SLOTS),
  FERRY_PROXY_LOG: addressVar('the UDP syslog addr:port HAProxy logs requests to, e.g. 127.0.0.1:514', { wildcard: false }).optional(),
})
  .refine((v) => (v.FERRY_TLS_CERT === undefined) === (v.FERRY_TLS_KEY === undefined), { message: 'FERRY_TLS_CERT and FERRY_TLS_KEY go together: set both or neither', path: ['FERRY_TLS_CERT'] })
  .refine((v) => v.FERRY_PROXY_HTTP !== undefined || (v.FERRY_PROXY_HTTPS === undefined && v.FERRY_PROXY_CERTS === undefined), { message: 'the proxy is on only with FERRY_PROXY_HTTP: set it too', path: ['FERRY_PROXY_HTTP'] })
  .refine((v) => v.FERRY_REQUEST_TIMEOUT_MS === 0 || v.FERRY_HEADERS_TIMEOUT_MS <= v.FERRY_REQUEST_TIMEOUT_MS, { message: 'must be 0 (off) or at least FERRY_HEADERS_TIMEOUT_MS', path: ['FERRY_REQUEST_TIMEOUT_MS'] });

/** `addr:port` HAProxy binds: an IPv4 address, `[IPv6]` or `*`, and a port. */
function proxyListenVar() {
  return addressVar('addr:port, e.g. 0.0.0.0:80, [::]:443 or 127.0.0.1:8080', { wildcard: true });
}

/** `addr:port`: an IPv4 address, `[IPv6]` (or `*`, with `wildcard`) and a port from 1 to 65535. */
function addressVar(message: string, { wildcard }: { wildcard: boolean }) {
  const pattern = wildcard ? /^(?:(?:\d{1,3}\.){3}\d{1,3}|\[[0-9a-fA-F:.]+\]|\*):(?:[1-9]\d{0,4})$/ : /^(?:(?:\d{1,3}\.){3}\d{1,3}|\[[0-9a-fA-F:.]+\]):(?:[1-9]\d{0,4})$/;
  return z.string().regex(pattern, message).refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'a port up to 65535');
}

function wholeNumber(min: number, max: number) {
  return z.coerce.number({ error: 'a whole number' }).int('a whole number').min(min, `at least ${min}`).max(max, `at most ${max}`);
}

export interface ReceiverConfig {
  dockerHost: string | undefined;
  listen: { host: string; port: number };
  /** The trust file: the keys that may call this receiver and what each may do. */
  trustFile: string;
  /** FERRY_LABELS: this host's labels, which grants' host selectors are matched against. */
  labels: Record<string, string>;
  natsUrl: string | undefined;
  dataDir: string;
  hostId: string;
  logLevel: string;
  /** What deployments may ask for (docs/receiver.md "Policy"). */
  policy: Readonly<Policy>;
  /** How long a resumable upload session lives after its creation. */
  uploadTtlSeconds: number;
  /** Nonces go to Redis when set (kept across restarts), to memory otherwise. */
  redisUrl: string | undefined;
  /** Client addresses allowed (undefined: all) and proxies whose X-Forwarded-For is believed. */
  allowCidrs: AddressList | undefined;
  trustedProxies: AddressList | undefined;
  /** Paths of the PEM certificate and key; with them the receiver speaks HTTPS. */
  tls: { certFile: string; keyFile: string } | undefined;
  /** Images kept per service; older ones Ferry loaded and nothing uses are removed. */
  retainImages: number;
  /** Free bytes the data directory's file system must keep; below, uploads and deployments get 507. */
  minFreeBytes: number;
  /** How long a new container must stay up, not restarted, after its check passed. */
  stabilityWindowMs: number;
  /** Releases kept per service to go back to (image and signed spec). */
  retainReleases: number;
  /** FERRY_BUDGET_MEMORY / FERRY_BUDGET_CPUS; undefined: the defaults (capacity.ts). */
  budget: { memoryBytes: number | undefined; cpus: number | undefined };
  /** When set, GET /metrics needs `Authorization: Bearer <token>`. */
  metricsToken: string | undefined;
  /** Test hook only: the deployment step at which the process SIGKILLs itself. */
  testCrashAt: CrashPoint | undefined;
  /** FERRY_REGISTRY_URL and what goes with it; undefined: the receiver registers nowhere. */
  registry: RegistrySettings | undefined;
  /** The host's reverse proxy (FERRY_PROXY_*); undefined: no proxy, routed services are refused. */
  proxy: ProxySettings | undefined;
  http: {
    maxHeaderBytes: number; headersTimeoutMs: number; requestTimeoutMs: number; keepAliveTimeoutMs: number;
    minBodyBytesPerSecond: number; bodyRateWindowMs: number; maxConnections: number;
  };
}

/** How the receiver registers with the registry and heartbeats to it. */
export interface RegistrySettings {
  url: string;
  /** FERRY_JOIN_TOKEN: enrolls the host key at the first registration; afterwards the key alone is proof. */
  joinToken: string | undefined;
  /** FERRY_ADVERTISE_URL; undefined: derived from where the receiver listens. */
  advertiseUrl: string | undefined;
  /** FERRY_HEARTBEAT_SECONDS; undefined: what the registry answers, else 10. */
  heartbeatSeconds: number | undefined;
}

/** Reads and validates the receiver's environment; every problem is reported in one error. */
/** FERRY_LABELS, by the one label grammar; the problem is described without quoting the value. */
function hostLabels(text: string): Record<string, string> {
  try {
    return parseHostLabels(text);
  } catch {
    throw new Error('KEY=VALUE[,KEY=VALUE…]: keys of at most 63 letters, digits, ".", "_", "/", "-" (starting with a letter or digit), each once; values of at most 256 characters without commas or control characters (docs/protocol.md §2.3)');
  }
}

/** FERRY_BUDGET_MEMORY: bytes, or a number with k, m or g (`512m`, `4g`), as a memory limit is written. */
function budgetMemory(text: string): number {
  const bytes = parseMemory(text.trim());
  if (bytes === undefined || bytes <= 0) throw new Error('bytes, or a number with k, m or g (512m, 4g)');
  return bytes;
}

export function loadReceiverConfig(env: Env = process.env): Readonly<ReceiverConfig> {
  const raw = loadConfig(schema, env);
  return Object.freeze({
    dockerHost: raw.DOCKER_HOST,
    listen: raw.FERRY_LISTEN,
    trustFile: raw.FERRY_TRUST_FILE ?? join(raw.FERRY_DATA_DIR, 'trust.json'),
    labels: raw.FERRY_LABELS ?? {},
    natsUrl: raw.FERRY_NATS_URL,
    dataDir: raw.FERRY_DATA_DIR,
    hostId: raw.FERRY_HOST_ID,
    logLevel: raw.FERRY_LOG_LEVEL,
    policy: loadPolicy({
      file: raw.FERRY_POLICY_FILE, images: raw.FERRY_POLICY_IMAGES, bindSources: raw.FERRY_POLICY_BIND_SOURCES,
      capabilities: raw.FERRY_POLICY_CAPABILITIES, hostNetwork: raw.FERRY_POLICY_HOST_NETWORK, dockerHost: raw.DOCKER_HOST,
    }),
    uploadTtlSeconds: raw.FERRY_UPLOAD_TTL_SECONDS,
    retainImages: raw.FERRY_RETAIN_IMAGES,
    minFreeBytes: raw.FERRY_MIN_FREE_BYTES,
    stabilityWindowMs: raw.FERRY_STABILITY_WINDOW_MS,
    retainReleases: raw.FERRY_RETAIN_RELEASES,
    budget: { memoryBytes: raw.FERRY_BUDGET_MEMORY, cpus: raw.FERRY_BUDGET_CPUS },
    metricsToken: raw.FERRY_METRICS_TOKEN,
    testCrashAt: raw.FERRY_TEST_CRASH_AT,
    registry: raw.FERRY_REGISTRY_URL ? {
      url: raw.FERRY_REGISTRY_URL, joinToken: raw.FERRY_JOIN_TOKEN,
      advertiseUrl: raw.FERRY_ADVERTISE_URL,
      heartbeatSeconds: raw.FERRY_HEARTBEAT_SECONDS,
    } : undefined,
    proxy: raw.FERRY_PROXY_HTTP ? {
      http: raw.FERRY_PROXY_HTTP, https: raw.FERRY_PROXY_HTTPS, certificates: raw.FERRY_PROXY_CERTS,
      dir: raw.FERRY_PROXY_DIR ?? join(raw.FERRY_DATA_DIR, 'proxy'), slots: raw.FERRY_PROXY_SLOTS, log: raw.FERRY_PROXY_LOG,
    } : undefined,
    redisUrl: raw.FERRY_REDIS_URL,
    allowCidrs: raw.FERRY_ALLOW_CIDRS,
    trustedProxies: raw.FERRY_TRUSTED_PROXIES,
    tls: raw.FERRY_TLS_CERT && raw.FERRY_TLS_KEY ? { certFile: raw.FERRY_TLS_CERT, keyFile: raw.FERRY_TLS_KEY } : undefined,
    http: {
      maxHeaderBytes: raw.FERRY_MAX_HEADER_BYTES, headersTimeoutMs: raw.FERRY_HEADERS_TIMEOUT_MS, requestTimeoutMs: raw.FERRY_REQUEST_TIMEOUT_MS,
      keepAliveTimeoutMs: raw.FERRY_KEEPALIVE_TIMEOUT_MS, minBodyBytesPerSecond: raw.FERRY_MIN_BODY_RATE, bodyRateWindowMs: raw.FERRY_BODY_RATE_WINDOW_MS,
      maxConnections: raw.FERRY_MAX_CONNECTIONS,
    },
  });
}

function defaultHostId(): string {
  return hostname().split('.')[0]?.replace(/[^A-Za-z0-9_-]/g, '-') || 'receiver';
}
