/**
 * Thousands of idle unauthenticated connections against a real receiver process whose open-file
 * limit is lower than their number: it keeps answering and keeps reaching its Docker engine
 * (`/readyz` pings it), deploys a signed push made while new idle sockets keep arriving, never
 * holds more connections than FERRY_MAX_CONNECTIONS, and closes the idle ones.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readlink } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { NullSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { push } from '@ferry/sender';
import { removeService } from '../helpers/cleanup.ts';
import { buildTestImage, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = promisify(execFile);
const IDLE = 2000;
/** More that arrive while a deployment runs. */
const MORE = 1000;
const MAX_CONNECTIONS = 200;
/** The receiver's open-file limit: room for its own files and peers, not for IDLE sockets. */
const RECEIVER_NOFILE = 600;

/** The soft and hard open-file limits of a process, as prlimit reports them. */
async function nofile(pid: number): Promise<{ soft: number; hard: number }> {
  const { stdout } = await run('prlimit', ['--pid', String(pid), '--nofile', '--noheadings', '--raw', '--output', 'SOFT,HARD']);
  const [soft, hard] = stdout.trim().split(/\s+/).map((v) => (v === 'unlimited' ? Infinity : Number(v)));
  return { soft: soft ?? 0, hard: hard ?? 0 };
}

/** Sockets the process holds open: its listener, its peers (engine, NATS, Redis) and its clients. */
async function socketsOf(pid: number): Promise<number> {
  let count = 0;
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (target.startsWith('socket:')) count++;
  }
  return count;
}

describe('row 38: thousands of idle connections do not cut a receiver off from its engine', { timeout: 180_000 }, () => {
  const tag = randomBytes(4).toString('hex');
  const hostId = `idle-${tag}`;
  const service = `idle-${tag}`;
  const image = `ferry-idle-${tag}:1`;
  const key = testKey(`idle-${tag}`);
  let receiver: ReceiverProcess;
  const idle: Socket[] = [];

  /** Opens `count` sockets that never send a byte, in batches as fast as the backlog takes them. */
  const openIdle = async (port: number, count: number): Promise<void> => {
    for (let batch = 0; batch < count; batch += 100) {
      await Promise.all(Array.from({ length: Math.min(100, count - batch) }, () => new Promise<void>((resolve, reject) => {
        const socket = connect(port, '127.0.0.1');
        socket.once('connect', () => {
          // Dropped connections may see a reset: that is the receiver shedding them.
          socket.on('error', () => undefined);
          idle.push(socket);
          resolve();
        });
        socket.once('error', reject);
      })));
    }
  };

  before(async () => {
    // This process opens IDLE sockets itself; raise its own soft limit when it is lower (up to the hard one).
    const own = await nofile(process.pid);
    if (own.soft < IDLE + MORE + 500) {
      const soft = Math.min(own.hard, IDLE + MORE + 1000);
      await run('prlimit', ['--pid', String(process.pid), `--nofile=${soft}:${own.hard === Infinity ? 'unlimited' : own.hard}`]);
    }
    assert.ok((await nofile(process.pid)).soft >= IDLE + MORE + 500, `this test needs ${IDLE + MORE + 500} open files (ulimit -n)`);
    receiver = await startReceiverProcess({
      DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId,
      FERRY_MAX_CONNECTIONS: String(MAX_CONNECTIONS), FERRY_HEADERS_TIMEOUT_MS: '3000',
    });
    const pid = receiver.child.pid ?? 0;
    await run('prlimit', ['--pid', String(pid), `--nofile=${RECEIVER_NOFILE}:${RECEIVER_NOFILE}`]);
    assert.equal((await nofile(pid)).soft, RECEIVER_NOFILE);
    await buildTestImage(stack().buildDockerHost, image, `idle-${tag}`);
  });

  after(async () => {
    for (const socket of idle) socket.destroy();
    await receiver?.stop();
    await removeService(dockerodeFor(stack().targetDockerHost), service).catch(() => undefined);
    for (const host of [stack().targetDockerHost, stack().buildDockerHost]) {
      await dockerodeFor(host).getImage(image).remove({ force: true }).catch(() => undefined);
    }
  });

  test(`${IDLE} idle sockets: /readyz still reaches Docker, a signed push deploys, at most FERRY_MAX_CONNECTIONS are held, and all are closed`, async () => {
    const pid = receiver.child.pid ?? 0;
    const baseline = await socketsOf(pid);
    const { port } = new URL(receiver.url);
    // None sends a byte, reads or closes its side: whatever is freed, the receiver frees by itself.
    await openIdle(Number(port), IDLE);
    assert.equal(idle.length, IDLE);

    const ready = await fetch(`${receiver.url}/readyz`);
    const body = await ready.json() as { checks: Record<string, { status: string; reason?: string }> };
    assert.equal(body.checks.docker?.status, 'up', `the engine answers: ${JSON.stringify(body.checks.docker)}`);
    const held = await socketsOf(pid);
    assert.ok(held <= baseline + MAX_CONNECTIONS + 1, `${held} sockets held (${baseline} before, limit ${MAX_CONNECTIONS})`);

    // A signed deployment while MORE idle sockets arrive: its connections take the
    // place of idle ones, and it completes.
    const flood = openIdle(Number(port), MORE);
    const result = await push({ image, to: receiver.url, compression: 'zstd', service: { name: service } }, {
      images: new ImageStore(createDockerClient(stack().buildDockerHost)), events: new NullSink({ logger: createLogger({ level: 'silent' }) }),
      credentials: key, source: 'ferry://sender/test',
    });
    await flood;
    assert.equal(idle.length, IDLE + MORE);
    assert.equal(result.deployment.state, 'COMPLETED');
    const running = await dockerodeFor(stack().targetDockerHost).getContainer(service).inspect();
    assert.equal(running.State.Running, true);
    assert.ok(await socketsOf(pid) <= baseline + MAX_CONNECTIONS + 1, 'still within the limit after the flood');

    // The rest go at the headers timeout, their peers' silence notwithstanding; a socket the
    // receiver kept would fail this by the suite's timeout.
    while (await socketsOf(pid) > baseline) await sleep(100);
    assert.equal((await fetch(`${receiver.url}/healthz`)).status, 200);
    assert.ok(receiver.logs.every((entry) => !/EMFILE/.test(JSON.stringify(entry))), 'never out of file descriptors');
  });
});
