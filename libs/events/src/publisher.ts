import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger, type Logger } from '@ferry/log';
import { FerryError } from '@ferry/protocol';
import { connect, Events, type JetStreamClient, type NatsConnection } from 'nats';
import { subjectOf, type FerryEvent } from './envelope.ts';
import { ensureEventStream } from './stream.ts';

export type SinkStatus = 'connected' | 'connecting' | 'disabled';

/**
 * Where deployment code sends its events. Publishing is fire-and-forget on purpose: a deployment
 * must never wait for, or fail because of, the event bus.
 */
export interface EventSink {
  /** Queues the event; never throws and never waits. */
  publish(event: FerryEvent): void;
  /** Resolves once every event published so far has been stored (or given up on at close). */
  flush(): Promise<void>;
  /** Flushes for a bounded time, then releases the connection. Idempotent; never rejects. */
  close(): Promise<void>;
  readonly status: SinkStatus;
}

export interface JetStreamPublisherOptions {
  /** NATS server URL(s), comma-separated. */
  url: string;
  logger?: Logger;
  /** Connection name shown by the NATS server (`nats server report connections`). */
  name?: string;
  /** How long close() waits for the queue to empty before giving up on what is left. Default 5000. */
  closeTimeoutMs?: number;
  /** How long one publish waits for its ack before it is retried. Default 5000. */
  ackTimeoutMs?: number;
  /** Retry delays double from `initialMs` up to `maxMs`. Defaults 100 and 5000. */
  retry?: { initialMs?: number; maxMs?: number };
}

interface Queued {
  event: FerryEvent;
  subject: string;
  payload: Uint8Array;
}

const encoder = new TextEncoder();

/**
 * Publishes events to JetStream in the order they were handed over, one at a time, each awaiting
 * its ack. A failed publish is retried with the same message id until it is acked, so the stream's
 * duplicate window turns "maybe stored" into "stored once" and no event is lost while the process
 * lives, however long NATS is away.
 */
export class JetStreamPublisher implements EventSink {
  readonly #url: string;
  readonly #name: string;
  readonly #logger: Logger;
  readonly #closeTimeoutMs: number;
  readonly #ackTimeoutMs: number;
  readonly #retryInitialMs: number;
  readonly #retryMaxMs: number;
  // Aborted by close(): ends retry sleeps and the connect loop so nothing keeps the process alive.
  readonly #stop = new AbortController();

  readonly #queue: Queued[] = [];
  readonly #idleWaiters: (() => void)[] = [];
  readonly #connectedWaiters: (() => void)[] = [];
  #draining = false;
  #nc: NatsConnection | undefined;
  #connecting: Promise<NatsConnection> | undefined;
  // False after any failed publish, so a stream lost with a server's store is made again.
  #streamReady = false;
  #status: SinkStatus = 'connecting';
  #closing: Promise<void> | undefined;

  private constructor(options: JetStreamPublisherOptions) {
    this.#url = options.url;
    this.#name = options.name ?? 'ferry-events';
    this.#logger = options.logger ?? createLogger({ level: 'silent' });
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 5000;
    this.#ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.#retryInitialMs = options.retry?.initialMs ?? 100;
    this.#retryMaxMs = options.retry?.maxMs ?? 5000;
  }

  /**
   * Starts connecting and returns at once, also when NATS is down: events queue until it is up.
   * Awaiting this does not mean the connection exists; `status` says whether it does.
   */
  static connect(options: JetStreamPublisherOptions): Promise<JetStreamPublisher> {
    const publisher = new JetStreamPublisher(options);
    publisher.#connection().catch(() => { /* only rejects on close, which reports for itself */ });
    return Promise.resolve(publisher);
  }

  get status(): SinkStatus {
    return this.#status;
  }

  publish(event: FerryEvent): void {
    try {
      if (this.#closing) {
        this.#logger.error({ eventId: event.id, type: event.type }, 'event published after close was dropped');
        return;
      }
      // Subject and payload are computed now so a malformed event is refused here, once, instead
      // of blocking the queue behind endless retries.
      this.#queue.push({ event, subject: subjectOf(event), payload: encoder.encode(JSON.stringify(event)) });
    } catch (err) {
      this.#logger.error({ err, eventId: event?.id, type: event?.type }, 'event could not be encoded and was dropped');
      return;
    }
    if (!this.#draining) void this.#drain();
  }

  flush(): Promise<void> {
    if (!this.#draining && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const flushed = await this.#within(this.flush());
    if (!flushed) {
      this.#logger.error(
        { unpublished: this.#queue.length, eventIds: this.#queue.map((q) => q.event.id) },
        'events could not be published before close',
      );
    }
    const connected = this.#status === 'connected';
    this.#stop.abort();
    this.#setStatus('disabled');
    const nc = this.#nc;
    if (nc && !nc.isClosed()) {
      try {
        // A drain needs the server to answer; without a connection it would wait for one forever.
        if (connected) await this.#within(nc.drain());
      } catch (err) {
        this.#logger.warn({ err }, 'draining the NATS connection failed');
      }
      if (!nc.isClosed()) await nc.close().catch((err: unknown) => this.#logger.warn({ err }, 'closing the NATS connection failed'));
    }
    this.#queue.length = 0;
    this.#settleIdle();
  }

  /** True when `work` settled within the close bound; its rejection propagates. */
  async #within(work: Promise<void>): Promise<boolean> {
    const timer = new AbortController();
    try {
      return await Promise.race([
        work.then(() => true),
        sleep(this.#closeTimeoutMs, false, { signal: timer.signal }),
      ]);
    } finally {
      timer.abort();
    }
  }

  async #drain(): Promise<void> {
    this.#draining = true;
    let attempt = 0;
    try {
      while (this.#queue.length > 0 && !this.#stop.signal.aborted) {
        const head = this.#queue[0];
        try {
          const js = await this.#jetstream();
          const ack = await js.publish(head.subject, head.payload, { msgID: head.event.id, timeout: this.#ackTimeoutMs });
          if (ack.duplicate) this.#logger.debug({ eventId: head.event.id, seq: ack.seq }, 'event was already stored');
          this.#queue.shift();
          attempt = 0;
        } catch (err) {
          if (this.#stop.signal.aborted) break;
          this.#streamReady = false;
          attempt += 1;
          // The first failure and then every tenth: one line per outage, plus a pulse while it lasts.
          if (attempt === 1 || attempt % 10 === 0) {
            this.#logger.warn(
              { err, eventId: head.event.id, attempt, queued: this.#queue.length },
              'publishing an event failed; retrying',
            );
          }
          await this.#sleep(this.#backoff(attempt));
        }
      }
    } finally {
      this.#draining = false;
      if (this.#queue.length === 0 || this.#stop.signal.aborted) this.#settleIdle();
    }
  }

  async #jetstream(): Promise<JetStreamClient> {
    const nc = await this.#connection();
    // nats.js empties its outgoing buffer at every reconnect attempt, so a request sent while
    // disconnected is lost and only ends by timing out: wait for the connection instead.
    await this.#untilConnected();
    const options = { timeout: this.#ackTimeoutMs };
    if (!this.#streamReady) {
      await ensureEventStream(await nc.jetstreamManager(options));
      this.#streamReady = true;
    }
    return nc.jetstream(options);
  }

  #untilConnected(): Promise<void> {
    if (this.#status !== 'connecting') return Promise.resolve();
    return new Promise((resolve) => this.#connectedWaiters.push(resolve));
  }

  #setStatus(status: SinkStatus): void {
    this.#status = status;
    if (status !== 'connecting') for (const resolve of this.#connectedWaiters.splice(0)) resolve();
  }

  #connection(): Promise<NatsConnection> {
    if (this.#nc && !this.#nc.isClosed()) return Promise.resolve(this.#nc);
    this.#connecting ??= this.#connectLoop().finally(() => {
      this.#connecting = undefined;
    });
    return this.#connecting;
  }

  // nats.js's own `waitOnFirstConnect` would also wait out a server that is down at start, but it
  // offers no way to stop waiting: a publisher closed before NATS ever came up would keep the
  // process alive. So the first connection is retried here, abortably; once connected, nats.js
  // reconnects by itself, forever.
  async #connectLoop(): Promise<NatsConnection> {
    for (let attempt = 1; ; attempt++) {
      if (this.#stop.signal.aborted) throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: 'Event publisher is closed' });
      this.#setStatus('connecting');
      try {
        const nc = await connect({
          servers: this.#url.split(',').map((s) => s.trim()).filter(Boolean),
          name: this.#name,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 1000,
        });
        if (this.#stop.signal.aborted) {
          await nc.close();
          continue;
        }
        this.#adopt(nc);
        this.#logger.info({ server: nc.getServer() }, 'connected to NATS');
        return nc;
      } catch (cause) {
        if (attempt === 1 || attempt % 10 === 0) {
          const err = new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: `Cannot reach NATS at ${this.#url}`, cause });
          this.#logger.warn({ err, attempt }, 'NATS is not reachable; events are queued until it is');
        }
        await this.#sleep(this.#backoff(attempt));
      }
    }
  }

  #adopt(nc: NatsConnection): void {
    this.#nc = nc;
    this.#setStatus('connected');
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === Events.Disconnect) {
          this.#setStatus('connecting');
          this.#logger.warn({ server: s.data }, 'disconnected from NATS; reconnecting');
        } else if (s.type === Events.Reconnect) {
          this.#setStatus('connected');
          this.#logger.info({ server: s.data }, 'reconnected to NATS');
        }
      }
    })().catch((err: unknown) => this.#logger.debug({ err }, 'NATS status stream ended'));
    void nc.closed().then((err) => {
      if (this.#stop.signal.aborted) return;
      // Only reached when nats.js gives up (e.g. rejected credentials): start over with a new connection.
      this.#logger.error({ err }, 'NATS connection closed');
      this.#connection().catch(() => { /* only rejects on close */ });
    });
  }

  #backoff(attempt: number): number {
    return Math.min(this.#retryMaxMs, this.#retryInitialMs * 2 ** Math.min(attempt - 1, 30));
  }

  async #sleep(ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: this.#stop.signal }).catch(() => { /* aborted by close */ });
  }

  #settleIdle(): void {
    for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }
}

export interface NullSinkOptions {
  logger?: Logger;
}

/** The sink when no NATS URL is configured: events only reach the debug log. */
export class NullSink implements EventSink {
  readonly status = 'disabled' as const;
  readonly #logger: Logger | undefined;

  constructor(options: NullSinkOptions = {}) {
    this.#logger = options.logger;
  }

  publish(event: FerryEvent): void {
    this.#logger?.debug({ event }, 'event (no NATS configured)');
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
