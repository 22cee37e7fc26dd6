import { access, constants, mkdir } from 'node:fs/promises';
import { z } from 'zod';
import { FerryError } from '@ferry/protocol';

/*
 * Schema fragments for the variables every signed service (receiver, registry, sender service)
 * reads, so that a setting means and is checked the same everywhere. A service spreads the ones it
 * takes into its own z.object and keeps only what is its own.
 */

/** `host:port` or `[v6]:port`, as FERRY_LISTEN takes it. */
export function parseListen(value: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port > 65535) return undefined;
  return { host: match[1] ?? match[2] ?? '', port };
}

/**
 * A variable that `parse` turns into a value; the message of what `parse` throws becomes the
 * variable's problem. `required` is the problem when the variable is missing.
 */
export function parsedVar<T>(parse: (value: string) => T, required?: string) {
  return z.string(required === undefined ? undefined : { error: required }).transform((value, ctx) => {
    try {
      return parse(value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });
}

/** FERRY_LISTEN, parsed to host and port; `fallback` is e.g. `127.0.0.1:7701`. */
export function listenVar(fallback: string) {
  const port = fallback.slice(fallback.lastIndexOf(':') + 1);
  return z.string().default(fallback).transform((value, ctx) => {
    const listen = parseListen(value);
    if (listen) return listen;
    ctx.addIssue({ code: 'custom', message: `host:port, e.g. ${fallback} or [::1]:${port}` });
    return z.NEVER;
  });
}

/**
 * A client's signing key and grant (libs/auth loadCredentials reads the files): FERRY_KEY_ID,
 * FERRY_KEY_FILE or FERRY_KEY (the PEM itself), FERRY_GRANT_FILE or FERRY_GRANT.
 */
export const credentialVars = {
  FERRY_KEY_ID: z.string({ error: 'required: the id of the signing key (make one with "ferry key new")' }),
  FERRY_KEY_FILE: z.string().startsWith('/', 'an absolute path to the PEM private key').optional(),
  FERRY_KEY: z.string().optional(),
  FERRY_GRANT_FILE: z.string().startsWith('/', 'an absolute path to the signed grant').optional(),
  FERRY_GRANT: z.string().optional(),
};

/** FERRY_TRUST_FILE: the keys, grants and revocations a service trusts ("ferry trust"). */
export function trustFileVar() {
  return z.string().startsWith('/', 'an absolute path to the trust file ("ferry trust add")').optional();
}

/** FERRY_HOST_ID: the service's id, the audience of requests to it; `why` ends the message. */
export function hostIdVar(why: string, fallback: string) {
  return z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/, `letters, digits, "-" and "_" (${why})`).default(fallback);
}

/** FERRY_DATA_DIR: where the service keeps its state. */
export function dataDirVar(fallback: string) {
  return z.string().startsWith('/', 'an absolute path').default(fallback);
}

/**
 * Creates FERRY_DATA_DIR (owner only) and proves it writable at start-up, so a wrong setting stops
 * the service with a config error instead of failing its first write.
 * @throws FerryError FERRY_ERR_CONFIG naming the directory and the errno.
 */
export async function ensureWritableDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await access(dir, constants.W_OK);
  } catch (err) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `FERRY_DATA_DIR: cannot write to ${dir} (${(err as NodeJS.ErrnoException).code ?? 'error'}); set FERRY_DATA_DIR to a writable directory`, cause: err });
  }
}

/**
 * FERRY_MAX_CONNECTIONS: the most connections the service holds open at once (libs/http listen);
 * keep it well under the process's open-file limit, which its engine and store connections share.
 */
export function maxConnectionsVar() {
  return z.coerce.number({ error: 'a whole number' }).int('a whole number').min(16, 'at least 16').max(1_000_000, 'at most 1000000').default(1024);
}

export function natsUrlVar() {
  return z.string().regex(/^(nats|tls):\/\/[^\s]+$/, 'nats://[user:password@]host:port').optional();
}

export function redisUrlVar() {
  return z.string().regex(/^rediss?:\/\/[^\s]+$/, 'redis://[user:password@]host:port[/db]').optional();
}

export function dockerHostVar() {
  return z.string().regex(/^(unix|tcp):\/\/.+/, 'unix:///path/to/docker.sock or tcp://host:port').optional();
}

export function logLevelVar() {
  return z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info');
}
