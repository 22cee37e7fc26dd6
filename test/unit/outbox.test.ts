/**
 * The outbox's file handling, through the publisher's public API with a NATS address where nothing
 * listens: events land on disk before publish() returns, stay there across a close and a new
 * start, and what is not an event is set aside instead of blocking the queue. Delivery itself is
 * proven against a real nats-server in test/integration/outbox.test.ts.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { createEvent, JetStreamPublisher, type FerryEvent } from '@ferry/events';
import { freePort } from '../helpers/ferry.ts';

const EVENT_FILE = /^\d{16}\.json$/;

function eventOf(n: number): FerryEvent {
  return createEvent('image.loaded', {
    source: 'ferry://receiver/edge-1', host: 'edge-1', service: 'web', deploymentId: randomUUID(),
    data: { imageId: `sha256:${'b'.repeat(64)}`, durationMs: n },
  });
}

async function files(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => EVENT_FILE.test(n)).sort();
}

void describe('the event outbox on disk', { timeout: 30_000 }, () => {
  let root: string;
  let url: string;
  const publishers: JetStreamPublisher[] = [];
  const open = async (dir: string): Promise<JetStreamPublisher> => {
    const p = await JetStreamPublisher.connect({ url, outboxDir: dir, retry: { initialMs: 50, maxMs: 200 } });
    publishers.push(p);
    return p;
  };

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'fx-outbox-unit-'));
    url = `nats://127.0.0.1:${await freePort()}`;
  });

  after(async () => {
    await Promise.all(publishers.map((p) => p.close()));
    await rm(root, { recursive: true, force: true });
  });

  void it('has every event in a file of its own, in order, when publish() returns', async () => {
    const dir = join(root, 'order');
    const p = await open(dir);
    const events = [eventOf(1), eventOf(2), eventOf(3)];
    for (const event of events) p.publish(event);

    const names = await files(dir);
    assert.equal(names.length, 3);
    const stored = await Promise.all(names.map(async (n) => JSON.parse(await readFile(join(dir, n), 'utf8')) as FerryEvent));
    assert.deepEqual(stored, events);
    assert.equal(p.pending, 3);
    assert.equal(p.status, 'connecting');
  });

  void it('keeps unsent events across close() and queues them first at the next start', async () => {
    const dir = join(root, 'restart');
    const first = await open(dir);
    const before = [eventOf(1), eventOf(2)];
    for (const event of before) first.publish(event);
    await first.close();
    assert.equal((await files(dir)).length, 2, 'close() without NATS leaves the events on disk');

    const second = await open(dir);
    assert.equal(second.pending, 2);
    second.publish(eventOf(3));
    const names = await files(dir);
    assert.equal(names.length, 3);
    assert.ok(names[2] && names[1] && names[2] > names[1], 'a new event sorts after what the previous run left');
  });

  void it('removes half-written files and sets aside a file that is not an event', async () => {
    const dir = join(root, 'damaged');
    const seed = await open(dir);
    seed.publish(eventOf(1));
    await seed.close();
    await writeFile(join(dir, '0000000000000000.json'), '{"torn": ');
    await writeFile(join(dir, '0000000000000005.json.tmp'), 'half');

    const p = await open(dir);
    assert.equal(p.pending, 2);
    // The damaged file sorts first: the publisher reads it, moves it aside and goes on with the rest.
    while (p.pending > 1) await sleep(10);
    assert.deepEqual(await readdir(join(dir, 'corrupt')), ['0000000000000000.json']);
    assert.deepEqual(await files(dir), ['0000000000000001.json']);
    assert.ok(!(await readdir(dir)).some((n) => n.endsWith('.tmp')));
  });
});
