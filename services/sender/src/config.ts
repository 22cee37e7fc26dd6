import { z } from 'zod';
import { isValidKeyId } from '@ferry/auth';
import { loadConfig, type Env } from '@ferry/config';
import type { Credentials } from './upload.ts';

const schema = z.object({
  DOCKER_HOST: z.string().regex(/^(unix|tcp):\/\/.+/, 'unix:///path/to/docker.sock or tcp://host:port').optional(),
  FERRY_KEY_ID: z.string({ error: 'required: the key id the receiver knows this key by (see "ferry keygen")' })
    .refine(isValidKeyId, 'letters, digits, ".", "_" and "-", at most 64'),
  FERRY_KEY: z.string({ error: 'required: the secret of FERRY_KEY_ID' }).min(16, 'at least 16 characters'),
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

export function loadSenderConfig(env: Env = process.env): Readonly<SenderConfig> {
  const raw = loadConfig(schema, env);
  return Object.freeze({
    dockerHost: raw.DOCKER_HOST,
    credentials: { keyId: raw.FERRY_KEY_ID, secret: raw.FERRY_KEY },
    natsUrl: raw.FERRY_NATS_URL,
    registryUrl: raw.FERRY_REGISTRY_URL,
  });
}
