import { z } from 'zod';
import { loadCredentials } from '@ferry/auth';
import { credentialVars, loadConfig, type Env } from '@ferry/config';
import type { Credentials } from './receiver-client.ts';

const schema = z.object({
  DOCKER_HOST: z.string().regex(/^(unix|tcp):\/\/.+/, 'unix:///path/to/docker.sock or tcp://host:port').optional(),
  ...credentialVars,
  FERRY_NATS_URL: z.string().regex(/^(nats|tls):\/\/[^\s]+$/, 'nats://host:port').optional(),
  FERRY_REGISTRY_URL: z.url({ protocol: /^https?$/, error: 'http(s)://host:port of the registry' }).optional(),
});

export interface SenderConfig {
  dockerHost: string | undefined;
  credentials: Credentials;
  natsUrl: string | undefined;
  /** FERRY_REGISTRY_URL: resolves selectors, records desired state, answers hosts/drift/status. */
  registryUrl: string | undefined;
}

/** The signing key and grant named by FERRY_KEY_ID, FERRY_KEY_FILE (or FERRY_KEY) and FERRY_GRANT_FILE (or FERRY_GRANT). */
export function credentialsFrom(raw: { FERRY_KEY_ID: string; FERRY_KEY_FILE?: string | undefined; FERRY_KEY?: string | undefined; FERRY_GRANT_FILE?: string | undefined; FERRY_GRANT?: string | undefined }): Credentials {
  return loadCredentials({ keyId: raw.FERRY_KEY_ID, keyFile: raw.FERRY_KEY_FILE, key: raw.FERRY_KEY, grantFile: raw.FERRY_GRANT_FILE, grant: raw.FERRY_GRANT });
}

export function loadSenderConfig(env: Env = process.env): Readonly<SenderConfig> {
  const raw = loadConfig(schema, env);
  return Object.freeze({
    dockerHost: raw.DOCKER_HOST,
    credentials: credentialsFrom(raw),
    natsUrl: raw.FERRY_NATS_URL,
    registryUrl: raw.FERRY_REGISTRY_URL,
  });
}
