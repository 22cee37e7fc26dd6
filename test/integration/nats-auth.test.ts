/**
 * The stack's NATS runs with authentication (deploy/nats/ferry.conf): nobody gets in without a
 * user, a reader publishes nothing, a publisher reads nothing, and Ferry's own clients work as the
 * user each is given. Subjects carry a host of this run only.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { createEvent, JetStreamPublisher, natsConnectTarget, readEvents, type FerryEvent } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { EVENT_STREAM } from '@ferry/protocol';
import { AckPolicy, DeliverPolicy, Events, type NatsConnection } from 'nats';
import { natsConnect, stack } from '../helpers/stack.ts';

const TEST = { timeout: 60_000 };
const s = stack();
const run = randomUUID().slice(0, 8);
const host = `auth-${run}`;
/** host:port of the stack's NATS, without any user. */
const bare = natsConnectTarget(s.natsUrl).servers[0] ?? '';

function eventOf(n: number): FerryEvent {
  return createEvent('transfer.started', {
    source: `ferry://receiver/${host}`, host, service: 'web', deploymentId: randomUUID(),
    data: { target: 'http://127.0.0.1:1', bytes: n, compression: 'none' },
  });
}

function code(err: unknown): unknown {
  return (err as { code?: unknown }).code;
}

/** What the server says about a connection's refused operations, as nats.js reports them. */
function permissionErrors(nc: NatsConnection): string[] {
  const seen: string[] = [];
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === Events.Error) seen.push(typeof status.data === 'string' ? status.data : JSON.stringify(status.data));
    }
  })();
  return seen;
}

async function storedOn(subject: string): Promise<number> {
  const admin = await natsConnect(s.natsAdminUrl);
  try {
    const jsm = await admin.jetstreamManager();
    return await jsm.streams.getMessage(EVENT_STREAM, { last_by_subj: subject }).then(() => 1, () => 0);
  } finally {
    await admin.close();
  }
}

void describe('NATS authentication in the local stack', () => {
  const connections: NatsConnection[] = [];
  const open = async (url: string): Promise<NatsConnection> => {
    const nc = await natsConnect(url, { maxReconnectAttempts: 0 });
    connections.push(nc);
    return nc;
  };

  after(async () => {
    await Promise.all(connections.map((nc) => nc.close().catch(() => undefined)));
  });

  test('a connection without a user, or with a wrong password, is refused', TEST, async () => {
    assert.match(s.natsUrl, /^nats:\/\/ferry-publisher:[^@]+@/);
    await assert.rejects(natsConnect(bare, { maxReconnectAttempts: 0 }), (err) => code(err) === 'AUTHORIZATION_VIOLATION');
    const wrong = s.natsReaderUrl.replace(/:[^:@/]+@/, ':not-the-password@');
    await assert.rejects(natsConnect(wrong, { maxReconnectAttempts: 0 }), (err) => code(err) === 'AUTHORIZATION_VIOLATION');
    await assert.rejects(
      (async () => { for await (const event of readEvents({ url: wrong })) void event; })(),
      (err: Error) => code(err) === 'FERRY_ERR_EVENTS_UNAVAILABLE' && /refused the credentials/.test(err.message) && !err.message.includes('not-the-password'),
    );
  });

  test('the publisher user publishes through JetStreamPublisher; the reader user reads what it stored, once', TEST, async () => {
    const publisher = await JetStreamPublisher.connect({ url: s.natsUrl, name: `auth-test-${run}`, ackTimeoutMs: 2000 });
    const events = [eventOf(1), eventOf(2), eventOf(3)];
    try {
      for (const event of events) publisher.publish(event);
      await publisher.flush();
      assert.equal(publisher.status, 'connected');
      assert.equal(publisher.pending, 0);
    } finally {
      await publisher.close();
    }
    const read: FerryEvent[] = [];
    for await (const event of readEvents({ url: s.natsReaderUrl, host })) read.push(event);
    assert.deepEqual(read.map((e) => e.id), events.map((e) => e.id));
  });

  test('the reader user can publish no event, plainly or through JetStream, and cannot purge or change the stream', TEST, async () => {
    const nc = await open(s.natsReaderUrl);
    const errors = permissionErrors(nc);
    const subject = `ferry.events.${host}.web.forged`;

    await assert.rejects(nc.jetstream({ timeout: 2000 }).publish(subject, new Uint8Array([1])), (err) => code(err) === 'PERMISSIONS_VIOLATION');
    nc.publish(subject, new Uint8Array([1]));
    await nc.flush();
    while (!errors.some((e) => e.includes('PERMISSIONS_VIOLATION'))) await sleep(20);

    const jsm = await nc.jetstreamManager();
    await assert.rejects(jsm.streams.purge(EVENT_STREAM), (err) => code(err) === 'PERMISSIONS_VIOLATION');
    await assert.rejects(jsm.streams.delete(EVENT_STREAM), (err) => code(err) === 'PERMISSIONS_VIOLATION');
    await assert.rejects(jsm.streams.update(EVENT_STREAM, { max_msgs: 1 }), (err) => code(err) === 'PERMISSIONS_VIOLATION');
    assert.equal(await storedOn(subject), 0, 'nothing the reader sent was stored');
  });

  test('the publisher user cannot read the stream or subscribe to events', TEST, async () => {
    const nc = await open(s.natsUrl);
    const sub = nc.subscribe('ferry.events.>');
    await assert.rejects((async () => { for await (const m of sub) void m; })(), (err) => code(err) === 'PERMISSIONS_VIOLATION');
    await assert.rejects(
      (async () => { for await (const event of readEvents({ url: s.natsUrl, host })) void event; })(),
      (err: Error) => code(err) === 'FERRY_ERR_EVENTS_UNAVAILABLE' && /may not read the event stream/.test(err.message),
    );
  });

  test('the registry user keeps a durable consumer (create, pull, ack, delete); the reader cannot delete it', TEST, async () => {
    const durable = `ferry-registry-auth-${run}`;
    const nc = await open(s.natsRegistryUrl);
    const jsm = await nc.jetstreamManager();
    await jsm.consumers.add(EVENT_STREAM, {
      durable_name: durable, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, filter_subject: `ferry.events.${host}.>`,
    });
    try {
      const reader = await (await open(s.natsReaderUrl)).jetstreamManager();
      await assert.rejects(reader.consumers.delete(EVENT_STREAM, durable), (err) => code(err) === 'PERMISSIONS_VIOLATION');

      const consumer = await nc.jetstream().consumers.get(EVENT_STREAM, durable);
      const message = await consumer.next({ expires: 5000 });
      assert.ok(message, 'the event published above');
      assert.equal(message.json<FerryEvent>().source, `ferry://receiver/${host}`);
      assert.equal(await message.ackAck(), true);
    } finally {
      await jsm.consumers.delete(EVENT_STREAM, durable);
    }
  });

  test('a publisher refused for a wrong password logs the URL with its password hidden', TEST, async () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const password = 'wrong-password-' + run;
    const url = s.natsUrl.replace(/:[^:@/]+@/, `:${password}@`);
    const publisher = await JetStreamPublisher.connect({ url, logger: createLogger({ level: 'debug', destination }), retry: { initialMs: 50, maxMs: 50 } });
    try {
      while (!lines.some((l) => l.includes('NATS is not reachable'))) await sleep(20);
    } finally {
      await publisher.close();
    }
    const text = lines.join('');
    assert.ok(!text.includes(password), text);
    assert.ok(!text.includes(s.natsUrl.replace(/^nats:\/\/ferry-publisher:([^@]+)@.*$/, '$1')), 'nor the real one');
    assert.match(text, /nats:\/\/ferry-publisher:\*\*\*@/);
  });
});
