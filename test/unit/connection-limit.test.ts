/**
 * The connection bound of `listen` (libs/http) on real loopback sockets: at the limit a newcomer
 * replaces the connection idle for longest, a connection in a request is never dropped, and a
 * socket that never sends a byte is closed after the headers timeout even when its peer never
 * closes its side.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { listen, type ListeningServer, type ListenOptions } from '@ferry/http';

interface Client {
  socket: Socket;
  /** Everything the server sent. */
  received: () => string;
  closed: Promise<void>;
}

/** A TCP connection to `url`, open once the handshake is done; `head` is sent at once when given. */
async function open(url: string, head?: string, options: { allowHalfOpen?: boolean } = {}): Promise<Client> {
  const { port } = new URL(url);
  const socket = connect({ port: Number(port), host: '127.0.0.1', allowHalfOpen: options.allowHalfOpen ?? false });
  let received = '';
  socket.setEncoding('latin1').on('data', (chunk: string) => { received += chunk; });
  // A refused connection may see a reset; it is closed either way, which is what tests wait for.
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  if (head !== undefined) socket.write(head);
  return { socket, received: () => received, closed };
}

const GET_HOLD = 'GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';

/** A server whose `/hold` requests wait until released; everything else answers at once. */
class Holding {
  readonly held: ServerResponse[] = [];
  #waiters: (() => void)[] = [];
  server!: ListeningServer;

  async start(options: ListenOptions): Promise<this> {
    this.server = await listen((req: IncomingMessage, res: ServerResponse) => {
      if (req.url === '/hold') {
        this.held.push(res);
        for (const wake of this.#waiters.splice(0)) wake();
        return;
      }
      res.end('ok');
    }, '127.0.0.1', 0, options);
    return this;
  }

  /** Resolves once `count` requests are held. */
  async holding(count: number): Promise<void> {
    while (this.held.length < count) await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  release(): void {
    for (const res of this.held.splice(0)) res.end('released');
  }

  /** Waits until the server holds exactly `count` connections; a count never reached fails by the test's timeout. */
  async connections(count: number): Promise<void> {
    for (;;) {
      const n = await new Promise<number>((resolve, reject) => this.server.server.getConnections((err, c) => (err ? reject(err) : resolve(c))));
      if (n === count) return;
      await sleep(20);
    }
  }
}

describe('listen: a bounded number of connections', { timeout: 30_000 }, () => {
  const servers: Holding[] = [];
  after(async () => {
    for (const s of servers) {
      s.release();
      await s.server.close(0);
    }
  });
  const start = async (options: ListenOptions): Promise<Holding> => {
    const s = await new Holding().start(options);
    servers.push(s);
    return s;
  };

  test('at the limit a new connection replaces the one idle for longest; connections in a request stay', async () => {
    const s = await start({ maxConnections: 4 });
    const busy = [await open(s.server.url, GET_HOLD), await open(s.server.url, GET_HOLD)];
    await s.holding(2);
    const idle1 = await open(s.server.url);
    await s.connections(3);
    const idle2 = await open(s.server.url);
    await s.connections(4);

    const idle3 = await open(s.server.url);
    await idle1.closed;
    assert.equal(idle1.received(), '', 'dropped without an answer');
    assert.equal(idle2.socket.destroyed, false, 'only the oldest idle connection made room');
    const asking = await open(s.server.url, 'GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
    await asking.closed;
    assert.match(asking.received(), /^HTTP\/1\.1 200 /, 'a newcomer at the limit is served');
    await idle2.closed;
    assert.equal(idle3.socket.destroyed, false);

    s.release();
    for (const client of busy) {
      while (!client.received().includes('released')) await sleep(10);
      assert.match(client.received(), /^HTTP\/1\.1 200 /, 'requests in progress were never dropped');
    }
    idle3.socket.destroy();
    for (const client of busy) client.socket.destroy();
  });

  test('when every connection is in a request, a new connection is closed at once, and served once one is free', async () => {
    const s = await start({ maxConnections: 2 });
    const busy = [await open(s.server.url, GET_HOLD), await open(s.server.url, GET_HOLD)];
    await s.holding(2);
    const refused = await open(s.server.url, 'GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await refused.closed;
    assert.equal(refused.received(), '');
    s.release();
    for (const client of busy) {
      while (!client.received().includes('released')) await sleep(10);
      // Kept alive, now idle: the next newcomer may take its place.
    }
    const later = await open(s.server.url, 'GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
    await later.closed;
    assert.match(later.received(), /^HTTP\/1\.1 200 /);
    for (const client of busy) client.socket.destroy();
  });

  test('a socket that never sends a byte gets 408 at the headers timeout and is closed even if its peer never closes its side', async () => {
    const s = await start({ headersTimeoutMs: 300 });
    const silent = await open(s.server.url, undefined, { allowHalfOpen: true });
    await s.connections(1);
    await new Promise<void>((resolve) => silent.socket.once('end', resolve));
    assert.match(silent.received(), /^HTTP\/1\.1 408 /);
    assert.equal(silent.socket.destroyed, false, 'the peer keeps its side open');
    // The server does not wait for it: its side of the connection goes.
    await s.connections(0);
    silent.socket.destroy();
  });
});

describe('listen with TLS: requests on TLS sockets count as busy connections', { timeout: 30_000 }, () => {
  let dir: string;
  let s: Holding;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fx-connlimit-'));
    await promisify(execFile)('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ]);
    s = await new Holding().start({ maxConnections: 3, tls: { cert: await readFile(join(dir, 'cert.pem')), key: await readFile(join(dir, 'key.pem')) } });
  });
  after(async () => {
    s?.release();
    await s?.server.close(0);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('held HTTPS requests push out idle TCP connections, and are not pushed out themselves', async () => {
    const { port } = new URL(s.server.url);
    const answers: Promise<number>[] = [];
    const ask = (): void => {
      answers.push(new Promise<number>((resolve, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port, path: '/hold', agent: false, rejectUnauthorized: false }, (res) => {
          res.resume().on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
        req.end();
      }));
    };
    const idle = [await open(s.server.url), await open(s.server.url)];
    await s.connections(2);
    ask();
    await s.holding(1);
    ask();
    await s.holding(2);
    await idle[0]?.closed;
    ask();
    await s.holding(3);
    await idle[1]?.closed;
    // Three requests in progress: the next connection has nobody to replace.
    const refused = await open(s.server.url);
    await refused.closed;
    s.release();
    assert.deepEqual(await Promise.all(answers), [200, 200, 200]);
  });
});
