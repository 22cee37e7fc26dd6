import { EVENT_STREAM, EVENT_SUBJECT_PREFIX } from '@ferry/protocol';
import { NatsError, StorageType, type JetStreamManager, type StreamInfo } from 'nats';

/** Every subject the event stream captures. */
export const EVENT_STREAM_SUBJECTS = `${EVENT_SUBJECT_PREFIX}.>`;

// JetStream API error codes (nats-server's errors.json); matched by number because texts vary by version.
const STREAM_NOT_FOUND = 10059;
const STREAM_NAME_IN_USE = 10058;

export function jsErrorCode(err: unknown): number | undefined {
  return err instanceof NatsError ? err.jsError()?.err_code : undefined;
}

/** The stream's info, or undefined when it does not exist. */
export async function eventStreamInfo(jsm: JetStreamManager): Promise<StreamInfo | undefined> {
  try {
    return await jsm.streams.info(EVENT_STREAM);
  } catch (err) {
    if (jsErrorCode(err) === STREAM_NOT_FOUND) return undefined;
    throw err;
  }
}

/**
 * Creates the FERRY_EVENTS stream when it is absent. An existing stream is left exactly as it is:
 * operators may have tuned its limits or replicas, and those are theirs to keep.
 */
export async function ensureEventStream(jsm: JetStreamManager): Promise<void> {
  if (await eventStreamInfo(jsm)) return;
  try {
    await jsm.streams.add({ name: EVENT_STREAM, subjects: [EVENT_STREAM_SUBJECTS], storage: StorageType.File });
  } catch (err) {
    // Another process created it between our look and our add, possibly with other settings.
    if (jsErrorCode(err) === STREAM_NAME_IN_USE) return;
    throw err;
  }
}
