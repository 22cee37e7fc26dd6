import type { Logger } from '@ferry/log';
import { EVENT_STREAM, EVENT_SUBJECT_PREFIX, FerryError, subjectToken } from '@ferry/protocol';
import type { NatsConnection } from 'nats';
import { loadNats } from './nats.ts';
import { isFerryEvent, type FerryEvent } from './envelope.ts';
import { ensureEventStream, eventStreamInfo } from './stream.ts';

export interface ReadEventsOptions {
  /** NATS server URL(s), comma-separated. */
  url: string;
  deploymentId?: string;
  host?: string;
  service?: string;
  /** Keep waiting for new events after the stored ones, until `signal` aborts. */
  follow?: boolean;
  signal?: AbortSignal;
  /** Receives a warning for each stored message that is not a Ferry event. */
  logger?: Logger;
}

/** The subject filter for a host and/or service; undefined means the whole stream. */
export function eventFilter(host?: string, service?: string): string | undefined {
  if (host === undefined && service === undefined) return undefined;
  const token = (value: string | undefined): string => (value === undefined ? '*' : subjectToken(value));
  return `${EVENT_SUBJECT_PREFIX}.${token(host)}.${token(service)}.>`;
}

/**
 * Reads stored events from the start of the stream, oldest first. Without `follow` it ends once it
 * has caught up with what was stored when it started; with `follow` it then waits for new events
 * until `signal` aborts. Host and service narrow the read on the server; deploymentId is matched
 * here, because it is not part of the subject.
 *
 * @throws FerryError FERRY_ERR_EVENTS_UNAVAILABLE when NATS or JetStream cannot be reached.
 */
export async function* readEvents(options: ReadEventsOptions): AsyncGenerator<FerryEvent, void, undefined> {
  const { deploymentId, follow = false, signal, logger } = options;
  if (signal?.aborted) return;
  const nc = await connectReader(options.url, follow);
  try {
    const jsm = await nc.jetstreamManager().catch((cause: unknown) => {
      throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: 'JetStream is not available', cause });
    });
    let lastSeq = Number.POSITIVE_INFINITY;
    if (follow) {
      // A follower started before the first publisher still sees that publisher's events.
      await ensureEventStream(jsm);
    } else {
      const info = await eventStreamInfo(jsm);
      if (!info || info.state.messages === 0) return;
      lastSeq = info.state.last_seq;
    }

    const filter = eventFilter(options.host, options.service);
    const consumer = await nc.jetstream().consumers.get(EVENT_STREAM, filter === undefined ? {} : { filterSubjects: filter });
    const messages = await consumer.consume();
    const stop = (): void => void messages.close().catch(() => { /* already closed */ });
    signal?.addEventListener('abort', stop, { once: true });
    // An abort while connecting fired before the listener existed; honour it now or the read never ends.
    if (signal?.aborted) stop();
    try {
      if (!follow && (await consumer.info(true)).num_pending === 0) return;
      for await (const m of messages) {
        const event = decode(m.data);
        if (event === undefined) {
          logger?.warn({ seq: m.seq, subject: m.subject }, 'skipping a message that is not a Ferry event');
        } else if (deploymentId === undefined || event.deploymentid === deploymentId) {
          yield event;
        }
        // pending counts what matched the filter when this message was sent; lastSeq bounds the read
        // when publishers keep adding faster than we catch up.
        if (!follow && (m.info.pending === 0 || m.seq >= lastSeq)) return;
      }
    } finally {
      signal?.removeEventListener('abort', stop);
      stop();
    }
  } finally {
    await nc.close().catch(() => { /* nothing left to release */ });
  }
}

async function connectReader(url: string, follow: boolean): Promise<NatsConnection> {
  try {
    const { connect } = await loadNats();
    return await connect({
      servers: url.split(',').map((s) => s.trim()).filter(Boolean),
      name: 'ferry-events-reader',
      // A one-off read should fail fast; a follower should outlive server restarts.
      maxReconnectAttempts: follow ? -1 : 0,
    });
  } catch (cause) {
    throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: `Cannot reach NATS at ${url}`, cause });
  }
}

function decode(data: Uint8Array): FerryEvent | undefined {
  try {
    const value: unknown = JSON.parse(new TextDecoder().decode(data));
    return isFerryEvent(value) ? value : undefined;
  } catch {
    return undefined;
  }
}
