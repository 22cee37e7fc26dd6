/**
 * @ferry/proxy against a real HAProxy: routes by host and path prefix, weights, drain without a
 * failed request, per-upstream counters, TLS certificates chosen by SNI, a killed HAProxy started
 * again and a new Proxy object (a receiver restart) adopting the running one, both reconciled to
 * the route table; and names that try to smuggle a runtime command. The upstreams are small
 * node:http servers on loopback; the proxy is the real thing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import { connect as connectUnix } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { FerryError } from '@ferry/protocol';
import { createHaproxyProxy, haproxyPids, killHaproxy, proxyPaths, type Proxy, type ProxySettings } from '@ferry/proxy';
import { freePort, startReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { stack } from '../helpers/stack.ts';

const exec = promisify(execFile);

interface Answer { status: number; body: string; headers: Record<string, string | string[] | undefined> }

/** One request on its own connection; `host` goes in the Host header. */
function get(port: number, host: string, path: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { host }, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** An upstream that answers its name and the path; `/slow` after 3 s, `/fail` with 500. */
async function upstream(name: string): Promise<{ server: Server; address: string }> {
  const server = createServer((req, res) => {
    if (req.url === '/fail') { res.statusCode = 500; res.end(`${name} failed`); return; }
    if (req.url === '/slow') { setTimeout(() => res.end(`${name} slow`), 3_000); return; }
    res.end(`${name} ${req.url}`);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  assert.ok(addr !== null && typeof addr === 'object');
  return { server, address: `127.0.0.1:${addr.port}` };
}

/** One raw admin-socket command, as an operator would type it with socat. */
function admin(socket: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const s = connectUnix(socket, () => s.end(`${command}\n`));
    s.on('data', (d: Buffer) => { out += d.toString(); });
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
}

/** The certificate's CN the HTTPS listener presents for `servername`. */
function servedName(port: number, servername: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false }, () => {
      const cn = socket.getPeerCertificate().subject.CN;
      socket.end();
      resolve(Array.isArray(cn) ? cn.join(',') : String(cn));
    });
    socket.on('error', reject);
  });
}

async function selfSigned(dir: string, host: string): Promise<string> {
  const key = join(dir, `${host}.key`);
  const crt = join(dir, `${host}.crt`);
  await exec('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', crt,
    '-subj', `/CN=${host}`, '-addext', `subjectAltName=DNS:${host}`, '-days', '2']);
  return (await readFile(crt, 'utf8')) + (await readFile(key, 'utf8'));
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => err instanceof FerryError && err.code === code);
}

const A = 'aaaaaaaaaaaa';
const B = 'bbbbbbbbbbbb';
const C = 'cccccccccccc';

describe('the HAProxy proxy', { timeout: 180_000 }, () => {
  let work: string;
  let settings: ProxySettings;
  let proxy: Proxy;
  let http: number;
  let https: number;
  const ups: Record<string, { server: Server; address: string }> = {};
  const dirs: string[] = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'ferry-proxy-'));
    [http, https] = [await freePort(), await freePort()];
    // Servers taken out of a route are deleted at the next check, not 30 s later.
    settings = { dir: join(work, 'p'), http: `127.0.0.1:${http}`, https: `127.0.0.1:${https}`, slots: 8, retireMs: 0 };
    dirs.push(settings.dir);
    for (const n of ['a', 'b', 'c']) ups[n] = await upstream(n);
    proxy = createHaproxyProxy(settings);
    await proxy.start();
  });

  after(async () => {
    for (const dir of dirs) await killHaproxy(proxyPaths(dir));
    for (const u of Object.values(ups)) u.server.close();
    await rm(work, { recursive: true, force: true });
  });

  test('routes by host, by path prefix (the longest wins), and answers 404 without a route', async () => {
    await proxy.setRoute('web', { host: 'web.test', port: 80 });
    await proxy.setUpstream('web', { name: A, address: ups['a'].address, weight: 100 });
    await proxy.setRoute('api', { host: 'web.test', path: '/api', port: 80 });
    await proxy.setUpstream('api', { name: B, address: ups['b'].address, weight: 100 });
    await proxy.setRoute('static', { path: '/static/', port: 80 });
    await proxy.setUpstream('static', { name: C, address: ups['c'].address, weight: 100 });

    assert.equal((await get(http, 'web.test', '/x')).body, 'a /x');
    assert.equal((await get(http, 'WEB.test:8080', '/')).body, 'a /', 'the Host header is matched without its port, in any case');
    assert.equal((await get(http, 'web.test', '/api/v1')).body, 'b /api/v1', 'the longer prefix wins');
    assert.equal((await get(http, 'other.test', '/static/x.css')).body, 'c /static/x.css', 'a path-only route serves any host');
    const none = await get(http, 'other.test', '/x');
    assert.equal(none.status, 404);
    const routes = await proxy.routes();
    assert.deepEqual(routes.map((r) => r.service).sort(), ['api', 'static', 'web']);
  });

  test('weights split the traffic: weight 0 gets no new request', async () => {
    await proxy.setUpstream('web', { name: B, address: ups['b'].address, weight: 100 });
    await proxy.setUpstream('web', { name: A, address: ups['a'].address, weight: 0 });
    for (let i = 0; i < 10; i++) assert.equal((await get(http, 'web.test', '/w')).body, 'b /w');
    await proxy.setUpstream('web', { name: A, address: ups['a'].address, weight: 100 });
    const seen = new Set<string>();
    for (let i = 0; i < 10; i++) seen.add((await get(http, 'web.test', '/w')).body);
    assert.deepEqual([...seen].sort(), ['a /w', 'b /w']);
  });

  test('a drain lets the in-flight request finish while new ones go to the other upstream, and none fails', async () => {
    await proxy.setUpstream('web', { name: B, address: ups['b'].address, weight: 0 });
    const slow = get(http, 'web.test', '/slow');
    // The slow request is open on A before the switch.
    for (;;) {
      const c = await proxy.counters('web');
      if (c.find((x) => x.name === A)?.current === 1) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    await proxy.setUpstream('web', { name: B, address: ups['b'].address, weight: 100 });
    // Requests run on across the switch; those sent once A is seen draining must all go to B.
    let stop = false;
    let switched = false;
    const during: { answer: Answer; afterSwitch: boolean }[] = [];
    const traffic = (async () => {
      while (!stop) {
        const afterSwitch = switched;
        during.push({ answer: await get(http, 'web.test', '/during'), afterSwitch });
      }
    })();
    const draining = proxy.drain('web', A, 30_000);
    const paths = proxyPaths(settings.dir);
    for (;;) {
      const row = (await admin(paths.adminSocket, 'show servers state')).split('\n').find((l) => l.includes(` ${A} `));
      // srv_admin_state (the 7th column) has the forced-drain bit 0x08.
      if (row && (Number(row.split(' ')[6]) & 0x08) !== 0) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    switched = true;
    const left = await draining;
    stop = true;
    await traffic;
    assert.equal(left, 0, 'drained: no session left');
    const finished = await slow;
    assert.deepEqual([finished.status, finished.body], [200, 'a slow'], 'the in-flight request finished on the drained upstream');
    assert.ok(during.some((d) => d.afterSwitch));
    for (const d of during) assert.equal(d.answer.status, 200);
    for (const d of during.filter((x) => x.afterSwitch)) assert.equal(d.answer.body, 'b /during');
    const web = (await proxy.routes()).find((r) => r.service === 'web');
    assert.deepEqual(web?.upstreams.map((u) => u.name), [B]);
  });

  test('the counters show each upstream\'s 5xx', async () => {
    await proxy.setUpstream('web', { name: A, address: ups['a'].address, weight: 0 });
    for (let i = 0; i < 3; i++) assert.equal((await get(http, 'web.test', '/fail')).status, 500);
    const counters = await proxy.counters('web');
    const b = counters.find((c) => c.name === B);
    assert.equal(b?.responses['5xx'], 3);
    assert.ok((b?.responses['2xx'] ?? 0) > 0);
    assert.equal(counters.find((c) => c.name === A)?.responses['5xx'], 0);
    await proxy.removeUpstream('web', A);
  });

  test('TLS: each host gets its own certificate by SNI, and plain HTTP to a TLS route is redirected', async () => {
    await proxy.setCertificate('one.test', await selfSigned(work, 'one.test'));
    await proxy.setCertificate('two.test', await selfSigned(work, 'two.test'));
    assert.equal(await servedName(https, 'one.test'), 'one.test');
    assert.equal(await servedName(https, 'two.test'), 'two.test');
    assert.equal(await servedName(https, 'unknown.test'), 'ferry-default');
    // Replaced live.
    await proxy.setCertificate('one.test', await selfSigned(work, 'one.test'));
    assert.equal(await servedName(https, 'one.test'), 'one.test');

    await proxy.setRoute('secure', { host: 'one.test', port: 443, tls: true });
    await proxy.setUpstream('secure', { name: C, address: ups['c'].address, weight: 1 });
    const plain = await get(http, 'one.test', '/p');
    assert.equal(plain.status, 308);
    assert.equal(plain.headers['location'], 'https://one.test/p');
  });

  test('ROUTE_TAKEN for another service\'s host and path; ROUTES_FULL when no slot is left', async () => {
    await rejectsWith(proxy.setRoute('thief', { host: 'web.test', path: '/api', port: 80 }), 'FERRY_ERR_ROUTE_TAKEN');
    await rejectsWith(proxy.setRoute('thief', { host: 'web.test', port: 80 }), 'FERRY_ERR_ROUTE_TAKEN');
    await rejectsWith(proxy.setRoute('thief', { path: '/static/', port: 80 }), 'FERRY_ERR_ROUTE_TAKEN');
    // The same service may change its own route.
    await proxy.setRoute('api', { host: 'web.test', path: '/api', port: 81 });
    let n = 0;
    for (;;) {
      try {
        await proxy.setRoute(`fill-${n}`, { path: `/fill-${n}`, port: 80 });
        n++;
      } catch (err) {
        assert.ok(err instanceof FerryError && err.code === 'FERRY_ERR_ROUTES_FULL', String(err));
        break;
      }
    }
    assert.equal(n, 8 - 4, 'the slots the four routes left');
    for (let i = 0; i < n; i++) await proxy.removeRoute(`fill-${i}`);
    assert.equal((await get(http, 'x.test', '/fill-0')).status, 404);
  });

  test('a hostile name, host, path, address or certificate never reaches HAProxy', async () => {
    const before = JSON.stringify(await proxy.routes());
    const bad: [string, () => Promise<unknown>][] = [
      ['service', () => proxy.setRoute('web;shutdown', { host: 'x.test', port: 80 })],
      ['service newline', () => proxy.setUpstream('web\nshow info', { name: A, address: ups['a'].address, weight: 1 })],
      ['host', () => proxy.setRoute('evil', { host: 'x.test slot0\ndel map', port: 80 })],
      ['host semicolon', () => proxy.setRoute('evil', { host: 'x.test;shutdown', port: 80 })],
      ['path', () => proxy.setRoute('evil', { path: '/a b', port: 80 })],
      ['path dots', () => proxy.setRoute('evil', { path: '/a/../b', port: 80 })],
      ['upstream name', () => proxy.setUpstream('web', { name: 'aaaa aaaa;del', address: ups['a'].address, weight: 1 })],
      ['address', () => proxy.setUpstream('web', { name: A, address: '127.0.0.1:80\nshutdown frontend http', weight: 1 })],
      ['address host', () => proxy.setUpstream('web', { name: A, address: 'evil.example:80', weight: 1 })],
      ['weight', () => proxy.setUpstream('web', { name: A, address: ups['a'].address, weight: 257 })],
      ['drain name', () => proxy.drain('web', `${A}/x`, 10)],
      ['cert host', () => proxy.setCertificate('../etc', 'x')],
      ['cert payload', () => proxy.setCertificate('three.test', '-----BEGIN CERTIFICATE-----\nAAAA\n\nshutdown frontend http\n-----END CERTIFICATE-----\n')],
    ];
    for (const [what, call] of bad) {
      await assert.rejects(call(), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_BAD_REQUEST', what);
    }
    assert.equal(JSON.stringify(await proxy.routes()), before);
    assert.equal((await get(http, 'web.test', '/still')).body, 'b /still');
    // A log address is written into HAProxy's configuration: the library takes nothing but an address and a port.
    for (const log of ['127.0.0.1:514\n  stats socket /tmp/x level admin', '*:514', 'logs.example:514', '127.0.0.1:0']) {
      assert.throws(() => createHaproxyProxy({ ...settings, log }), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_CONFIG', log);
    }
  });

  test('HAProxy killed with SIGKILL: check() starts it again with every route, server and certificate', async () => {
    const paths = proxyPaths(settings.dir);
    for (const pid of await haproxyPids(paths)) process.kill(pid, 'SIGKILL');
    await assert.rejects(get(http, 'web.test', '/'));
    assert.equal(await proxy.check(), true);
    assert.equal((await get(http, 'web.test', '/back')).body, 'b /back');
    assert.equal((await get(http, 'web.test', '/api/x')).body, 'b /api/x');
    assert.equal((await get(http, 'o.test', '/static/y')).body, 'c /static/y');
    assert.equal(await servedName(https, 'two.test'), 'two.test');
  });

  test('a new Proxy over the same directory adopts the running HAProxy and reconciles it', async () => {
    const paths = proxyPaths(settings.dir);
    const pids = (await haproxyPids(paths)).sort();
    await proxy.close();
    // Drift while no receiver watched: a server gone, a stranger added, a map entry lost.
    const state = await admin(paths.adminSocket, 'show servers state');
    const slot = /^\d+ (slot\d+) \d+ bbbbbbbbbbbb /m.exec(state)?.[1];
    assert.ok(slot, state);
    await admin(paths.adminSocket, `set server ${slot}/${B} state maint`);
    await admin(paths.adminSocket, `del server ${slot}/${B}`);
    await admin(paths.adminSocket, `add server ${slot}/dddddddddddd ${ups['a'].address}`);
    await admin(paths.adminSocket, `enable server ${slot}/dddddddddddd`);
    await admin(paths.adminSocket, `clear map ${paths.pathMap}`);

    proxy = createHaproxyProxy(settings);
    await proxy.start();
    assert.deepEqual((await haproxyPids(paths)).sort(), pids, 'the same HAProxy');
    for (let i = 0; i < 5; i++) assert.equal((await get(http, 'web.test', '/again')).body, 'b /again');
    assert.equal((await get(http, 'o.test', '/static/z')).body, 'c /static/z');
    assert.doesNotMatch(await admin(paths.adminSocket, 'show servers state'), /dddddddddddd/);
  });

  test('a server taken out of its route waits in maintenance, sent nothing, until a check after its retirement time deletes it', async () => {
    const E = 'eeeeeeeeeeee';
    const waitingPort = await freePort();
    const waiting = createHaproxyProxy({ dir: join(work, 'retire'), http: `127.0.0.1:${waitingPort}`, slots: 2, retireMs: 600_000 });
    dirs.push(join(work, 'retire'));
    await waiting.start();
    for (const [p, port, dir] of [[waiting, waitingPort, join(work, 'retire')], [proxy, http, settings.dir]] as const) {
      await p.setRoute('retire', { host: 'retire.test', port: 80 });
      await p.setUpstream('retire', { name: E, address: ups['a'].address, weight: 100 });
      await p.setUpstream('retire', { name: C, address: ups['c'].address, weight: 100 });
      await p.removeUpstream('retire', E);
      const socket = proxyPaths(dir).adminSocket;
      const row = (await admin(socket, 'show servers state')).split('\n').find((l) => l.includes(` ${E} `));
      // srv_admin_state (the 7th column) has the forced-maintenance bit 0x01.
      assert.ok(row && (Number(row.split(' ')[6]) & 0x01) !== 0, `${E} is in maintenance: ${row}`);
      for (let i = 0; i < 6; i++) assert.equal((await get(port, 'retire.test', '/r')).body, 'c /r');
      assert.equal(await p.check(), true);
      const kept = (await admin(socket, 'show servers state')).includes(` ${E} `);
      assert.equal(kept, p === waiting, p === waiting ? 'kept while its retirement time runs' : 'deleted once it has run');
      await p.removeRoute('retire');
    }
    await waiting.close();
  });

  test('removing a route stops serving it', async () => {
    await proxy.removeRoute('static');
    assert.equal((await get(http, 'o.test', '/static/z')).status, 404);
    assert.equal((await proxy.routes()).some((r) => r.service === 'static'), false);
  });
});

describe('the receiver runs the host\'s proxy', { timeout: 120_000 }, () => {
  let work: string;
  let dir: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'ferry-proxy-rx-'));
    dir = join(work, 'proxy');
  });

  after(async () => {
    await killHaproxy(proxyPaths(dir));
    await rm(work, { recursive: true, force: true });
  });

  test('starts HAProxy, reports it in /readyz, leaves it serving when it stops, and the next receiver adopts it', async () => {
    const http = await freePort();
    const env = {
      DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(testKey('proxy-rx')), FERRY_DATA_DIR: join(work, 'data'),
      FERRY_PROXY_HTTP: `127.0.0.1:${http}`, FERRY_PROXY_DIR: dir, FERRY_PROXY_SLOTS: '4',
    };
    const first = await startReceiverProcess(env);
    let pids: number[];
    try {
      const ready = await (await fetch(`${first.url}/readyz`)).json() as { checks: Record<string, { status: string }> };
      assert.equal(ready.checks['proxy']?.status, 'up');
      pids = await haproxyPids(proxyPaths(dir));
      assert.ok(pids.length > 0);
      assert.equal((await get(http, 'nothing.test', '/')).status, 404);
    } finally {
      await first.stop();
    }
    // Still serving with no receiver.
    assert.equal((await get(http, 'nothing.test', '/')).status, 404);
    const second = await startReceiverProcess(env);
    try {
      assert.deepEqual((await haproxyPids(proxyPaths(dir))).sort(), pids.sort(), 'adopted, not started again');
      const ready = await (await fetch(`${second.url}/readyz`)).json() as { checks: Record<string, { status: string }> };
      assert.equal(ready.checks['proxy']?.status, 'up');
    } finally {
      await second.stop();
    }
  });

  test('with FERRY_PROXY_LOG, HAProxy sends a syslog line per request to that UDP address', async () => {
    const sink = createSocket('udp4');
    const lines: string[] = [];
    sink.on('message', (m) => lines.push(m.toString('utf8')));
    await new Promise<void>((resolve) => sink.bind(0, '127.0.0.1', resolve));
    const http = await freePort();
    const logDir = join(work, 'proxy-log');
    const rx = await startReceiverProcess({
      DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(testKey('proxy-rx3')), FERRY_DATA_DIR: join(work, 'data3'),
      FERRY_PROXY_HTTP: `127.0.0.1:${http}`, FERRY_PROXY_DIR: logDir, FERRY_PROXY_LOG: `127.0.0.1:${sink.address().port}`,
    });
    try {
      assert.equal((await get(http, 'nothing.test', '/logged')).status, 404);
      while (!lines.some((l) => l.includes('"GET /logged HTTP/1.1"'))) await sleep(50);
      const line = lines.find((l) => l.includes('"GET /logged HTTP/1.1"')) ?? '';
      assert.match(line, /^<\d+>.* http none\/<NOSRV> .* 404 /, line);
    } finally {
      await rx.stop();
      await killHaproxy(proxyPaths(logDir));
      sink.close();
    }
  });

  test('a bad proxy setting stops the receiver at start with FERRY_ERR_CONFIG', async () => {
    await assert.rejects(startReceiverProcess({
      DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(testKey('proxy-rx2')), FERRY_PROXY_HTTP: '127.0.0.1:80;shutdown',
    }));
    // A log address is written into HAProxy's configuration: nothing but an address and a port gets there.
    for (const log of ['127.0.0.1:514\n  stats socket /tmp/x level admin', '*:514', 'logs.example:514', '127.0.0.1']) {
      await assert.rejects(startReceiverProcess({
        DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(testKey('proxy-rx2')), FERRY_PROXY_HTTP: '127.0.0.1:18099', FERRY_PROXY_LOG: log,
      }), /FERRY_PROXY_LOG/);
    }
  });
});
