import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger, type Logger } from '@ferry/log';
import { FerryError } from '@ferry/protocol';
import type { JetStreamClient, NatsConnection } from 'nats';
import { loadNats } from './nats.ts';
import { subjectOf, type FerryEvent } from './envelope.ts';
import { natsConnectTarget, redactNatsUrl, type NatsConnectTarget } from './nats-url.ts';
import { Outbox, type OutboxEntry } from './outbox.ts';
import { signedEventPayload, type EventSigner } from './signature.ts';
import { ensureEventStream } from './stream.ts';

export type SinkStatus = 'connected' | 'connecting' | 'disabled';

/**
 * Where deployment code sends its events. Publishing is fire-and-forget on purpose: a deployment
 * must never wait for, or fail because of, the event bus.
 */
export interface EventSink {
  /**
   * Queues the event; never throws and never waits. `options.signer` signs this event in place of
   * the publisher's own signer (a sender signs its release events with the operator's key).
   */
  publish(event: FerryEvent, options?: PublishOptions): void;
  /** Resolves once every event published so far has been stored (or given up on at close). */
  flush(): Promise<void>;
  /** Flushes for a bounded time, then releases the connection. Idempotent; never rejects. */
  close(): Promise<void>;
  readonly status: SinkStatus;
}

export interface PublishOptions {
  signer?: EventSigner;
}

/** What a publisher tells about itself for readiness checks and metrics. */
export interface EventSinkHealth {
  readonly status: SinkStatus;
  /** Events handed over and not yet acknowledged by JetStream (the outbox depth, with an outbox). */
  readonly pending: number;
  /** Connection attempts since the connection was lost (or since start, before the first one). */
  readonly reconnectAttempts: number;
  /** When the connection was lost (or the publisher started, before the first one); undefined while connected. */
  readonly disconnectedSince: Date | undefined;
}

export interface JetStreamPublisherOptions {
  /** NATS server URL(s), comma-separated, each `nats://[user:password@]host:port`. */
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
  /**
   * A directory for the on-disk outbox. With it every event is written there before `publish()`
   * returns and removed after its ack, so events survive a crash or restart of the process and are
   * sent at the next start; without it the queue lives in memory only.
   */
  outboxDir?: string;
  /**
   * Signs every event as it is handed over (before it is written to the outbox): a receiver signs
   * with its host key, so that the registry believes only what a host says about itself.
   */
  signer?: EventSigner;
}

interface Queued {
  /** Empty for an entry left by a previous run until its file is read. */
  id: string;
  subject?: string;
  /** Dropped once the event is on disk; read back from there when its turn comes. */
  payload?: Uint8Array;
  stored?: OutboxEntry;
}

const encoder = new TextEncoder();

/**
 * Publishes events to JetStream in the order they were handed over, one at a time, each awaiting
 * its ack. A failed publish is retried with the same message id until it is acked, so the stream's
 * duplicate window turns "maybe stored" into "stored once" and no event is lost while the process
 * lives, however long NATS is away. With `outboxDir` that also holds across restarts: events wait
 * on disk (see Outbox) and the next start sends them first.
 */
export class JetStreamPublisher implements EventSink, EventSinkHealth {
  /** The URL with its password hidden: the only form that reaches a log line. */
  readonly #url: string;
  readonly #target: NatsConnectTarget;
  readonly #name: string;
  readonly #logger: Logger;
  readonly #closeTimeoutMs: number;
  readonly #ackTimeoutMs: number;
  readonly #retryInitialMs: number;
  readonly #retryMaxMs: number;
  // Aborted by close(): ends retry sleeps and the connect loop so nothing keeps the process alive.
  readonly #stop = new AbortController();
  readonly #outbox: Outbox | undefined;
  readonly #signer: EventSigner | undefined;

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
  #reconnectAttempts = 0;
  #disconnectedSince: Date | undefined = new Date();

  private constructor(options: JetStreamPublisherOptions, target: NatsConnectTarget, outbox?: Outbox) {
    this.#outbox = outbox;
    this.#signer = options.signer;
    this.#url = redactNatsUrl(options.url);
    this.#target = target;
    this.#name = options.name ?? 'ferry-events';
    this.#logger = options.logger ?? createLogger({ level: 'silent' });
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 5000;
    this.#ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.#retryInitialMs = options.retry?.initialMs ?? 100;
    this.#retryMaxMs = options.retry?.maxMs ?? 5000;
  }

  /**
   * Starts connecting and returns at once, also when NATS is down: events queue until it is up.
   * Awaiting this does not mean the connection exists; `status` says whether it does. With an
   * outbox, what a previous run left there is queued first.
   *
   * @throws FerryError FERRY_ERR_CONFIG when the URL cannot be parsed, or the outbox directory
   * cannot be created or read.
   */
  static async connect(options: JetStreamPublisherOptions): Promise<JetStreamPublisher> {
    // Parsed before anything else: a bad URL is a config error, not an outage to retry forever.
    const target = natsConnectTarget(options.url);
    let outbox: Outbox | undefined;
    let left: OutboxEntry[] = [];
    if (options.outboxDir !== undefined) {
      try {
        ({ outbox, pending: left } = await Outbox.open(options.outboxDir, options.logger ?? createLogger({ level: 'silent' })));
      } catch (cause) {
        throw new FerryError('FERRY_ERR_CONFIG', { message: `Cannot use the event outbox in ${options.outboxDir}: ${(cause as Error).message}`, cause });
      }
    }
    const publisher = new JetStreamPublisher(options, target, outbox);
    if (left.length > 0) {
      publisher.#logger.info({ pending: left.length, outbox: options.outboxDir }, 'events left by a previous run are sent first');
      for (const stored of left) publisher.#queue.push({ id: stored.id, stored });
      void publisher.#drain();
    }
    publisher.#connection().catch(() => { /* only rejects on close, which reports for itself */ });
    return publisher;
  }

  get status(): SinkStatus {
    return this.#status;
  }

  get pending(): number {
    return this.#queue.length;
  }

  get reconnectAttempts(): number {
    return this.#reconnectAttempts;
  }

  get disconnectedSince(): Date | undefined {
    return this.#status === 'connected' ? undefined : this.#disconnectedSince;
  }

  publish(event: FerryEvent, options: PublishOptions = {}): void {
    try {
      if (this.#closing) {
        this.#logger.error({ eventId: event.id, type: event.type }, 'event published after close was dropped');
        return;
      }
      // Subject and payload are computed now so a malformed event is refused here, once, instead
      // of blocking the queue behind endless retries.
      const subject = subjectOf(event);
      const signer = options.signer ?? this.#signer;
      const payload = signer ? signedEventPayload(event, signer) : encoder.encode(JSON.stringify(event));
      const stored = this.#outbox?.append(event.id, payload);
      this.#queue.push(stored?.file ? { id: event.id, subject, stored } : { id: event.id, subject, payload, ...(stored ? { stored } : {}) });
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
    // With an outbox and no connection, waiting buys nothing: the events are safe on disk already.
    const flushed = this.#outbox && this.#status !== 'connected' ? this.#queue.length === 0 : await this.#within(this.flush());
    if (!flushed) {
      const onDisk = this.#queue.filter((q) => q.stored?.file !== undefined).length;
      const lost = this.#queue.filter((q) => q.stored?.file === undefined);
      if (onDisk > 0) this.#logger.warn({ pending: onDisk, outbox: this.#outbox?.dir }, 'events wait in the outbox until the next start');
      if (lost.length > 0) {
        this.#logger.error({ unpublished: lost.length, eventIds: lost.map((q) => q.id) }, 'events could not be published before close');
      }
    }
    await this.#outbox?.synced();
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
          const message = await this.#message(head);
          if (!message) {
            this.#queue.shift();
            continue;
          }
          const js = await this.#jetstream();
          const ack = await js.publish(message.subject, message.payload, { msgID: head.id, timeout: this.#ackTimeoutMs });
          if (ack.duplicate) this.#logger.debug({ eventId: head.id, seq: ack.seq }, 'event was already stored');
          // Removed only after the ack: a crash in between sends it again, and the stream drops the copy.
          if (head.stored) await this.#outbox?.remove(head.stored);
          this.#queue.shift();
          attempt = 0;
        } catch (err) {
          if (this.#stop.signal.aborted) break;
          this.#streamReady = false;
          attempt += 1;
          // The first failure and then every tenth: one line per outage, plus a pulse while it lasts.
          if (attempt === 1 || attempt % 10 === 0) {
            this.#logger.warn(
              { err, eventId: head.id, attempt, queued: this.#queue.length },
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

  /** The subject and bytes of a queued event, read back from the outbox when they are not in memory. */
  async #message(queued: Queued): Promise<{ subject: string; payload: Uint8Array } | undefined> {
    if (queued.payload && queued.subject) return { subject: queued.subject, payload: queued.payload };
    const read = queued.stored ? await this.#outbox?.read(queued.stored) : undefined;
    if (!read) return undefined;
    // Kept while this event is retried; only the head of the queue ever holds its bytes.
    queued.id = read.event.id;
    queued.subject = subjectOf(read.event);
    queued.payload = read.payload;
    return { subject: queued.subject, payload: queued.payload };
  }

  async #jetstream(): Promise<JetStreamClient> {
    const nc = await this.#connection();
    // nats.js empties its outgoing buffer at every reconnect attempt, so a request sent while
    // disconnected is lost and only ends by timing out: wait for the connection instead.
    await this.#untilConnected();
    const options = { timeout: this.#ackTimeoutMs };
    if (!this.#streamReady) {
      await ensureEventStream(await nc.jetstreamManager(options), this.#logger);
      this.#streamReady = true;
    }
    return nc.jetstream(options);
  }

  #untilConnected(): Promise<void> {
    if (this.#status !== 'connecting') return Promise.resolve();
    return new Promise((resolve) => this.#connectedWaiters.push(resolve));
  }

  #setStatus(status: SinkStatus): void {
    if (status === 'connected') this.#reconnectAttempts = 0;
    else if (this.#status === 'connected') this.#disconnectedSince = new Date();
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
        const { connect } = await loadNats();
        const nc = await connect({
          ...this.#target,
          name: this.#name,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 1000,
        });
        if (this.#stop.signal.aborted) {
          await nc.close();
          continue;
        }
        this.#reconnectAttempts = 0;
        this.#adopt(nc);
        this.#logger.info({ server: nc.getServer() }, 'connected to NATS');
        return nc;
      } catch (cause) {
        this.#reconnectAttempts = attempt;
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
      const { DebugEvents, Events } = await loadNats();
      for await (const s of nc.status()) {
        if (s.type === Events.Disconnect) {
          this.#setStatus('connecting');
          this.#logger.warn({ server: s.data }, 'disconnected from NATS; reconnecting');
        } else if (s.type === Events.Reconnect) {
          this.#setStatus('connected');
          this.#logger.info({ server: s.data }, 'reconnected to NATS');
        } else if (s.type === DebugEvents.Reconnecting && this.#status !== 'connected') {
          // One per dial attempt; a count that keeps growing is what "never gives up" looks like.
          this.#reconnectAttempts += 1;
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
export class NullSink implements EventSink, EventSinkHealth {
  readonly status = 'disabled' as const;
  readonly pending = 0;
  readonly reconnectAttempts = 0;
  readonly disconnectedSince = undefined;
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
