import type { KeyObject } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureEventStream, isFerryEvent, natsConnectTarget, type FerryEvent, type NatsConnectTarget } from '@ferry/events';
import type { Logger } from '@ferry/log';
import { EVENT_STREAM, FerryError } from '@ferry/protocol';
import { AckPolicy, connect, DeliverPolicy, Events, type ConsumerMessages, type JetStreamManager, type JsMsg, type NatsConnection } from 'nats';
import { admitEvent, DROP_REASONS, type DropReason, type ProvenanceKeys } from './provenance.ts';
import type { Registry } from './registry.ts';

const decoder = new TextDecoder();

export interface ProjectorStatus {
  status: 'up' | 'down' | 'disabled';
  /** The stream sequence of the last event applied. */
  checkpoint: number;
  reason?: string;
  /** Events kept out of the projection since start, by reason (docs/registry.md "Events it believes"). */
  dropped: Record<DropReason, number>;
}

/**
 * Feeds the event stream into the registry's projection through a durable JetStream consumer
 * (explicit acks, one message at a time, in stream order). At every (re)start the consumer is
 * placed just after the projection's checkpoint, so the projection and the consumer's position can
 * never disagree, whichever of the two survived a crash; an event delivered again is dropped by id.
 */
export class EventProjector {
  readonly #target: NatsConnectTarget;
  readonly #durable: string;
  readonly #registry: Registry;
  readonly #log: Logger;
  readonly #stop = new AbortController();
  #nc: NatsConnection | undefined;
  #messages: ConsumerMessages | undefined;
  #up = false;
  #reason: string | undefined = 'connecting';
  #loop: Promise<void> | undefined;
  /** Set while a rebuild holds the loop between two consumers. */
  #paused: Promise<void> | undefined;
  #resume: (() => void) | undefined;
  #parked: (() => void) | undefined;
  #rebuilding = false;
  #progress: (() => void)[] = [];
  #appliedSinceReset = 0;
  readonly #registryKey: KeyObject | undefined;
  readonly #releaseKeysAt: ProvenanceKeys['releaseKeysAt'];
  readonly #dropped = Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>;

  /**
   * `registryKey`: the public key the registry signs its own events with; `releaseKeysAt`: the keys
   * an operator's release event may be signed with (see provenance.ts).
   */
  constructor(options: {
    url: string; durable: string; registry: Registry; logger: Logger; registryKey?: KeyObject; releaseKeysAt?: ProvenanceKeys['releaseKeysAt'];
  }) {
    this.#registryKey = options.registryKey;
    this.#releaseKeysAt = options.releaseKeysAt;
    // Parsed here: a URL that cannot be used is a config error at start, not a retry loop.
    this.#target = natsConnectTarget(options.url);
    this.#durable = options.durable;
    this.#registry = options.registry;
    this.#log = options.logger;
  }

  start(): void {
    this.#loop ??= this.#run();
  }

  status(): ProjectorStatus {
    return {
      status: this.#up ? 'up' : 'down', checkpoint: this.#registry.checkpoint,
      ...(this.#up || this.#reason === undefined ? {} : { reason: this.#reason }),
      dropped: { ...this.#dropped },
    };
  }

  /**
   * Wipes the projection and replays the stream from its start; resolves with the number of events
   * applied once it has caught up with what the stream held when the rebuild began.
   *
   * @throws FerryError FERRY_ERR_REBUILD_IN_PROGRESS, FERRY_ERR_EVENTS_UNAVAILABLE
   */
  async rebuild(): Promise<number> {
    if (this.#rebuilding) throw new FerryError('FERRY_ERR_REBUILD_IN_PROGRESS');
    if (!this.#up || !this.#nc) throw new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: 'The registry is not connected to the event stream; rebuild when it is (see /readyz)' });
    this.#rebuilding = true;
    try {
      const target = (await (await this.#nc.jetstreamManager()).streams.info(EVENT_STREAM)).state.last_seq;
      await this.#park();
      await this.#registry.resetProjection();
      this.#appliedSinceReset = 0;
      this.#unpark();
      while (this.#registry.checkpoint < target && !this.#stop.signal.aborted) {
        await new Promise<void>((resolve) => this.#progress.push(resolve));
      }
      this.#log.info({ events: this.#appliedSinceReset, checkpoint: this.#registry.checkpoint }, 'projection rebuilt from the stream');
      return this.#appliedSinceReset;
    } finally {
      this.#unpark();
      this.#rebuilding = false;
    }
  }

  async close(): Promise<void> {
    this.#stop.abort();
    this.#unpark();
    await this.#messages?.close().catch(() => { /* already closed */ });
    for (const resolve of this.#progress.splice(0)) resolve();
    await this.#nc?.close().catch(() => { /* already closed */ });
    await this.#loop;
  }

  /** Stops the current consumer and waits until the loop is held. */
  async #park(): Promise<void> {
    this.#paused = new Promise((resolve) => { this.#resume = resolve; });
    const parked = new Promise<void>((resolve) => { this.#parked = resolve; });
    await this.#messages?.close().catch(() => { /* already closed */ });
    await parked;
  }

  #unpark(): void {
    this.#paused = undefined;
    this.#resume?.();
    this.#resume = undefined;
  }

  async #run(): Promise<void> {
    for (let attempt = 1; !this.#stop.signal.aborted; attempt++) {
      try {
        if (this.#paused) {
          this.#parked?.();
          await this.#paused;
          continue;
        }
        const nc = await this.#connection();
        const jsm = await nc.jetstreamManager();
        await ensureEventStream(jsm, this.#log);
        await this.#place(jsm);
        const consumer = await nc.jetstream().consumers.get(EVENT_STREAM, this.#durable);
        const messages = await consumer.consume({ max_messages: 256, abort_on_missing_resource: true });
        this.#messages = messages;
        // A park requested while the consumer was being made must not wait for a message to come.
        if (this.#paused) await messages.close();
        this.#up = true;
        this.#reason = undefined;
        attempt = 0;
        for await (const m of messages) {
          this.#apply(m);
          m.ack();
          for (const resolve of this.#progress.splice(0)) resolve();
        }
        this.#up = this.#paused !== undefined && this.#nc !== undefined;
      } catch (err) {
        if (this.#stop.signal.aborted) break;
        this.#up = false;
        this.#reason = (err as { code?: string }).code ?? (err as Error).message;
        if (attempt === 1 || attempt % 10 === 0) this.#log.warn({ err, attempt }, 'the event projection cannot consume the stream; retrying');
        await sleep(Math.min(5000, 200 * 2 ** Math.min(attempt, 5)), undefined, { signal: this.#stop.signal }).catch(() => { /* closed */ });
      }
    }
    this.#up = false;
    this.#parked?.();
  }

  #apply(m: JsMsg): void {
    const { data, seq, subject } = m;
    if (seq <= this.#registry.checkpoint) return;
    let event: FerryEvent | undefined;
    try {
      const value: unknown = JSON.parse(decoder.decode(data));
      event = isFerryEvent(value) ? value : undefined;
    } catch {
      event = undefined;
    }
    if (!event) {
      this.#log.warn({ seq }, 'skipping a stream message that is not a Ferry event');
      this.#registry.advance(seq);
      return;
    }
    // The stream's own time of storage: a replay sees the same, so a rebuild gives the same projection.
    const arrivalMs = Math.floor(m.info.timestampNanos / 1e6);
    const admitted = admitEvent(data, event, subject, arrivalMs, {
      hostKeysAt: (host, at) => this.#registry.hostKeysAt(host, at), registryKey: this.#registryKey,
      ...(this.#releaseKeysAt ? { releaseKeysAt: this.#releaseKeysAt } : {}),
    });
    if (!admitted.ok) {
      const count = ++this.#dropped[admitted.reason];
      // The first of each kind, then one in a hundred: a flood of forgeries must not flood the log too.
      if (count === 1 || count % 100 === 0) {
        this.#log.warn({ seq, reason: admitted.reason, count, host: event.data.host, type: event.type, eventId: event.id }, 'an event the registry cannot attribute to its host was kept out of the projection');
      }
      this.#registry.advance(seq);
      return;
    }
    if (this.#registry.project(admitted.event, seq, admitted.signer)) this.#appliedSinceReset += 1;
  }

  /** (Re)creates the durable consumer just after the projection's checkpoint. */
  async #place(jsm: JetStreamManager): Promise<void> {
    const info = await jsm.streams.info(EVENT_STREAM);
    if (this.#registry.checkpoint > info.state.last_seq) {
      // The stream was recreated (a NATS without its store): the projection describes another stream.
      this.#log.warn({ checkpoint: this.#registry.checkpoint, lastSeq: info.state.last_seq }, 'the event stream is behind the projection; rebuilding it');
      await this.#registry.resetProjection();
    }
    await jsm.consumers.delete(EVENT_STREAM, this.#durable).catch(() => { /* there was none */ });
    const start = this.#registry.checkpoint + 1;
    await jsm.consumers.add(EVENT_STREAM, {
      durable_name: this.#durable, ack_policy: AckPolicy.Explicit,
      ...(start <= 1 ? { deliver_policy: DeliverPolicy.All } : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start }),
    });
  }

  async #connection(): Promise<NatsConnection> {
    if (this.#nc && !this.#nc.isClosed()) return this.#nc;
    this.#nc = await connect({
      ...this.#target,
      name: `ferry-registry-${this.#durable}`, maxReconnectAttempts: -1, reconnectTimeWait: 1000,
    });
    const nc = this.#nc;
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === Events.Disconnect) {
          this.#up = false;
          this.#reason = 'disconnected';
        } else if (s.type === Events.Reconnect && this.#messages) {
          this.#up = true;
          this.#reason = undefined;
        }
      }
    })().catch(() => { /* the connection closed */ });
    return nc;
  }
}
