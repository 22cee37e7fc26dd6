import { z } from 'zod';
import { AddressList, KeyRing, isValidKeyId } from '@ferry/auth';
import { loadConfig, parseListen, type Env } from '@ferry/config';
import type { Credentials } from '../upload.ts';

export const DEFAULT_LISTEN = '127.0.0.1:7703';

const schema = z.object({
  DOCKER_HOST: z.string().regex(/^(unix|tcp):\/\/.+/, 'unix:///path/to/docker.sock or tcp://host:port').optional(),
  FERRY_LISTEN: z.string().default(DEFAULT_LISTEN).refine((v) => parseListen(v) !== undefined, 'host:port, e.g. 127.0.0.1:7703 or [::1]:7703'),
  FERRY_HOST_ID: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/, 'letters, digits, "-" and "_" (the audience of signed requests)').default('sender'),
  FERRY_KEYS: z.string({ error: 'required: keyid:secret[,keyid:secret…] of the callers allowed to ask for deployments' })
    .transform((value, ctx) => {
      try {
        return KeyRing.parse(value);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    }),
  FERRY_KEY_ID: z.string({ error: 'required: the key id the receivers know this sender by' }).refine(isValidKeyId, 'letters, digits, ".", "_" and "-", at most 64'),
  FERRY_KEY: z.string({ error: 'required: the secret of FERRY_KEY_ID' }).min(16, 'at least 16 characters'),
  FERRY_DATA_DIR: z.string().startsWith('/', 'an absolute path').default('/var/lib/ferry-sender'),
  FERRY_NATS_URL: z.string().regex(/^(nats|tls):\/\/[^\s]+$/, 'nats://host:port').optional(),
  FERRY_REDIS_URL: z.string().regex(/^rediss?:\/\/[^\s]+$/, 'redis://[user:password@]host:port[/db]').optional(),
  FERRY_REGISTRY_URL: z.url({ protocol: /^https?$/, error: 'http(s)://host:port of the registry' }).optional(),
  FERRY_ALLOW_CIDRS: z.string().transform((value, ctx) => {
    try {
      return AddressList.parse(value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  }).optional(),
  FERRY_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
});

/** `ferry sender`'s settings (README "Sender service"). */
export interface SenderServiceConfig {
  dockerHost: string | undefined;
  listen: { host: string; port: number };
  hostId: string;
  /** The callers it verifies. */
  keys: KeyRing;
  /** What it signs its uploads to receivers (and registry calls) with. */
  credentials: Credentials;
  dataDir: string;
  natsUrl: string | undefined;
  redisUrl: string | undefined;
  registryUrl: string | undefined;
  allowCidrs: AddressList | undefined;
  logLevel: string;
}

/** Reads and validates the sender service's environment; every problem is reported in one error. */
export function loadSenderServiceConfig(env: Env = process.env): Readonly<SenderServiceConfig> {
  const raw = loadConfig(schema, env);
  const listen = parseListen(raw.FERRY_LISTEN);
  if (!listen) throw new Error('unreachable: FERRY_LISTEN was validated');
  return Object.freeze({
    dockerHost: raw.DOCKER_HOST,
    listen,
    hostId: raw.FERRY_HOST_ID,
    keys: raw.FERRY_KEYS,
    credentials: { keyId: raw.FERRY_KEY_ID, secret: raw.FERRY_KEY },
    dataDir: raw.FERRY_DATA_DIR,
    natsUrl: raw.FERRY_NATS_URL,
    redisUrl: raw.FERRY_REDIS_URL,
    registryUrl: raw.FERRY_REGISTRY_URL,
    allowCidrs: raw.FERRY_ALLOW_CIDRS,
    logLevel: raw.FERRY_LOG_LEVEL,
  });
}
