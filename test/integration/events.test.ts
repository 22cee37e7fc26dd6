import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { EVENT_STREAM, isFerryError, type EventType } from '@ferry/protocol';
import { createEvent, JetStreamPublisher, readEvents, type FerryEvent } from '@ferry/events';
import { connect, StorageType, type NatsConnection } from 'nats';
import { NatsServer } from '../helpers/servers.ts';

const TEST = { timeout: 60_000 };

interface Stored {
  event: FerryEvent;
  msgId: string | undefined;
  subject: string;
}

/**
 * Everything in the stream, read through an ordered JetStream consumer, with each message's headers.
 * A connection of its own each time: one that lived through a server restart may not have noticed yet.
 */
async function storedMessages(url: string): Promise<Stored[]> {
  const nc = await connect({ servers: url });
  try {
    return await readStored(nc);
  } finally {
    await nc.close();
  }
}

async function readStored(nc: NatsConnection): Promise<Stored[]> {
  const info = await (await nc.jetstreamManager()).streams.info(EVENT_STREAM);
  if (info.state.messages === 0) return [];
  const consumer = await nc.jetstream().consumers.get(EVENT_STREAM);
  const messages = await consumer.consume();
  const stored: Stored[] = [];
  for await (const m of messages) {
    stored.push({ event: m.json<FerryEvent>(), msgId: m.headers?.get('Nats-Msg-Id'), subject: m.subject });
    if (m.info.pending === 0) break;
  }
  await messages.close();
  return stored;
}

async function storedFor(url: string, deploymentId: string): Promise<Stored[]> {
  return (await storedMessages(url)).filter((s) => s.event.deploymentid === deploymentId);
}

const LIFECYCLE: EventType[] = [
  'transfer.started', 'transfer.completed', 'package.verified', 'image.loaded', 'container.started',
  'healthcheck.passed', 'deployment.completed',
];

/** A plausible event of a deployment; the payload is loose because these tests are about transport. */
function eventOf(type: EventType, deploymentId: string, n: number, host = 'edge-1', service = 'web'): FerryEvent {
  return createEvent(type, {
    source: `ferry://receiver/${host}`, host, service, deploymentId,
    data: { n },
  });
}

function lifecycle(deploymentId: string, count: number, host?: string, service?: string): FerryEvent[] {
  return Array.from({ length: count }, (_, n) => eventOf(LIFECYCLE[n % LIFECYCLE.length], deploymentId, n, host, service));
}

/** Polls a condition that an asynchronous reaction will make true; a hang is the test timeout's to catch. */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await sleep(10);
}

async function collect(iterable: AsyncIterable<FerryEvent>): Promise<FerryEvent[]> {
  const events: FerryEvent[] = [];
  for await (const event of iterable) events.push(event);
  return events;
}

void describe('events on JetStream', () => {
  let server: NatsServer;
  const publishers: JetStreamPublisher[] = [];

  async function publisher(url = server.url): Promise<JetStreamPublisher> {
    const p = await JetStreamPublisher.connect({ url, ackTimeoutMs: 1000, retry: { initialMs: 50, maxMs: 500 } });
    publishers.push(p);
    return p;
  }

  before(async () => {
    server = await NatsServer.create();
    await server.start();
  });

  after(async () => {
    await Promise.all(publishers.map((p) => p.close()));
    await server?.dispose();
  });

  void it('creates the stream when it is absent and leaves an existing one as it is', TEST, async () => {
    const nc = await connect({ servers: server.url });
    const jsm = await nc.jetstreamManager();
    await assert.rejects(jsm.streams.info(EVENT_STREAM), /stream not found/);

    const first = await publisher();
    first.publish(eventOf('build.started', randomUUID(), 0));
    await first.flush();
    assert.equal(first.status, 'connected');
    const created = await jsm.streams.info(EVENT_STREAM);
    assert.deepEqual(created.config.subjects, ['ferry.events.>']);
    assert.equal(created.config.storage, StorageType.File);

    // An operator's change to the stream must survive a publisher that starts later.
    await jsm.streams.update(EVENT_STREAM, { ...created.config, description: 'tuned by an operator' });
    const second = await publisher();
    second.publish(eventOf('build.completed', randomUUID(), 1));
    await second.flush();
    const kept = await jsm.streams.info(EVENT_STREAM);
    assert.equal(kept.config.description, 'tuned by an operator');
    assert.equal(kept.state.messages, 2);
    await nc.close();
  });

  void it('stores 20 events in the order they were published, each with its id as Nats-Msg-Id', TEST, async () => {
    const deploymentId = randomUUID();
    const events = lifecycle(deploymentId, 20);
    const p = await publisher();
    for (const event of events) p.publish(event);
    await p.flush();

    const stored = await storedFor(server.url, deploymentId);
    assert.deepEqual(stored.map((s) => s.event.id), events.map((e) => e.id));
    assert.deepEqual(stored.map((s) => s.msgId), events.map((e) => e.id));
    assert.deepEqual(stored.map((s) => s.event), events);
    assert.equal(stored[0].subject, 'ferry.events.edge-1.web.transfer.started');
  });

  void it('stores an event published twice once', TEST, async () => {
    const deploymentId = randomUUID();
    const event = eventOf('rollback.started', deploymentId, 0);
    const p = await publisher();
    p.publish(event);
    p.publish(event);
    await p.flush();
    // A second publisher retrying the same event (e.g. after a restart) is deduplicated as well.
    const other = await publisher();
    other.publish(event);
    await other.flush();

    const stored = await storedFor(server.url, deploymentId);
    assert.deepEqual(stored.map((s) => s.event.id), [event.id]);
  });

  void it('keeps every event while NATS is down and delivers each once, in order, when it returns', TEST, async () => {
    const deploymentId = randomUUID();
    const events = lifecycle(deploymentId, 15);
    const p = await publisher();
    for (const event of events.slice(0, 5)) p.publish(event);
    await p.flush();

    await server.stop();
    await until(() => p.status === 'connecting');
    for (const event of events.slice(5)) assert.doesNotThrow(() => p.publish(event));
    await server.start();
    await p.flush();

    const stored = await storedFor(server.url, deploymentId);
    assert.deepEqual(stored.map((s) => s.event.id), events.map((e) => e.id));
  });

  void it('readEvents returns only the deployment asked for and ends when caught up', TEST, async () => {
    const wanted = randomUUID();
    const other = randomUUID();
    const ours = lifecycle(wanted, 6, 'edge-2', 'api');
    const theirs = lifecycle(other, 6, 'edge-2', 'api');
    const p = await publisher();
    for (let i = 0; i < ours.length; i++) {
      p.publish(ours[i]);
      p.publish(theirs[i]);
    }
    await p.flush();

    const read = await collect(readEvents({ url: server.url, deploymentId: wanted }));
    assert.deepEqual(read, ours);

    // Host and service narrow on the server; together with the deployment the answer is the same.
    const narrowed = await collect(readEvents({ url: server.url, host: 'edge-2', service: 'api', deploymentId: wanted }));
    assert.deepEqual(narrowed, ours);
    const byHost = await collect(readEvents({ url: server.url, host: 'edge-2' }));
    assert.deepEqual(byHost.map((e) => e.id), ours.flatMap((e, i) => [e.id, theirs[i].id]));
    assert.deepEqual(await collect(readEvents({ url: server.url, service: 'no-such-service' })), []);
    assert.deepEqual(await collect(readEvents({ url: server.url, deploymentId: randomUUID() })), []);
  });

  void it('readEvents with follow delivers new events until aborted', TEST, async () => {
    const deploymentId = randomUUID();
    const [earlier, later] = lifecycle(deploymentId, 2);
    const p = await publisher();
    p.publish(earlier);
    await p.flush();

    const abort = new AbortController();
    const seen: FerryEvent[] = [];
    for await (const event of readEvents({ url: server.url, deploymentId, follow: true, signal: abort.signal })) {
      seen.push(event);
      if (seen.length === 1) p.publish(later);
      if (seen.length === 2) abort.abort();
    }
    assert.deepEqual(seen, [earlier, later]);
  });
});

void describe('a publisher started while NATS is down', () => {
  let server: NatsServer;

  before(async () => {
    server = await NatsServer.create();
  });

  after(async () => {
    await server?.dispose();
  });

  void it('accepts events at once and stores them when NATS comes up', TEST, async () => {
    const p = await JetStreamPublisher.connect({ url: server.url, retry: { initialMs: 50, maxMs: 500 } });
    assert.equal(p.status, 'connecting');
    const events = lifecycle(randomUUID(), 3);
    for (const event of events) p.publish(event);

    await server.start();
    await p.flush();
    assert.deepEqual((await collect(readEvents({ url: server.url }))).map((e) => e.id), events.map((e) => e.id));
    await p.close();
    assert.equal(p.status, 'disabled');
  });

  void it('close() gives up after its bound when NATS never comes, and is idempotent', TEST, async () => {
    await server.stop();
    const p = await JetStreamPublisher.connect({ url: server.url, closeTimeoutMs: 200, retry: { initialMs: 50, maxMs: 500 } });
    p.publish(lifecycle(randomUUID(), 1)[0]);
    await Promise.all([p.close(), p.close()]);
    assert.equal(p.status, 'disabled');
    await p.flush();
    assert.doesNotThrow(() => p.publish(lifecycle(randomUUID(), 1)[0]));
  });

  void it('readEvents reports an unreachable NATS as FERRY_ERR_EVENTS_UNAVAILABLE', TEST, async () => {
    await assert.rejects(collect(readEvents({ url: server.url })), (err) => isFerryError(err, 'FERRY_ERR_EVENTS_UNAVAILABLE'));
  });
});
