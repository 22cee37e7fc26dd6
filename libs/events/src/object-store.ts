import type { NatsConnection, ObjectStore } from 'nats';
import { FerryError } from '@ferry/protocol';
import { loadNats } from './nats.ts';
import { natsConnectTarget, redactNatsUrl } from './nats-url.ts';

export interface ObjectStoreHandle {
  store: ObjectStore;
  close(): Promise<void>;
}

/**
 * A JetStream object store bucket (created when missing, with the user's rights to), for files
 * too large for a message: bundles. NATS splits each object into chunks and records its SHA-256,
 * which the client checks when it reads the object back.
 */
export async function openObjectStore(url: string, bucket: string, name: string): Promise<ObjectStoreHandle> {
  let nc: NatsConnection;
  try {
    const { connect } = await loadNats();
    nc = await connect({ ...natsConnectTarget(url), name, maxReconnectAttempts: 0 });
  } catch (cause) {
    const refused = (cause as { code?: unknown }).code === 'AUTHORIZATION_VIOLATION';
    throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: refused ? `NATS at ${redactNatsUrl(url)} refused the credentials` : `Cannot reach NATS at ${redactNatsUrl(url)}`, cause });
  }
  try {
    const store = await nc.jetstream().views.os(bucket);
    return { store, close: () => nc.drain() };
  } catch (cause) {
    await nc.close();
    throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: `NATS at ${redactNatsUrl(url)}: cannot open the object store bucket ${bucket}: ${(cause as Error).message} (does the user have its $O.${bucket}.> and $JS.API.*.OBJ_${bucket} rights?)`, cause });
  }
}
