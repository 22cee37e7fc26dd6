import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '@ferry/log';
import { EVENT_STREAM, EVENT_SUBJECT_PREFIX, FerryError, subjectToken } from '@ferry/protocol';
import type { JetStreamManager, NatsConnection } from 'nats';
import { loadNats } from './nats.ts';
import { isFerryEvent, type FerryEvent } from './envelope.ts';
import { natsConnectTarget, redactNatsUrl } from './nats-url.ts';
import { ensureEventStream, eventStreamInfo } from './stream.ts';

export interface ReadEventsOptions {
  /** NATS server URL(s), comma-separated, each `nats://[user:password@]host:port`. */
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
 * @throws FerryError FERRY_ERR_EVENTS_UNAVAILABLE when NATS or JetStream cannot be reached,
 * FERRY_ERR_CONFIG when the URL cannot be parsed.
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
      // A follower started before the first publisher still sees that publisher's events: it makes
      // the stream, or, when its NATS user may not (a reader), waits for a publisher to make it.
      try {
        await ensureEventStream(jsm);
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'PERMISSIONS_VIOLATION') throw err;
        if (!(await untilStreamExists(jsm, signal))) return;
      }
    } else {
      const info = await eventStreamInfo(jsm);
      if (!info || info.state.messages === 0) return;
      lastSeq = info.state.last_seq;
    }

    await mayConsume(nc, options.url);
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

/**
 * Fails at once when the connection's NATS user may not create consumers on the stream (a
 * publisher's credentials given to `ferry events`): nats.js would retry the ordered consumer the
 * server refuses for many minutes, its timers keeping the process alive. The question is a create
 * request JetStream itself rejects (its body is not JSON), so nothing is created either way.
 */
async function mayConsume(nc: NatsConnection, url: string): Promise<void> {
  try {
    await nc.request(`$JS.API.CONSUMER.CREATE.${EVENT_STREAM}.ferry-probe`, new TextEncoder().encode('-'), { timeout: 5000 });
  } catch (cause) {
    if ((cause as { code?: unknown }).code !== 'PERMISSIONS_VIOLATION') throw cause;
    throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', {
      message: `The NATS user of ${redactNatsUrl(url)} may not read the event stream; use a reader's credentials`, cause,
    });
  }
}

/** Polls for the stream once a second; false when `signal` aborted first. */
async function untilStreamExists(jsm: JetStreamManager, signal: AbortSignal | undefined): Promise<boolean> {
  while (!(await eventStreamInfo(jsm))) {
    const aborted = await sleep(1000, false, signal ? { signal } : {}).catch(() => true);
    if (aborted) return false;
  }
  return true;
}

async function connectReader(url: string, follow: boolean): Promise<NatsConnection> {
  const target = natsConnectTarget(url);
  try {
    const { connect } = await loadNats();
    return await connect({
      ...target,
      name: 'ferry-events-reader',
      // A one-off read should fail fast; a follower should outlive server restarts.
      maxReconnectAttempts: follow ? -1 : 0,
    });
  } catch (cause) {
    const refused = (cause as { code?: unknown }).code === 'AUTHORIZATION_VIOLATION';
    const message = refused ? `NATS at ${redactNatsUrl(url)} refused the credentials` : `Cannot reach NATS at ${redactNatsUrl(url)}`;
    throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message, cause });
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
