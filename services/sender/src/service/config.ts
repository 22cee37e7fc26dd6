import { z } from 'zod';
import { join } from 'node:path';
import { AddressList } from '@ferry/auth';
import {
  credentialVars, dataDirVar, dockerHostVar, hostIdVar, listenVar, loadConfig, logLevelVar, natsUrlVar, parsedVar, redisUrlVar, trustFileVar, type Env,
} from '@ferry/config';
import { credentialsFrom } from '../config.ts';
import type { Credentials } from '../receiver-client.ts';

export const DEFAULT_LISTEN = '127.0.0.1:7703';

const schema = z.object({
  DOCKER_HOST: dockerHostVar(),
  FERRY_LISTEN: listenVar(DEFAULT_LISTEN),
  FERRY_HOST_ID: hostIdVar('the audience of signed requests', 'sender'),
  FERRY_TRUST_FILE: trustFileVar(),
  ...credentialVars,
  FERRY_DATA_DIR: dataDirVar('/var/lib/ferry-sender'),
  FERRY_NATS_URL: natsUrlVar(),
  FERRY_REDIS_URL: redisUrlVar(),
  FERRY_REGISTRY_URL: z.url({ protocol: /^https?$/, error: 'http(s)://host:port of the registry' }).optional(),
  FERRY_ALLOW_CIDRS: parsedVar((v) => AddressList.parse(v)).optional(),
  FERRY_LOG_LEVEL: logLevelVar(),
});

/** `ferry sender`'s settings (docs/sender-service.md). */
export interface SenderServiceConfig {
  dockerHost: string | undefined;
  listen: { host: string; port: number };
  hostId: string;
  /** The trust file: the callers it accepts and what each may deploy. */
  trustFile: string;
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
  return Object.freeze({
    dockerHost: raw.DOCKER_HOST,
    listen: raw.FERRY_LISTEN,
    hostId: raw.FERRY_HOST_ID,
    trustFile: raw.FERRY_TRUST_FILE ?? join(raw.FERRY_DATA_DIR, 'trust.json'),
    credentials: credentialsFrom(raw),
    dataDir: raw.FERRY_DATA_DIR,
    natsUrl: raw.FERRY_NATS_URL,
    redisUrl: raw.FERRY_REDIS_URL,
    registryUrl: raw.FERRY_REGISTRY_URL,
    allowCidrs: raw.FERRY_ALLOW_CIDRS,
    logLevel: raw.FERRY_LOG_LEVEL,
  });
}
