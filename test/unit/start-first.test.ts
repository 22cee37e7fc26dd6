/**
 * The pure parts of a start-first switch (services/receiver/src/deploy/start-first.ts): the check
 * through the published port, the `ferry.route` label read back as untrusted text, upstream names,
 * and the names and route table a switch (or an interrupted one, finished or abandoned) leaves.
 * Containers and the proxy are in-memory tables here; the real engine and HAProxy are in
 * test/integration/start-first.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { publishedPort, type ContainerInfo, type ContainerRunner, type ContainerSpec } from '@ferry/docker';
import { createLogger } from '@ferry/log';
import {
  DEFAULT_DRAIN_MS, LABELS, ServiceSpecSchema, checkThroughPublished, parseRouteLabel, routeLabelOf, upstreamName, type Route,
} from '@ferry/protocol';
import type { Proxy, ProxyRoute, Upstream, UpstreamCounters } from '@ferry/proxy';
import { abandonSwitch, finishSwitch, routeToCurrent, switchFacts } from '../../services/receiver/src/deploy/start-first.ts';
import { nextName, olderName, previousName } from '../../services/receiver/src/deploy/swap.ts';

const route: Route = { host: 'app.example.com', path: '/', port: 8080 };

describe('routed health checks and labels', () => {
  it('probes an http check on the published port, keeping its path and query', () => {
    const check = { type: 'http' as const, url: 'http://localhost:8080/healthz?deep=1', intervalMs: 100, timeoutMs: 100, retries: 3, startPeriodMs: 0 };
    assert.equal((checkThroughPublished(check, 40123) as typeof check).url, 'http://127.0.0.1:40123/healthz?deep=1');
  });

  it('connects a tcp check to the published port, leaves a cmd check alone', () => {
    const tcp = { type: 'tcp' as const, host: '10.0.0.5', port: 8080, intervalMs: 100, timeoutMs: 100, retries: 3, startPeriodMs: 0 };
    assert.deepEqual(checkThroughPublished(tcp, 40123), { ...tcp, host: '127.0.0.1', port: 40123 });
    const cmd = { type: 'cmd' as const, intervalMs: 100, timeoutMs: 100, retries: 3, startPeriodMs: 0 };
    assert.deepEqual(checkThroughPublished(cmd, 40123), cmd);
  });

  it('labels a routed spec with its route, strategy and drain (default 30 s), and nothing else', () => {
    const spec = ServiceSpecSchema.parse({ name: 'web', env: {}, network: 'bridge', route });
    assert.deepEqual(routeLabelOf(spec), { route, strategy: 'start-first', drainMs: DEFAULT_DRAIN_MS });
    assert.equal(routeLabelOf(ServiceSpecSchema.parse({ name: 'web', env: {}, network: 'host' })), undefined);
  });

  it('reads a label back only as the receiver wrote it', () => {
    const good = JSON.stringify({ route, strategy: 'start-first', drainMs: 1000 });
    assert.equal(parseRouteLabel(good)?.drainMs, 1000);
    for (const hostile of [
      undefined, '', 'not json', '{"__proto__":{"x":1}}', JSON.stringify({ route, strategy: 'start-first', drainMs: 1000, extra: 1 }),
      JSON.stringify({ route: { ...route, port: 0 }, strategy: 'start-first', drainMs: 1 }),
      JSON.stringify({ route: { ...route, path: '/../etc' }, strategy: 'start-first', drainMs: 1 }),
      JSON.stringify({ route, strategy: 'sideways', drainMs: 1 }), JSON.stringify({ route, strategy: 'start-first', drainMs: -1 }),
      `{"route":${'['.repeat(20_000)}`,
    ]) assert.equal(parseRouteLabel(hostile), undefined, String(hostile).slice(0, 60));
  });

  it('names an upstream by the first 12 hex digits of the container id, and refuses anything else', () => {
    assert.equal(upstreamName(`${'ab'.repeat(32)}`), 'abababababab');
    assert.throws(() => upstreamName('../etc/passwd'));
    assert.throws(() => upstreamName('ABCDEF012345'));
  });

  it('reads a published port back from inspect', () => {
    const ports = [{ containerPort: 8080, protocol: 'tcp' as const, hostIp: '127.0.0.1', hostPort: 40123 }, { containerPort: 8080, protocol: 'tcp' as const, hostIp: '0.0.0.0', hostPort: 80 }];
    assert.equal(publishedPort({ ports }, 8080), 40123);
    assert.equal(publishedPort({ ports }, 9090), undefined);
    assert.equal(publishedPort({ ports: [] }, 8080), undefined);
  });
});

/** Containers by id, each with a name, a running flag and, while running, a published port. */
class Engine {
  readonly containers = new Map<string, ContainerInfo>();
  #nextPort = 40000;

  add(idChar: string, name: string, running: boolean): string {
    const id = idChar.repeat(64);
    this.containers.set(id, {
      id, name, running, status: running ? 'running' : 'exited', image: 'app', imageId: 'sha256:x', exitCode: 0, restarts: 0,
      labels: { [LABELS.route]: JSON.stringify({ route, strategy: 'start-first', drainMs: 10 }) },
      ports: running ? [{ containerPort: 8080, protocol: 'tcp', hostIp: '127.0.0.1', hostPort: this.#nextPort++ }] : [],
    });
    return id;
  }

  byName(name: string): ContainerInfo | undefined {
    return [...this.containers.values()].find((c) => c.name === name);
  }

  runner(): ContainerRunner {
    const find = (ref: string): ContainerInfo | undefined => this.containers.get(ref) ?? this.byName(ref);
    const runner = {
      inspect: (ref: string) => Promise.resolve(find(ref) && structuredClone(find(ref))),
      start: (ref: string) => {
        const c = find(ref);
        if (!c) return Promise.reject(new Error(`no ${ref}`));
        if (!c.running) Object.assign(c, { running: true, status: 'running', ports: [{ containerPort: 8080, protocol: 'tcp', hostIp: '127.0.0.1', hostPort: this.#nextPort++ }] });
        return Promise.resolve();
      },
      stop: (ref: string) => {
        const c = find(ref);
        if (c) Object.assign(c, { running: false, status: 'exited', ports: [] });
        return Promise.resolve();
      },
      rename: (ref: string, name: string) => {
        const c = find(ref);
        if (!c) return Promise.reject(new Error(`no ${ref}`));
        if (this.byName(name) && this.byName(name)?.id !== c.id) return Promise.reject(new Error(`name ${name} taken`));
        c.name = name;
        return Promise.resolve();
      },
      remove: (ref: string) => {
        const c = find(ref);
        if (c) this.containers.delete(c.id);
        return Promise.resolve();
      },
      create: (spec: ContainerSpec) => Promise.resolve(this.add('f', spec.name, false)),
    };
    return runner as unknown as ContainerRunner;
  }
}

class TableProxy implements Proxy {
  readonly table = new Map<string, ProxyRoute>();
  readonly drained: string[] = [];
  start(): Promise<void> { return Promise.resolve(); }
  check(): Promise<boolean> { return Promise.resolve(true); }
  setRoute(service: string, r: Route): Promise<void> {
    this.table.set(service, { service, route: r, upstreams: this.table.get(service)?.upstreams ?? [] });
    return Promise.resolve();
  }
  setUpstream(service: string, upstream: Upstream): Promise<void> {
    const entry = this.table.get(service);
    if (!entry) return Promise.reject(new Error('no route'));
    entry.upstreams = [...entry.upstreams.filter((u) => u.name !== upstream.name), upstream];
    return Promise.resolve();
  }
  drain(service: string, name: string): Promise<number> {
    this.drained.push(name);
    return this.removeUpstream(service, name).then(() => 0);
  }
  removeUpstream(service: string, name: string): Promise<void> {
    const entry = this.table.get(service);
    if (entry) entry.upstreams = entry.upstreams.filter((u) => u.name !== name);
    return Promise.resolve();
  }
  counters(): Promise<UpstreamCounters[]> { return Promise.resolve([]); }
  removeRoute(service: string): Promise<void> { this.table.delete(service); return Promise.resolve(); }
  routes(): Promise<ProxyRoute[]> { return Promise.resolve(structuredClone([...this.table.values()])); }
  setCertificate(): Promise<void> { return Promise.resolve(); }
  close(): Promise<void> { return Promise.resolve(); }
}

const log = createLogger({ level: 'silent' });

async function serving(engine: Engine, proxy: TableProxy, id: string): Promise<void> {
  await proxy.setRoute('web', route);
  const info = engine.containers.get(id);
  await proxy.setUpstream('web', { name: upstreamName(id), address: `127.0.0.1:${info?.ports[0]?.hostPort}`, weight: 100 });
}

describe('a start-first switch', () => {
  it('moves traffic to the new container, drains the old one, and the names follow', async () => {
    const engine = new Engine();
    const proxy = new TableProxy();
    const before = engine.add('b', previousName('web'), false);
    const old = engine.add('a', 'web', true);
    const next = engine.add('c', nextName('web'), true);
    await serving(engine, proxy, old);
    const switched = await finishSwitch({ containers: engine.runner(), proxy, log }, 'web', switchFacts({ route, drainMs: 10 }, next, old, false));
    assert.equal(switched.from, upstreamName(old));
    assert.equal(switched.to.name, upstreamName(next));
    assert.deepEqual(proxy.drained, [upstreamName(old)]);
    assert.deepEqual((await proxy.routes())[0]?.upstreams.map((u) => u.name), [upstreamName(next)]);
    assert.equal(engine.byName('web')?.id, next);
    assert.equal(engine.byName(previousName('web'))?.id, old);
    assert.equal(engine.byName(previousName('web'))?.running, false);
    assert.equal(engine.byName(olderName('web'))?.id, before);
  });

  it('finished again from its journal line, lands in the same place whatever step it died at', async () => {
    const engine = new Engine();
    const proxy = new TableProxy();
    const old = engine.add('a', 'web', true);
    const next = engine.add('c', nextName('web'), true);
    await serving(engine, proxy, old);
    const facts = switchFacts({ route, drainMs: 10 }, next, old, false);
    // Died half-way: the old one was stopped and parked, the new one not renamed yet.
    const runner = engine.runner();
    await runner.stop(old);
    await runner.rename(old, 'web.ferry-parked');
    await finishSwitch({ containers: runner, proxy, log }, 'web', facts);
    await finishSwitch({ containers: runner, proxy, log }, 'web', facts);
    assert.equal(engine.byName('web')?.id, next);
    assert.equal(engine.byName(previousName('web'))?.id, old);
    assert.deepEqual((await proxy.routes())[0]?.upstreams.map((u) => u.name), [upstreamName(next)]);
  });

  it('a switch back to a kept container (manual rollback) swaps the two names', async () => {
    const engine = new Engine();
    const proxy = new TableProxy();
    const kept = engine.add('b', previousName('web'), false);
    const current = engine.add('a', 'web', true);
    await serving(engine, proxy, current);
    const runner = engine.runner();
    await runner.start(kept);
    await finishSwitch({ containers: runner, proxy, log }, 'web', switchFacts({ route, drainMs: 10 }, kept, current, true));
    assert.equal(engine.byName('web')?.id, kept);
    assert.equal(engine.byName(previousName('web'))?.id, current);
    assert.equal(engine.byName(olderName('web')), undefined);
  });

  it('abandoned before its commit point, the new container goes (or a kept one stops) and the old one serves on', async () => {
    const engine = new Engine();
    const proxy = new TableProxy();
    const old = engine.add('a', 'web', true);
    const next = engine.add('c', nextName('web'), true);
    await serving(engine, proxy, old);
    await abandonSwitch({ containers: engine.runner(), proxy }, 'web', { newId: next, kept: false });
    assert.equal(engine.containers.has(next), false);
    assert.equal(engine.byName('web')?.running, true);
    assert.deepEqual((await proxy.routes())[0]?.upstreams.map((u) => u.name), [upstreamName(old)]);
    const kept = engine.add('b', previousName('web'), true);
    await abandonSwitch({ containers: engine.runner(), proxy }, 'web', { newId: kept, kept: true });
    assert.equal(engine.byName(previousName('web'))?.running, false);
  });

  it('the route table follows what runs under the service name, and goes when nothing routed runs', async () => {
    const engine = new Engine();
    const proxy = new TableProxy();
    const stale = engine.add('a', previousName('web'), true);
    await serving(engine, proxy, stale);
    const current = engine.add('c', 'web', true);
    const routed = await routeToCurrent({ containers: engine.runner(), proxy }, 'web');
    assert.equal(routed.upstream?.name, upstreamName(current));
    assert.deepEqual(routed.removed, [upstreamName(stale)]);
    await engine.runner().stop(current);
    await routeToCurrent({ containers: engine.runner(), proxy }, 'web');
    assert.deepEqual(await proxy.routes(), []);
  });
});
