import { z } from 'zod';
import { AddressList, KeyRing, isValidKeyId } from '@ferry/auth';
import {
  KEYS_REQUIRED, dataDirVar, hostIdVar, listenVar, loadConfig, logLevelVar, natsUrlVar, parsedVar, redisUrlVar, type Env,
} from '@ferry/config';
import { parseDriftIgnore, type DriftIgnoreRule } from './drift.ts';

const schema = z.object({
  FERRY_LISTEN: listenVar('127.0.0.1:7702'),
  FERRY_KEYS: parsedVar((v) => KeyRing.parse(v), KEYS_REQUIRED),
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
  FERRY_SENDER_URL: z.url({ protocol: /^https?$/, error: 'http(s)://host:port of the sender service' }).optional(),
  FERRY_KEY_ID: z.string().refine(isValidKeyId, 'a key id: letters, digits, ".", "_" and "-"').optional(),
  FERRY_KEY: z.string().min(16, 'at least 16 characters').optional(),
  FERRY_ALLOW_CIDRS: parsedVar((v) => AddressList.parse(v)).optional(),
  FERRY_DASHBOARD_TOKEN: z.string().regex(/^[\x21-\x7e]{16,256}$/, '16–256 printable characters without spaces').optional(),
})
  .refine((v) => (v.FERRY_KEY_ID === undefined) === (v.FERRY_KEY === undefined), { message: 'FERRY_KEY_ID and FERRY_KEY go together: set both or neither', path: ['FERRY_KEY_ID'] })
  .refine((v) => v.FERRY_DRIFT_MODE !== 'correct' || (v.FERRY_SENDER_URL !== undefined && v.FERRY_KEY_ID !== undefined), {
    message: 'FERRY_DRIFT_MODE=correct needs FERRY_SENDER_URL and FERRY_KEY_ID/FERRY_KEY (the registry signs its request to the sender service)', path: ['FERRY_DRIFT_MODE'],
  });

export interface RegistryConfig {
  listen: { host: string; port: number };
  keys: KeyRing;
  /** The registry's id: the audience of signed requests to it. */
  hostId: string;
  natsUrl: string | undefined;
  redisUrl: string | undefined;
  dataDir: string;
  logLevel: string;
  hostTtlSeconds: number;
  driftMode: 'warn' | 'correct';
  driftIgnore: readonly DriftIgnoreRule[];
  senderUrl: string | undefined;
  /** What the registry signs its own requests (to the sender service) with. */
  credentials: { keyId: string; secret: string } | undefined;
  allowCidrs: AddressList | undefined;
  /** For the dashboard, when one is mounted. */
  dashboardToken: string | undefined;
}

/** @throws FerryError FERRY_ERR_CONFIG listing every problem at once. */
export function loadRegistryConfig(env: Env = process.env): RegistryConfig {
  const c = loadConfig(schema, env);
  return {
    listen: c.FERRY_LISTEN, keys: c.FERRY_KEYS, hostId: c.FERRY_HOST_ID, natsUrl: c.FERRY_NATS_URL, redisUrl: c.FERRY_REDIS_URL,
    dataDir: c.FERRY_DATA_DIR, logLevel: c.FERRY_LOG_LEVEL, hostTtlSeconds: c.FERRY_HOST_TTL_SECONDS,
    driftMode: c.FERRY_DRIFT_MODE, driftIgnore: c.FERRY_DRIFT_IGNORE, senderUrl: c.FERRY_SENDER_URL?.replace(/\/+$/, ''),
    credentials: c.FERRY_KEY_ID !== undefined && c.FERRY_KEY !== undefined ? { keyId: c.FERRY_KEY_ID, secret: c.FERRY_KEY } : undefined,
    allowCidrs: c.FERRY_ALLOW_CIDRS, dashboardToken: c.FERRY_DASHBOARD_TOKEN,
  };
}
