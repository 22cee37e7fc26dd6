import { hostname } from 'node:os';
import { z } from 'zod';
import { KeyRing } from '@ferry/auth';
import { loadConfig, parseListen, type Env } from '@ferry/config';

const schema = z.object({
  DOCKER_HOST: z.string().regex(/^(unix|tcp):\/\/.+/, 'unix:///path/to/docker.sock or tcp://host:port').optional(),
  FERRY_LISTEN: z.string().default('127.0.0.1:7701').refine((v) => parseListen(v) !== undefined, 'host:port, e.g. 127.0.0.1:7701 or [::1]:7701'),
  FERRY_KEYS: z.string({ error: 'required: keyid:secret[,keyid:secret…] (make one with "ferry keygen")' })
    .transform((value, ctx) => {
      try {
        return KeyRing.parse(value);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    }),
  FERRY_NATS_URL: z.string().regex(/^(nats|tls):\/\/[^\s]+$/, 'nats://host:port').optional(),
  FERRY_DATA_DIR: z.string().startsWith('/', 'an absolute path').default('/var/lib/ferry'),
  FERRY_HOST_ID: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/, 'letters, digits, "-" and "_" (it becomes a NATS subject token)').default(defaultHostId()),
  FERRY_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
});

export interface ReceiverConfig {
  dockerHost: string | undefined;
  listen: { host: string; port: number };
  keys: KeyRing;
  natsUrl: string | undefined;
  dataDir: string;
  hostId: string;
  logLevel: string;
}

/** Reads and validates the receiver's environment; every problem is reported in one error. */
export function loadReceiverConfig(env: Env = process.env): Readonly<ReceiverConfig> {
  const raw = loadConfig(schema, env);
  const listen = parseListen(raw.FERRY_LISTEN);
  if (!listen) throw new Error('unreachable: FERRY_LISTEN was validated');
  return Object.freeze({
    dockerHost: raw.DOCKER_HOST,
    listen,
    keys: raw.FERRY_KEYS,
    natsUrl: raw.FERRY_NATS_URL,
    dataDir: raw.FERRY_DATA_DIR,
    hostId: raw.FERRY_HOST_ID,
    logLevel: raw.FERRY_LOG_LEVEL,
  });
}

function defaultHostId(): string {
  return hostname().split('.')[0]?.replace(/[^A-Za-z0-9_-]/g, '-') || 'receiver';
}
