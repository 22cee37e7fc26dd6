import { z } from 'zod';
import { join } from 'node:path';
import { AddressList, loadCredentials, type ClientCredentials } from '@ferry/auth';
import {
  dataDirVar, hostIdVar, listenVar, loadConfig, logLevelVar, maxConnectionsVar, natsUrlVar, parsedVar, redisUrlVar, trustFileVar, type Env,
} from '@ferry/config';
import { defaultDashboardHosts, parseDashboardHosts } from './dashboard/access.ts';
import { parseDriftIgnore, type DriftIgnoreRule } from './drift.ts';
import { DEFAULT_MAX_HOSTS } from './registry.ts';

const schema = z.object({
  FERRY_LISTEN: listenVar('127.0.0.1:7702'),
  FERRY_TRUST_FILE: trustFileVar(),
  FERRY_HOST_ID: hostIdVar('the audience of requests to the registry', 'registry'),
  FERRY_NATS_URL: natsUrlVar(),
  FERRY_REDIS_URL: redisUrlVar(),
  FERRY_DATA_DIR: dataDirVar('/var/lib/ferry-registry'),
  FERRY_LOG_LEVEL: logLevelVar(),
  FERRY_HOST_TTL_SECONDS: z.coerce.number({ error: 'a whole number of seconds' }).int('a whole number of seconds').min(1, 'at least 1').max(86_400, 'at most 86400').default(30),
  FERRY_DRIFT_MODE: z.enum(['warn', 'correct'], { error: 'warn or correct' }).default('warn'),
  FERRY_DRIFT_IGNORE: z.string().optional().transform((value, ctx) => {
    try {
      return parseDriftIgnore(value ?? '');
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  }),
  // Drift correction no longer goes through the sender service: an old setting is named, not ignored.
  FERRY_SENDER_URL: z.never({ error: 'no longer used: in correct mode the registry asks the drifted host itself (docs/registry.md); remove it' }).optional(),
  FERRY_MAX_HOSTS: z.coerce.number({ error: 'a whole number' }).int('a whole number').min(1, 'at least 1').max(1_000_000, 'at most 1000000').default(DEFAULT_MAX_HOSTS),
  FERRY_KEY_ID: z.string().optional(),
  FERRY_KEY_FILE: z.string().startsWith('/', 'an absolute path to the PEM private key').optional(),
  FERRY_KEY: z.string().optional(),
  FERRY_GRANT_FILE: z.string().startsWith('/', 'an absolute path to the signed grant').optional(),
  FERRY_GRANT: z.string().optional(),
  FERRY_ALLOW_CIDRS: parsedVar((v) => AddressList.parse(v)).optional(),
  FERRY_DASHBOARD_TOKEN: z.string().regex(/^[\x21-\x7e]{16,256}$/, '16–256 printable characters without spaces').optional(),
  FERRY_MAX_CONNECTIONS: maxConnectionsVar(),
  FERRY_DASHBOARD_MAX_STREAMS: z.coerce.number({ error: 'a whole number' }).int('a whole number').min(1, 'at least 1').max(10_000, 'at most 10000').optional(),
  FERRY_DASHBOARD_HOSTS: parsedVar(parseDashboardHosts).optional(),
})
  .refine((v) => (v.FERRY_KEY_ID === undefined) === (v.FERRY_KEY === undefined && v.FERRY_KEY_FILE === undefined), { message: 'FERRY_KEY_ID and FERRY_KEY_FILE (or FERRY_KEY) go together: set both or neither', path: ['FERRY_KEY_ID'] })
  .refine((v) => v.FERRY_DRIFT_MODE !== 'correct' || v.FERRY_KEY_ID !== undefined, {
    message: 'FERRY_DRIFT_MODE=correct needs FERRY_KEY_ID and FERRY_KEY_FILE (the registry signs its reconcile requests to the hosts; a read grant is enough)', path: ['FERRY_DRIFT_MODE'],
  });

export interface RegistryConfig {
  listen: { host: string; port: number };
  /** The trust file: the keys that may call the registry and what each may do. */
  trustFile: string;
  /** The registry's id: the audience of signed requests to it. */
  hostId: string;
  natsUrl: string | undefined;
  redisUrl: string | undefined;
  dataDir: string;
  logLevel: string;
  hostTtlSeconds: number;
  driftMode: 'warn' | 'correct';
  driftIgnore: readonly DriftIgnoreRule[];
  /** FERRY_MAX_HOSTS: registered (and enrolled) hosts it takes at most. */
  maxHosts: number;
  /** What the registry signs its reconcile requests to hosts with (correct mode), and its own events. */
  credentials: ClientCredentials | undefined;
  allowCidrs: AddressList | undefined;
  /** For the dashboard, when one is mounted. */
  dashboardToken: string | undefined;
  /** Most connections the listener holds open at once (libs/http listen). */
  maxConnections: number;
  /** Live dashboard streams open at once; undefined: the dashboard's default. */
  dashboardMaxStreams: number | undefined;
  /** Host names the dashboard answers to (FERRY_DASHBOARD_HOSTS; default: loopback names and the listen address). */
  dashboardHosts: string[];
}

/** @throws FerryError FERRY_ERR_CONFIG listing every problem at once. */
export function loadRegistryConfig(env: Env = process.env): RegistryConfig {
  const c = loadConfig(schema, env);
  return {
    listen: c.FERRY_LISTEN, trustFile: c.FERRY_TRUST_FILE ?? join(c.FERRY_DATA_DIR, 'trust.json'), hostId: c.FERRY_HOST_ID, natsUrl: c.FERRY_NATS_URL, redisUrl: c.FERRY_REDIS_URL,
    dataDir: c.FERRY_DATA_DIR, logLevel: c.FERRY_LOG_LEVEL, hostTtlSeconds: c.FERRY_HOST_TTL_SECONDS,
    driftMode: c.FERRY_DRIFT_MODE, driftIgnore: c.FERRY_DRIFT_IGNORE, maxHosts: c.FERRY_MAX_HOSTS,
    credentials: c.FERRY_KEY_ID === undefined ? undefined : loadCredentials({ keyId: c.FERRY_KEY_ID, keyFile: c.FERRY_KEY_FILE, key: c.FERRY_KEY, grantFile: c.FERRY_GRANT_FILE, grant: c.FERRY_GRANT }),
    allowCidrs: c.FERRY_ALLOW_CIDRS, dashboardToken: c.FERRY_DASHBOARD_TOKEN, maxConnections: c.FERRY_MAX_CONNECTIONS,
    dashboardMaxStreams: c.FERRY_DASHBOARD_MAX_STREAMS,
    dashboardHosts: c.FERRY_DASHBOARD_HOSTS ?? defaultDashboardHosts(c.FERRY_LISTEN.host),
  };
}
