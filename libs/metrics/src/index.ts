import type { IncomingMessage, ServerResponse } from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EventSink, EventSinkHealth, FerryEvent } from '@ferry/events';

export type { Registry } from 'prom-client';

/** How an upload request ended, as its client saw it. */
export type UploadOutcome = 'ok' | 'refused' | 'failed' | 'aborted';

/** Stages of a deployment whose durations are observed (StageTimings of the protocol). */
export type Stage = 'receive' | 'verify' | 'load' | 'deploy' | 'health' | 'rollback' | 'total';

/** Outcome of a deployment: its final state, lower-cased. */
export type DeploymentOutcome = 'completed' | 'failed' | 'rolled_back';

/**
 * The receiver's metrics, in a registry of their own (never prom-client's global one, so two
 * receivers in one process, as in tests, do not share counters). Names are documented in
 * docs/receiver.md; they are a contract for dashboards and alerts, so renaming one is a breaking change.
 */
export interface ReceiverMetrics {
  readonly registry: Registry;
  /** `ferry_uploads_total{outcome}`: upload requests by how they were answered. */
  readonly uploads: Counter<'outcome'>;
  /** `ferry_received_bytes_total`: bytes read from the network by upload requests, refused ones included. */
  readonly receivedBytes: Counter;
  /** `ferry_stage_duration_seconds{stage}`: how long each deployment stage took. */
  readonly stageDuration: Histogram<'stage'>;
  /** `ferry_deployments_total{outcome}`: deployments by final state. */
  readonly deployments: Counter<'outcome'>;
  /** `ferry_auth_rejections_total{code}`: requests refused by authentication, by error code. */
  readonly authRejections: Counter<'code'>;
  /** `ferry_events_published_total`: events handed to the event publisher (outbox or memory queue). */
  readonly eventsPublished: Counter;
  /** Reads the live outbox depth and NATS state from this sink at every scrape. */
  watchEvents(sink: Partial<EventSinkHealth>): void;
  /** Text exposition format for `GET /metrics`. */
  render(): Promise<{ contentType: string; body: string }>;
}

// From a 10 ms health probe to a multi-minute load of a large image.
const STAGE_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

export interface ReceiverMetricsOptions {
  /** Also collect prom-client's process and Node.js metrics (`process_*`, `nodejs_*`). Default true. */
  defaultMetrics?: boolean;
}

export function createReceiverMetrics(options: ReceiverMetricsOptions = {}): ReceiverMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  let sink: Partial<EventSinkHealth> | undefined;

  const uploads = new Counter({
    name: 'ferry_uploads_total',
    help: 'Upload requests by outcome: ok (2xx), refused (4xx, including a failed deployment), failed (5xx), aborted (closed before the answer)',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const receivedBytes = new Counter({
    name: 'ferry_received_bytes_total',
    help: 'Bytes read from the network by upload requests (framing included), refused and aborted ones too',
    registers: [registry],
  });
  const stageDuration = new Histogram({
    name: 'ferry_stage_duration_seconds',
    help: 'Duration of each deployment stage: receive (upload, hash and fsync), verify, load, deploy, health, rollback, total',
    labelNames: ['stage'] as const,
    buckets: STAGE_BUCKETS,
    registers: [registry],
  });
  const deployments = new Counter({
    name: 'ferry_deployments_total',
    help: 'Deployments by final state: completed, failed, rolled_back',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const authRejections = new Counter({
    name: 'ferry_auth_rejections_total',
    help: 'Requests refused by authentication, by error code (e.g. FERRY_ERR_STALE_TIMESTAMP for clock skew)',
    labelNames: ['code'] as const,
    registers: [registry],
  });
  const eventsPublished = new Counter({
    name: 'ferry_events_published_total',
    help: 'Events handed to the event publisher; they are on disk in the outbox from then on',
    registers: [registry],
  });
  new Gauge({
    name: 'ferry_outbox_depth',
    help: 'Events waiting for their JetStream acknowledgement (in the on-disk outbox)',
    registers: [registry],
    collect() {
      this.set(sink?.pending ?? 0);
    },
  });
  new Gauge({
    name: 'ferry_nats_connected',
    help: '1 while the event publisher is connected to NATS, else 0 (also when no NATS is configured)',
    registers: [registry],
    collect() {
      this.set(sink?.status === 'connected' ? 1 : 0);
    },
  });
  new Gauge({
    name: 'ferry_nats_reconnect_attempts',
    help: 'Connection attempts since NATS was lost; 0 while connected',
    registers: [registry],
    collect() {
      this.set(sink?.reconnectAttempts ?? 0);
    },
  });

  return {
    registry, uploads, receivedBytes, stageDuration, deployments, authRejections, eventsPublished,
    watchEvents: (watched) => { sink = watched; },
    render: async () => ({ contentType: registry.contentType, body: await registry.metrics() }),
  };
}

/**
 * Counts an upload request once it is over: its outcome, and the bytes its socket delivered while
 * it ran. Bytes are taken from the socket rather than from `'data'` listeners, which would switch
 * the request into flowing mode under the parser's feet.
 */
export function trackUpload(metrics: ReceiverMetrics, req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket;
  const startBytes = socket.bytesRead;
  res.once('close', () => {
    // A small body can come in the same socket read as the head, before this runs; an answered
    // upload has read all of its body, so its Content-Length is the least it received.
    const answered = res.writableFinished && res.statusCode < 300 ? Number(req.headers['content-length'] ?? 0) : 0;
    const read = Math.max(socket.bytesRead - startBytes, Number.isSafeInteger(answered) ? answered : 0);
    if (read > 0) metrics.receivedBytes.inc(read);
    metrics.uploads.inc({ outcome: outcomeOf(res) });
  });
}

function outcomeOf(res: ServerResponse): UploadOutcome {
  if (!res.writableFinished) return 'aborted';
  if (res.statusCode >= 500) return 'failed';
  if (res.statusCode >= 400) return 'refused';
  return 'ok';
}

/**
 * Wraps a sink so that every event also feeds the metrics: deployment outcomes and stage durations
 * come from the events the engine already publishes, so the engine needs no metrics code of its own.
 * The wrapper passes the wrapped sink's health through (status, pending…).
 */
export function meteredSink(inner: EventSink & Partial<EventSinkHealth>, metrics: ReceiverMetrics): EventSink & EventSinkHealth {
  return new MeteredSink(inner, metrics);
}

class MeteredSink implements EventSink, EventSinkHealth {
  readonly #inner: EventSink & Partial<EventSinkHealth>;
  readonly #metrics: ReceiverMetrics;

  constructor(inner: EventSink & Partial<EventSinkHealth>, metrics: ReceiverMetrics) {
    this.#inner = inner;
    this.#metrics = metrics;
  }

  get status(): EventSinkHealth['status'] {
    return this.#inner.status;
  }

  get pending(): number {
    return this.#inner.pending ?? 0;
  }

  get reconnectAttempts(): number {
    return this.#inner.reconnectAttempts ?? 0;
  }

  get disconnectedSince(): Date | undefined {
    return this.#inner.disconnectedSince;
  }

  publish(event: FerryEvent): void {
    try {
      this.#observe(event);
    } catch {
      // A metric must never cost an event.
    }
    this.#inner.publish(event);
  }

  flush(): Promise<void> {
    return this.#inner.flush();
  }

  close(): Promise<void> {
    return this.#inner.close();
  }

  #observe(event: FerryEvent): void {
    const metrics = this.#metrics;
    metrics.eventsPublished.inc();
    const stage = (name: Stage, ms: number | undefined): void => {
      if (typeof ms === 'number' && ms >= 0) metrics.stageDuration.observe({ stage: name }, ms / 1000);
    };
    switch (event.type) {
      case 'ferry.package.verified': stage('receive', event.data.durationMs); break;
      case 'ferry.image.loaded': stage('load', event.data.durationMs); break;
      case 'ferry.container.started': stage('deploy', event.data.durationMs); break;
      case 'ferry.healthcheck.passed': stage('health', event.data.durationMs); break;
      case 'ferry.rollback.completed': stage('rollback', event.data.durationMs); break;
      case 'ferry.deployment.completed':
        // No event of its own carries verify (a separate whole-file check of resumable uploads).
        stage('verify', event.data.timings.verify);
        stage('total', event.data.timings.total);
        metrics.deployments.inc({ outcome: 'completed' });
        break;
      case 'ferry.deployment.failed':
        metrics.deployments.inc({ outcome: event.data.state === 'ROLLED_BACK' ? 'rolled_back' : 'failed' });
        break;
      default:
        break;
    }
  }
}
