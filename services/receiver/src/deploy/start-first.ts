import { publishedPort, type ContainerRunner, type ContainerSpec } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import type { Proxy, Upstream } from '@ferry/proxy';
import {
  FerryError, LABELS, checkThroughPublished, parseRouteLabel, upstreamName, type Route, type RouteLabel, type ServiceSpec,
} from '@ferry/protocol';
import type { JournalEntry, SwitchFacts } from '../journal/journal.ts';
import type { CrashPoint } from './crash.ts';
import { nextName, olderName, parkedName, previousName, settleOlder } from './swap.ts';
import { verdict, type Verdict, type VerdictDeps } from './verdict.ts';

/**
 * Start-first: the new container starts beside the old one (on the bridge network, its route's
 * port published on 127.0.0.1 at a port the engine picks), passes its check and the stability
 * window through that port, and only then does the proxy send it requests; the old one drains,
 * stops and is kept as the previous one. The steps are journalled (SwitchFacts): before the
 * `promoting` line a restart removes the new container and the old one keeps serving, after it
 * a restart finishes the switch.
 */

/**
 * A switch that failed after its commit point: it is not undone (the new container may have had
 * requests already) but finished again from the journal.
 */
export class SwitchIncomplete extends Error {
  readonly error: FerryError;

  constructor(error: FerryError) {
    super(`switch incomplete: ${error.message}`);
    this.error = error;
  }
}

/**
 * Refuses a routed service (or a rollback of one) before anything changes when the host has no
 * proxy, or its proxy does not answer on its runtime socket.
 */
export async function assertProxy(proxy: Proxy | undefined, spec: { route?: unknown }): Promise<void> {
  if (spec.route === undefined) return;
  if (!proxy) throw new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: 'This receiver runs no proxy; a service with a route cannot be deployed or rolled back here' });
  if (!(await proxy.check())) throw new FerryError('FERRY_ERR_PROXY_UNAVAILABLE');
}

/** A new weight of 100: what the proxy gives a promoted upstream (HAProxy's default weight). */
export const FULL_WEIGHT = 100;

export interface SwitchDeps {
  containers: ContainerRunner;
  proxy: Proxy;
  log: Logger;
  crashAt?: CrashPoint | undefined;
}

export interface Switched {
  /** The upstream that served before; absent when none did. */
  from?: string;
  to: Upstream;
  /** Requests still open on the old upstreams when their drain ended. */
  openSessions: number;
}

/**
 * Creates the new container aside (next name) and starts it, the old one running on. The
 * container kept under the older name goes back to being the previous one first, as a stop-first
 * deployment does. `created` is awaited before the start: it journals the id.
 */
export async function startAside(containers: ContainerRunner, spec: ContainerSpec, created: (containerId: string) => Promise<void>): Promise<string> {
  await containers.remove(nextName(spec.name), { force: true });
  await settleOlder(containers, spec.name);
  const containerId = await containers.create({ ...spec, name: nextName(spec.name) });
  await created(containerId);
  await containers.start(containerId);
  return containerId;
}

/** The upstream of a running routed container: its id's first 12 hex digits and its published port. */
export async function upstreamOf(containers: ContainerRunner, containerId: string, port: number): Promise<Upstream> {
  const info = await containers.inspect(containerId);
  const hostPort = info ? publishedPort(info, port) : undefined;
  if (!info?.running || hostPort === undefined) {
    throw new FerryError('FERRY_ERR_CONTAINER_FAILED', {
      message: `Container ${containerId.slice(0, 12)} ${info?.running ? `publishes no port ${port} on 127.0.0.1` : 'is not running'}`,
    });
  }
  return { name: upstreamName(info.id), address: `127.0.0.1:${hostPort}`, weight: FULL_WEIGHT };
}

/**
 * The verdict on a routed container, its check probed through the published port
 * (checkThroughPublished): a check's own host and port name the container's side of it.
 */
export function checkRouted(service: Pick<ServiceSpec, 'health' | 'network' | 'ports' | 'route'>, containerId: string, upstream: Upstream, deps: VerdictDeps): Promise<Verdict> {
  const port = Number(upstream.address.slice(upstream.address.lastIndexOf(':') + 1));
  const health = service.health ? checkThroughPublished(service.health, port) : undefined;
  const { health: _, ...rest } = service;
  return verdict({ service: { ...rest, ...(health ? { health } : {}) } }, containerId, deps);
}

/** The route, drain and check a container was made with (its `ferry.route` label). */
export async function routeOfContainer(containers: ContainerRunner, nameOrId: string): Promise<RouteLabel | undefined> {
  const info = await containers.inspect(nameOrId);
  return parseRouteLabel(info?.labels[LABELS.route]);
}

/**
 * The commit point: `promoting` is journalled, then the switch is finished (finishSwitch). From
 * the journal line on, a receiver killed at any step finishes it when it starts again.
 */
export async function commitSwitch(deps: SwitchDeps, entry: JournalEntry, service: string, facts: SwitchFacts): Promise<Switched> {
  await entry.note({ switch: { ...facts, step: 'promoting' } });
  return finishSwitch(deps, service, facts);
}

/**
 * Moves the service's traffic to `facts.newId` and makes the names follow; every step may run
 * again (a restart finishes a switch from its first step): the route is declared, the new
 * upstream gets full weight, every other upstream of the route drains (up to `drainMs`) and goes,
 * the old container stops and becomes the previous one (the one before it, the older one), and
 * the new one takes the service's name.
 */
export async function finishSwitch(deps: SwitchDeps, service: string, facts: SwitchFacts): Promise<Switched> {
  const { containers, proxy } = deps;
  const info = await containers.inspect(facts.newId);
  if (!info) throw new FerryError('FERRY_ERR_CONTAINER_FAILED', { message: `The container ${facts.newId.slice(0, 12)} the switch goes to is gone` });
  // A restart of the engine meanwhile stopped it, or gave it another port: it runs, and its port is read again.
  if (!info.running) await containers.start(info.id);
  const to = await upstreamOf(containers, info.id, facts.route.port);
  await proxy.setRoute(service, facts.route);
  await proxy.setUpstream(service, to);
  const others = ((await proxy.routes()).find((r) => r.service === service)?.upstreams ?? []).filter((u) => u.name !== to.name);
  if (deps.crashAt === 'during-drain' && others.length > 0) {
    deps.log.warn({ point: deps.crashAt }, 'FERRY_TEST_CRASH_AT: killing the receiver');
    process.kill(process.pid, 'SIGKILL');
  }
  const drained = await Promise.all(others.map((u) => proxy.drain(service, u.name, facts.drainMs)));
  const openSessions = drained.reduce((a, b) => a + b, 0);
  await settleNames(containers, service, facts.newId, facts.oldId);
  const from = facts.oldId ? upstreamName(facts.oldId) : others[0]?.name;
  return { ...(from ? { from } : {}), to, openSessions };
}

/**
 * The names after a switch, reached from any point of an interrupted one: the old container
 * stopped and kept as the previous one (parked on the way while the new one takes the service's
 * name), the previous one before it kept as the older one until the deployment is done.
 */
async function settleNames(containers: ContainerRunner, service: string, newId: string, oldId: string | undefined): Promise<void> {
  const old = oldId ? await containers.inspect(oldId) : undefined;
  if (old?.running) await containers.stop(old.id);
  if (old?.name === service) await containers.rename(old.id, parkedName(service));
  const current = await containers.inspect(newId);
  if (current && current.name !== service) await containers.rename(current.id, service);
  if (!old) return;
  const previous = await containers.inspect(previousName(service));
  if (previous?.id === old.id) return;
  if (previous) {
    await containers.remove(olderName(service), { force: true });
    await containers.rename(previous.id, olderName(service));
  }
  await containers.rename(old.id, previousName(service));
}

/**
 * Undoes a switch that never reached `promoting`: the new container had no request. The proxy
 * forgets its upstream (in case it was told), and the container goes — or, a kept one a rollback
 * started, is stopped again under the previous name. The old one was never touched.
 */
export async function abandonSwitch(deps: Pick<SwitchDeps, 'containers' | 'proxy'>, service: string, facts: Pick<SwitchFacts, 'newId' | 'kept'>): Promise<void> {
  const { containers, proxy } = deps;
  await proxy.removeUpstream(service, upstreamName(facts.newId));
  // A canary had given the old upstream a share only: it gets all the traffic again.
  for (const u of (await proxy.routes()).find((r) => r.service === service)?.upstreams ?? []) {
    if (u.weight < FULL_WEIGHT) await proxy.setUpstream(service, { ...u, weight: FULL_WEIGHT });
  }
  const info = await containers.inspect(facts.newId);
  if (!info) return;
  if (facts.kept) await containers.stop(info.id);
  else await containers.remove(info.id, { force: true });
}

/**
 * Makes the proxy agree with what runs under the service's name: a running routed container is
 * the route's only upstream (others go at once: this is for stop-first, where they are stopped
 * already, and for recovery); without one, the route goes. Resolves to the upstream serving.
 */
export async function routeToCurrent(deps: Pick<SwitchDeps, 'containers' | 'proxy'>, service: string): Promise<{ upstream?: Upstream; removed: string[] }> {
  const { containers, proxy } = deps;
  const current = await containers.inspect(service);
  const label = parseRouteLabel(current?.labels[LABELS.route]);
  const known = (await proxy.routes()).find((r) => r.service === service)?.upstreams ?? [];
  if (!current?.running || !label) {
    if (known.length > 0 || (await proxy.routes()).some((r) => r.service === service)) await proxy.removeRoute(service);
    return { removed: known.map((u) => u.name) };
  }
  const upstream = await upstreamOf(containers, current.id, label.route.port);
  await proxy.setRoute(service, label.route);
  await proxy.setUpstream(service, upstream);
  const removed: string[] = [];
  for (const u of known) {
    if (u.name === upstream.name) continue;
    await proxy.removeUpstream(service, u.name);
    removed.push(u.name);
  }
  return { upstream, removed };
}

/** The journal facts of a switch about to start: the route and drain of what it switches to. */
export function switchFacts(label: Pick<RouteLabel, 'route' | 'drainMs'>, newId: string, oldId: string | undefined, kept: boolean): SwitchFacts {
  const route: Route = label.route;
  return { step: 'aside', route, drainMs: label.drainMs, newId, kept, ...(oldId ? { oldId } : {}) };
}
