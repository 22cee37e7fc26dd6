import { hostname } from 'node:os';
import { RegistryClient, type SigningKey } from '@ferry/auth';
import type { Logger } from '@ferry/log';
import type { RegistrySettings } from '../config.ts';
import { actualServices, engineFacts, settledServices, type EngineReader } from './actual.ts';
import { Registration } from './registration.ts';

export { actualServices, engineFacts, settledServices, type EngineReader } from './actual.ts';
export { DEFAULT_HEARTBEAT_SECONDS, Registration, backoffMs, type RegistrationDeps } from './registration.ts';

/** Limit of one registration or heartbeat request. */
const REQUEST_TIMEOUT_MS = 10_000;

export interface ReceiverRegistrationOptions {
  settings: RegistrySettings;
  hostId: string;
  /** The host key: it signs the registration and heartbeats (the registry enrolled it). */
  hostKey: SigningKey;
  labels: Record<string, string>;
  version: string;
  docker: EngineReader;
  logger: Logger;
  /** What the receiver offers senders: `resumable`, `layers`, `tls`. */
  capabilities: string[];
  /** Where the server listens, known once it does (e.g. http://0.0.0.0:7701). */
  listenUrl: () => string;
  /** True while a deployment is under way (see settledServices). */
  changing?: () => boolean;
}

/** The receiver's registration, built from its settings; `start()` it once the server listens. */
export function receiverRegistration(options: ReceiverRegistrationOptions): Registration {
  const { settings, docker } = options;
  return new Registration({
    // Well under a heartbeat interval of a typical TTL: a hung request must not hold the loop.
    registry: new RegistryClient(settings.url, { keyId: options.hostKey.keyId, privateKey: options.hostKey.privateKey }, { timeoutMs: REQUEST_TIMEOUT_MS }),
    joinToken: settings.joinToken,
    logger: options.logger,
    heartbeatSeconds: settings.heartbeatSeconds,
    actual: () => settledServices(() => actualServices(docker), options.changing ?? (() => false)),
    self: async () => ({
      id: options.hostId,
      url: settings.advertiseUrl ?? advertisedUrl(options.listenUrl()),
      labels: options.labels,
      capabilities: options.capabilities,
      version: options.version,
      engine: await engineFacts(docker),
    }),
  });
}

/**
 * The URL senders are told when FERRY_ADVERTISE_URL is not set: where the server listens, with a
 * wildcard address (0.0.0.0, ::) replaced by the machine's name, which other hosts can resolve.
 */
export function advertisedUrl(listenUrl: string): string {
  const url = new URL(listenUrl);
  if (url.hostname === '0.0.0.0' || url.hostname === '[::]') url.hostname = hostname();
  return url.origin;
}
