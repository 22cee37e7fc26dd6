/**
 * The dashboard's defence against DNS rebinding, on a real loopback listener: a request is served
 * only when its Host header names an address or one of FERRY_DASHBOARD_HOSTS; any other name gets
 * 421 FERRY_ERR_MISDIRECTED_REQUEST, and routes outside the dashboard are not affected.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createBaseApp, finishApp, listen, type ListeningServer } from '@ferry/http';
import { createLogger } from '@ferry/log';
import type { RegistrySnapshot, RegistryView } from '@ferry/registry';
import { defaultDashboardHosts, parseDashboardHosts } from '../../services/registry/src/dashboard/access.ts';
import { dashboardRouter, type DashboardRouter } from '../../services/registry/src/dashboard/index.ts';

const view: RegistryView = {
  snapshot: (): Promise<RegistrySnapshot> => Promise.resolve({ hosts: [], services: [], deployments: [] }),
  subscribe: () => () => undefined,
};

/** One request with exactly these head lines (no Host unless given), answered status and body. */
async function ask(url: string, head: string[]): Promise<{ status: number; body: string }> {
  const { port } = new URL(url);
  const socket = connect(Number(port), '127.0.0.1');
  let text = '';
  socket.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; });
  socket.write(`${[...head, 'Connection: close'].join('\r\n')}\r\n\r\n`);
  await new Promise<void>((resolve, reject) => {
    socket.once('close', () => resolve());
    socket.once('error', reject);
  });
  return { status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0), body: text.slice(text.indexOf('\r\n\r\n') + 4) };
}

describe('dashboard: the Host header', { timeout: 30_000 }, () => {
  let server: ListeningServer;
  let router: DashboardRouter;

  before(async () => {
    router = dashboardRouter({ view, hosts: ['localhost', 'Registry.Example.', '[::1]'] });
    const app = createBaseApp(createLogger({ level: 'silent' }));
    app.use('/', router);
    server = await listen(finishApp(app), '127.0.0.1', 0);
  });
  after(async () => {
    router?.close();
    await server?.close(0);
  });

  test('a name outside FERRY_DASHBOARD_HOSTS gets 421 FERRY_ERR_MISDIRECTED_REQUEST on every dashboard path', async () => {
    for (const path of ['/', '/dashboard/state', '/dashboard/events', '/dashboard/app.js', '/dashboard/app.css']) {
      for (const host of ['attacker.example', 'attacker.example:7702', 'localhost.attacker.example', 'registry.example.attacker.example']) {
        const answer = await ask(server.url, [`GET ${path} HTTP/1.1`, `Host: ${host}`]);
        assert.equal(answer.status, 421, `${path} with Host: ${host}`);
        assert.equal((JSON.parse(answer.body) as { error: { code: string } }).error.code, 'FERRY_ERR_MISDIRECTED_REQUEST');
      }
    }
  });

  test('no Host, or one that is not a host name, is refused too', async () => {
    assert.equal((await ask(server.url, ['GET /dashboard/state HTTP/1.0'])).status, 421);
    for (const host of ['localhost@attacker.example', 'localhost/x', 'localhost:99999', 'local host']) {
      const answer = await ask(server.url, ['GET /dashboard/state HTTP/1.1', `Host: ${host}`]);
      assert.ok(answer.status === 421 || answer.status === 400, `Host: ${host} → ${answer.status}`);
    }
  });

  test('the configured names (any case, any port, a trailing dot) and every IP address are served', async () => {
    for (const host of ['localhost', 'LOCALHOST:7702', 'localhost.', 'registry.example', 'registry.example:443', '127.0.0.1:7702', '[::1]:7702', '10.1.2.3', '[fd00::5]:80']) {
      assert.equal((await ask(server.url, ['GET /dashboard/state HTTP/1.1', `Host: ${host}`])).status, 200, `Host: ${host}`);
    }
  });

  test('paths that are not the dashboard are not affected', async () => {
    assert.equal((await ask(server.url, ['GET /elsewhere HTTP/1.1', 'Host: attacker.example'])).status, 404);
  });
});

describe('FERRY_DASHBOARD_HOSTS', () => {
  test('defaults to the loopback names and the listen address; a list replaces them; ports and junk are refused', () => {
    assert.deepEqual(defaultDashboardHosts('registry.lan'), ['localhost', '127.0.0.1', '[::1]', 'registry.lan']);
    assert.deepEqual(defaultDashboardHosts('::'), ['localhost', '127.0.0.1', '[::1]', '[::]']);
    assert.deepEqual(parseDashboardHosts('ops.example.com, localhost, ::1'), ['ops.example.com', 'localhost', '[::1]']);
    for (const bad of ['ops.example.com:7702', '[::1]:7702', 'a/b', ' , ', 'x@y']) assert.throws(() => parseDashboardHosts(bad), /host names or addresses/, bad);
  });
});
