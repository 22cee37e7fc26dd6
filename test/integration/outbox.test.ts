/**
 * Events are never lost (RELIABILITY rows 29–30): a real `ferry receiver` deploys to the stack's
 * target engine while its private nats-server is down; its events wait in the on-disk outbox and
 * reach JetStream exactly once when NATS returns, also when the receiver was SIGKILLed meanwhile.
 * "Exactly once" is counted by Nats-Msg-Id through a JetStream consumer.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { cp, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { connect, millis } from 'nats';
import { EVENT_DUPLICATE_WINDOW_MS } from '@ferry/events';
import { EVENT_STREAM } from '@ferry/protocol';
import { buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { NatsServer } from '../helpers/servers.ts';
import { removeService } from '../helpers/cleanup.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`ob-${run}`);
const trust = trustFile(key);
const hostId = `ob-${run}`;
const service = `ob-${run}`;
const repo = `ferry-outbox-${run}`;
const target = dockerodeFor(s.targetDockerHost);

interface Event { id: string; type: string; deploymentid: string }
interface Stored { event: Event; msgId: string | undefined }
interface Ready { status: string; checks: Record<string, { status: string; outbox?: number }> }

/** The events waiting in a receiver's outbox, oldest first, read straight from its files. */
async function outboxEvents(dataDir: string): Promise<Event[]> {
  const dir = join(dataDir, 'outbox');
  const names = (await readdir(dir)).filter((n) => /^\d{16}\.json$/.test(n)).sort();
  return Promise.all(names.map(async (n) => JSON.parse(await readFile(join(dir, n), 'utf8')) as Event));
}

/** Everything the stream holds for this test's host, with each message's Nats-Msg-Id, via a JetStream consumer. */
async function storedEvents(url: string): Promise<Stored[]> {
  const nc = await connect({ servers: url });
  try {
    const consumer = await nc.jetstream().consumers.get(EVENT_STREAM, { filterSubjects: `ferry.events.${hostId}.>` });
    if ((await consumer.info()).num_pending === 0) return [];
    const messages = await consumer.consume();
    const stored: Stored[] = [];
    for await (const m of messages) {
      stored.push({ event: m.json<Event>(), msgId: m.headers?.get('Nats-Msg-Id') });
      if (m.info.pending === 0) break;
    }
    await messages.close();
    return stored;
  } finally {
    await nc.close();
  }
}

async function readyz(receiver: ReceiverProcess): Promise<{ code: number; body: Ready }> {
  const res = await fetch(`${receiver.url}/readyz`);
  return { code: res.status, body: await res.json() as Ready };
}

/** Polls /readyz until `accept` holds; a hang fails by the suite's timeout. */
async function untilReady(receiver: ReceiverProcess, accept: (r: Ready) => boolean): Promise<Ready> {
  for (;;) {
    const { body } = await readyz(receiver);
    if (accept(body)) return body;
    await sleep(100);
  }
}

const natsDown = (r: Ready): boolean => r.checks.nats?.status === 'down';
const delivered = (r: Ready): boolean => r.checks.nats?.status === 'up' && r.checks.nats.outbox === 0;

describe('the on-disk outbox delivers every event once', { timeout: 300_000 }, () => {
  let nats: NatsServer;
  let dataDir: string;
  let receiver: ReceiverProcess;
  let port: number;
  const receiverEnv = (): Record<string, string> => ({
    DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trust, FERRY_NATS_URL: nats.url,
    FERRY_HOST_ID: hostId, FERRY_DATA_DIR: dataDir,
  });
  // The sender publishes no events here (no FERRY_NATS_URL): everything stored comes from the receiver's outbox.
  const push = async (tag: string): Promise<string> => {
    const result = await runFerry([
      'push', `${repo}:${tag}`, '--to', receiver.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
      '--health', `http://127.0.0.1:${port}/healthz`, '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) });
    assert.equal(result.code, 0, result.stderr + result.stdout);
    const summary = JSON.parse(result.stdout) as { deploymentId: string; deployment: { state: string } };
    assert.equal(summary.deployment.state, 'COMPLETED', 'the deployment did not wait for NATS');
    return summary.deploymentId;
  };
  const sigkill = async (): Promise<void> => {
    const exited = once(receiver.child, 'exit');
    receiver.child.kill('SIGKILL');
    await exited;
  };

  before(async () => {
    port = await freePort();
    nats = await NatsServer.create();
    await nats.start();
    dataDir = await mkdtemp(join(tmpdir(), 'fx-outbox-'));
    await Promise.all([buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`), buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`)]);
    receiver = await startReceiverProcess(receiverEnv());
    await untilReady(receiver, (r) => r.checks.nats?.status === 'up');
  });

  after(async () => {
    await receiver?.stop();
    await nats?.dispose();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    await removeService(target, service);
    const build = dockerodeFor(s.buildDockerHost);
    for (const ref of [`${repo}:1`, `${repo}:2`]) {
      await target.getImage(ref).remove({ force: true }).catch(() => undefined);
      await build.getImage(ref).remove({ force: true }).catch(() => undefined);
    }
  });

  test('NATS down during a deployment: it completes, its events wait on disk and are stored once, in order, when NATS returns', async () => {
    await nats.stop();
    await untilReady(receiver, natsDown);

    const deploymentId = await push('1');
    const waiting = (await outboxEvents(dataDir)).filter((e) => e.deploymentid === deploymentId);
    assert.deepEqual(waiting.map((e) => e.type).slice(-1), ['ferry.deployment.completed']);
    assert.ok(waiting.some((e) => e.type === 'ferry.image.loaded') && waiting.some((e) => e.type === 'ferry.healthcheck.passed'));
    const degraded = await readyz(receiver);
    assert.equal(degraded.code, 503);
    assert.equal(degraded.body.status, 'degraded');
    assert.equal(degraded.body.checks.nats?.status, 'down');
    assert.equal(degraded.body.checks.nats?.outbox, waiting.length);

    await nats.start();
    await untilReady(receiver, delivered);
    assert.deepEqual(await outboxEvents(dataDir), [], 'acknowledged events are removed from the outbox');
    const stored = (await storedEvents(nats.url)).filter((m) => m.event.deploymentid === deploymentId);
    assert.deepEqual(stored.map((m) => m.event.id), waiting.map((e) => e.id), 'every event once, in the order it happened');
    assert.deepEqual(stored.map((m) => m.msgId), waiting.map((e) => e.id), 'Nats-Msg-Id is the event id');

    // The stream the receiver created remembers message ids for a day, which bounds the next tests' guarantee.
    const nc = await connect({ servers: nats.url });
    const info = await (await nc.jetstreamManager()).streams.info(EVENT_STREAM);
    await nc.close();
    assert.equal(millis(info.config.duplicate_window), EVENT_DUPLICATE_WINDOW_MS);
  });

  let resent: { deploymentId: string; files: string } | undefined;

  test('a receiver SIGKILLed with events pending sends them after its restart, each once', async () => {
    await nats.stop();
    await untilReady(receiver, natsDown);
    const deploymentId = await push('2');
    const waiting = (await outboxEvents(dataDir)).filter((e) => e.deploymentid === deploymentId);
    assert.ok(waiting.length >= 4, `events wait in the outbox (${waiting.length})`);
    // Kept for the next test, which replays a crash between an ack and the removal.
    const files = await mkdtemp(join(tmpdir(), 'fx-outbox-copy-'));
    await cp(join(dataDir, 'outbox'), files, { recursive: true });
    resent = { deploymentId, files };

    await sigkill();
    // Still no NATS: the restarted receiver must start anyway, and keep trying to connect.
    receiver = await startReceiverProcess(receiverEnv());
    const afterRestart = await untilReady(receiver, natsDown);
    assert.equal(afterRestart.checks.nats?.outbox, waiting.length, 'the restarted receiver found what the killed one left');

    await nats.start();
    await untilReady(receiver, delivered);
    const stored = (await storedEvents(nats.url)).filter((m) => m.event.deploymentid === deploymentId);
    assert.deepEqual(stored.map((m) => m.event.id), waiting.map((e) => e.id));
    assert.deepEqual(stored.map((m) => m.msgId), waiting.map((e) => e.id));
  });

  test('events sent again after a crash between the ack and their removal are not stored twice', async () => {
    assert.ok(resent, 'the previous test left its outbox copy');
    const before = await storedEvents(nats.url);
    await sigkill();
    // The outbox as it was before delivery: exactly what a crash right after the acks would leave.
    await cp(resent.files, join(dataDir, 'outbox'), { recursive: true });
    receiver = await startReceiverProcess(receiverEnv());
    await untilReady(receiver, delivered);

    const stored = await storedEvents(nats.url);
    assert.deepEqual(stored.map((m) => m.event.id), before.map((m) => m.event.id), 'JetStream dropped every resent copy');
    const ids = stored.map((m) => m.msgId);
    assert.equal(new Set(ids).size, ids.length, 'no Nats-Msg-Id twice');
    await rm(resent.files, { recursive: true, force: true });
  });
});
