import type { Logger } from '@ferry/log';
import { EVENT_STREAM, EVENT_SUBJECT_PREFIX } from '@ferry/protocol';
import type { JetStreamManager, StreamInfo } from 'nats';
import { loadNats } from './nats.ts';

/** Every subject the event stream captures. */
export const EVENT_STREAM_SUBJECTS = `${EVENT_SUBJECT_PREFIX}.>`;

/**
 * How long JetStream remembers a `Nats-Msg-Id` (the stream's `duplicate_window`, 2 minutes by
 * default). An event sent again within it is stored once, and the outbox relies on that: a receiver
 * killed between JetStream's ack and removing the event from its outbox sends it again after its
 * restart, so exactly-once holds when that resend comes within this window. A day covers a host
 * that stays down for hours; the cost is one remembered id per event of the last day.
 */
export const EVENT_DUPLICATE_WINDOW_MS = 24 * 60 * 60 * 1000;

// JetStream API error codes (nats-server's errors.json); matched by number because texts vary by version.
const STREAM_NOT_FOUND = 10059;
const STREAM_NAME_IN_USE = 10058;

// Read from the error's shape, so that a caller need not load nats.js to ask.
export function jsErrorCode(err: unknown): number | undefined {
  const jsError = (err as { jsError?: unknown } | null)?.jsError;
  if (typeof jsError !== 'function') return undefined;
  const code = (jsError.call(err) as { err_code?: unknown } | null)?.err_code;
  return typeof code === 'number' ? code : undefined;
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
 * operators may have tuned its limits or replicas, and those are theirs to keep; a duplicate window
 * shorter than EVENT_DUPLICATE_WINDOW_MS is only reported, as it weakens exactly-once delivery.
 */
export async function ensureEventStream(jsm: JetStreamManager, logger?: Logger): Promise<void> {
  const { millis, nanos, StorageType } = await loadNats();
  const existing = await eventStreamInfo(jsm);
  if (existing) {
    const windowMs = millis(existing.config.duplicate_window ?? 0);
    if (windowMs < EVENT_DUPLICATE_WINDOW_MS) {
      logger?.warn(
        { stream: EVENT_STREAM, duplicateWindowMs: windowMs, recommendedMs: EVENT_DUPLICATE_WINDOW_MS },
        'the event stream forgets message ids early: an event resent after a crash later than this may be stored twice',
      );
    }
    return;
  }
  try {
    await jsm.streams.add({
      name: EVENT_STREAM, subjects: [EVENT_STREAM_SUBJECTS], storage: StorageType.File,
      duplicate_window: nanos(EVENT_DUPLICATE_WINDOW_MS),
    });
  } catch (err) {
    // Another process created it between our look and our add, possibly with other settings.
    if (jsErrorCode(err) === STREAM_NAME_IN_USE) return;
    throw err;
  }
}
