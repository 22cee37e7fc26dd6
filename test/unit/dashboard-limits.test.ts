/**
 * The registry dashboard under hostile clients, on real loopback sockets: the number of live
 * streams is bounded (one more gets 503 FERRY_ERR_TOO_MANY_STREAMS), and a client that stops
 * reading is dropped once it falls too far behind instead of being buffered for ever.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { setImmediate as yieldToIo, setTimeout as sleep } from 'node:timers/promises';
import { createBaseApp, finishApp, listen, type ListeningServer } from '@ferry/http';
import { createLogger } from '@ferry/log';
import { dashboardRouter, type DashboardOptions, type DashboardRouter } from '../../services/registry/src/dashboard/index.ts';
import type { RegistryChange, RegistrySnapshot, RegistryView } from '@ferry/registry';

/** A read model the test drives: an empty snapshot, and changes when the test emits them. */
class FakeView implements RegistryView {
  readonly #listeners = new Set<(change: RegistryChange) => void>();

  snapshot(): Promise<RegistrySnapshot> {
    return Promise.resolve({ hosts: [], services: [], deployments: [] });
  }

  subscribe(listener: (change: RegistryChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  emit(change: RegistryChange): void {
    for (const listener of this.#listeners) listener(change);
  }

  /** Subscribers: the dashboard's event feed, plus one per live stream. */
  get subscribers(): number {
    return this.#listeners.size;
  }
}

interface Dashboard {
  url: string;
  view: FakeView;
  router: DashboardRouter;
  server: ListeningServer;
}

const started: Dashboard[] = [];
after(async () => {
  for (const d of started) {
    d.router.close();
    await d.server.close(0);
  }
});

async function startDashboard(options: Omit<DashboardOptions, 'view'>): Promise<Dashboard> {
  const view = new FakeView();
  const router = dashboardRouter({ view, ...options });
  const app = createBaseApp(createLogger({ level: 'silent' }));
  app.use('/', router);
  const server = await listen(finishApp(app), '127.0.0.1', 0);
  const dashboard = { url: server.url, view, router, server };
  started.push(dashboard);
  return dashboard;
}

interface Stream {
  socket: Socket;
  /** Everything received so far, head included. */
  text: () => string;
}

/** Opens `/dashboard/events` on a raw socket and resolves once the answer's snapshot (or error body) arrived. */
async function openStream(url: string, headers: string[] = []): Promise<Stream> {
  const { port } = new URL(url);
  const socket = connect(Number(port), '127.0.0.1');
  socket.on('error', () => undefined);
  let text = '';
  socket.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; });
  socket.write(`GET /dashboard/events HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`);
  while (!/event: snapshot\n|"error":\{.*\}\}/.test(text)) {
    if (socket.destroyed) throw new Error(`stream closed before an answer: ${text}`);
    await sleep(5);
  }
  return { socket, text: () => text };
}

function status(stream: Stream): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(stream.text())?.[1] ?? 0);
}

describe('dashboard: live streams are bounded', { timeout: 30_000 }, () => {
  test('beyond FERRY_DASHBOARD_MAX_STREAMS a stream gets 503 FERRY_ERR_TOO_MANY_STREAMS with Retry-After; a closed stream frees its place', async () => {
    const d = await startDashboard({ maxStreams: 3 });
    const open = [await openStream(d.url), await openStream(d.url), await openStream(d.url)];
    for (const stream of open) assert.equal(status(stream), 200);

    const refused = await openStream(d.url);
    assert.equal(status(refused), 503);
    assert.match(refused.text(), /"code":"FERRY_ERR_TOO_MANY_STREAMS"/);
    assert.match(refused.text(), /\r\nretry-after: \d+\r\n/i);
    refused.socket.destroy();

    open[0]?.socket.destroy();
    // The registry notices the close when the socket says so; until then it still counts the stream.
    let next = await openStream(d.url);
    while (status(next) !== 200) {
      next.socket.destroy();
      await sleep(10);
      next = await openStream(d.url);
    }
    assert.match(next.text(), /event: snapshot\n/);
    for (const stream of [...open, next]) stream.socket.destroy();
  });

  test('the other dashboard paths are not counted', async () => {
    const d = await startDashboard({ maxStreams: 1 });
    const stream = await openStream(d.url);
    assert.equal(status(stream), 200);
    assert.equal((await fetch(`${d.url}/dashboard/state`)).status, 200);
    stream.socket.destroy();
  });
});

describe('dashboard: a client that stops reading is dropped', { timeout: 60_000 }, () => {
  test('changes pile up only to maxQueuedBytes past what the sockets hold; then the stream is cut', async () => {
    const maxQueuedBytes = 64 * 1024;
    const d = await startDashboard({ stream: { maxQueuedBytes } });
    const feedOnly = d.view.subscribers;
    const stalled = await openStream(d.url);
    assert.equal(status(stalled), 200);
    assert.equal(d.view.subscribers, feedOnly + 1);
    // From now on nothing is read: the kernel's buffers fill, then Node's, then the stream's queue.
    stalled.socket.pause();

    const size = 8 * 1024;
    const change = (i: number): RegistryChange => ({
      kind: 'deployment',
      data: {
        deploymentId: `d-${i}`, host: 'h', service: 's', image: 'x'.repeat(size), state: 'running', lastEvent: 'deployment.started',
        startedAt: new Date(0).toISOString(), updatedAt: new Date(0).toISOString(),
      },
    });
    // Emits until the registry lets go of the stream (it unsubscribes when its response closes).
    let sent = 0;
    while (d.view.subscribers > feedOnly) {
      for (let i = 0; i < 16; i++) d.view.emit(change(sent++));
      await yieldToIo();
    }
    // The loopback sockets' buffers hold a few MiB at most; the registry itself held 64 KiB more.
    assert.ok(sent * size < 32 * 1024 ** 2, `${sent} changes of ${size} bytes went out before the stream was cut`);
    const again = await openStream(d.url);
    assert.equal(status(again), 200, 'the dashboard serves on');
    again.socket.destroy();
    stalled.socket.destroy();
  });
});
