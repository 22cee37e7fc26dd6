import type { ServerResponse } from 'node:http';

export interface EventStreamOptions {
  /** A comment line this often keeps proxies and the browser from treating a quiet stream as dead. */
  heartbeatMs: number;
  /** Bytes a client may fall behind by; beyond them it is cut and reconnects to a fresh snapshot. */
  maxQueuedBytes: number;
  /** How long the browser waits before reconnecting after the stream ends. */
  retryMs: number;
}

/**
 * One server-sent-events response. Writes go straight to the socket while it keeps up; once
 * `write()` returns false they wait in a queue until `'drain'`. A client that falls further behind
 * than `maxQueuedBytes` is disconnected rather than buffered without end: its browser reconnects
 * and starts again from a snapshot, which is cheaper than replaying what it missed.
 */
export class EventStream {
  readonly #res: ServerResponse;
  readonly #options: EventStreamOptions;
  readonly #heartbeat: NodeJS.Timeout;
  readonly #queue: string[] = [];
  #queuedBytes = 0;
  #congested = false;
  #closed = false;

  constructor(res: ServerResponse, options: EventStreamOptions) {
    this.#res = res;
    this.#options = options;
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      // A buffering reverse proxy would hold events back until its buffer fills.
      'X-Accel-Buffering': 'no',
    });
    res.on('drain', () => this.#flush());
    res.once('close', () => this.#stop());
    this.#heartbeat = setInterval(() => {
      if (!this.#congested) this.#write(': keep-alive\n\n');
    }, options.heartbeatMs).unref();
    this.#write(`retry: ${options.retryMs}\n\n`);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends one event. JSON never holds a raw line break, so `data` is always a single line. */
  send(event: string, data: unknown): void {
    this.#write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /** Ends the response; the browser reconnects after `retryMs` unless its page is gone. */
  end(): void {
    if (this.#closed) return;
    this.#stop();
    this.#res.end();
  }

  #write(chunk: string): void {
    if (this.#closed) return;
    if (this.#congested) {
      this.#queuedBytes += Buffer.byteLength(chunk);
      if (this.#queuedBytes > this.#options.maxQueuedBytes) {
        this.#stop();
        this.#res.destroy();
        return;
      }
      this.#queue.push(chunk);
      return;
    }
    this.#congested = !this.#res.write(chunk);
  }

  #flush(): void {
    this.#congested = false;
    while (this.#queue.length > 0 && !this.#congested && !this.#closed) {
      const chunk = this.#queue.shift() ?? '';
      this.#queuedBytes -= Buffer.byteLength(chunk);
      this.#congested = !this.#res.write(chunk);
    }
  }

  #stop(): void {
    this.#closed = true;
    clearInterval(this.#heartbeat);
    this.#queue.length = 0;
    this.#queuedBytes = 0;
  }
}
