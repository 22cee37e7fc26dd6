import type { EventSink } from '@ferry/events';
import { FerryError, isFerryError, type ReleaseOutcome } from '@ferry/protocol';
import { ReceiverClient, type Credentials } from '../receiver-client.ts';
import { resolveTargets } from '../targets.ts';
import { releaseEventsOf } from './events.ts';
import { eachLimited } from './limit.ts';
import { previousReleases, type PreviousReleases } from './previous.ts';
import { rollbackService } from './rollback.ts';

export interface BackToReleaseRequest {
  releaseId: string;
  /** Receiver URLs and/or `selector:…`: the hosts to return. */
  targets: string[];
  /** Only these services (default every service the release left on each host). */
  services?: string[] | undefined;
  parallel?: number | undefined;
  attempts?: number | undefined;
}

export interface BackToReleaseDeps {
  credentials: Credentials;
  registryUrl?: string | undefined;
  /** Told each service on each host once its request answered. */
  onDone?: (result: ServiceReturn) => void;
  /** Told the hosts and their services before the first request. */
  onPlanned?: (plan: ReturnPlan) => void;
  /**
   * Where the release events of the releases left go (`release.rollback.started`, then
   * `release.rolled_back`), as a release run publishes them; without it none are published.
   */
  events?: {
    sink: EventSink;
    /** CloudEvents source of the sender. */
    source: string;
    /** The project a release left was made in (its events' subject), or undefined when unknown: its events are not published then. */
    projectOf: (releaseId: string) => Promise<string | undefined>;
  };
  /** Told what is not done, e.g. a left release whose events cannot be published. */
  onWarning?: (message: string) => void;
}

/** One service to return on one host: its place in the release's order decides when. */
export interface ServiceReturn {
  url: string;
  host: string;
  service: string;
  /** Its phase in the release, counted from 0. */
  phase: number;
  /** The retained release it ran before, where its host's journal says so. */
  from?: string;
  /** The release's image of it on that host. */
  imageId: string;
  ok: boolean;
  deploymentId?: string;
  state?: string;
  error?: { code: string; message: string };
}

/** A host that could not take part: it does not retain the release, or did not answer. */
export interface HostProblem {
  url: string;
  host?: string;
  error: { code: string; message: string };
}

export interface ReturnPlan {
  releaseId: string;
  hosts: string[];
  services: Array<Pick<ServiceReturn, 'url' | 'host' | 'service' | 'phase' | 'imageId'>>;
  problems: HostProblem[];
}

export interface BackToReleaseResult extends ReturnPlan {
  ok: boolean;
  results: ServiceReturn[];
}

/**
 * Returns hosts to a release they retain (`ferry rollback --to-release`): each host is asked what
 * it retains (`GET /v1/releases`), and every service it retains of that release (or the ones
 * named) runs that release's image and spec again through the receiver's rollback to a release
 * (docs/protocol.md §11.3) — the last phase first on every host, the services of one phase at
 * once, at most `parallel`, so a client goes back before what it depends on. A host that does not
 * retain the release changes nothing and is a problem of the result. Never throws for one host's
 * failure.
 *
 * The releases the hosts leave (what each service ran before, from the host's journal) are told
 * as a release run tells its own rollback: on each, `release.rollback.started` before the first
 * request and `release.rolled_back` with its hosts' per-service outcomes at the end, naming the
 * release returned to when every one of its services went back.
 *
 * @throws FerryError for targets that cannot be resolved (selectors without a registry, none matching).
 */
export async function backToRelease(request: BackToReleaseRequest, deps: BackToReleaseDeps): Promise<BackToReleaseResult> {
  const parallel = request.parallel ?? 5;
  const targets = await resolveTargets(request.targets, { registryUrl: deps.registryUrl, credentials: deps.credentials });
  const problems: HostProblem[] = [];
  const items: Array<ServiceReturn & { client: ReceiverClient }> = [];
  const hosts: string[] = [];
  await eachLimited(targets, parallel, async (t) => {
    const client = new ReceiverClient({ url: t.url, credentials: deps.credentials, ...(t.host ? { audience: t.host } : {}), ...(t.hostKey ? { hostKey: t.hostKey } : {}) });
    let host = t.host;
    try {
      host ??= await client.identify();
      const release = (await client.releases()).find((r) => r.id === request.releaseId);
      const services = release?.services.filter((s) => request.services === undefined || request.services.includes(s.service)) ?? [];
      if (services.length === 0) {
        const what = request.services === undefined ? '' : ` of ${request.services.join(', ')}`;
        throw new FerryError('FERRY_ERR_RELEASE_NOT_RETAINED', {
          message: `${host} does not retain release ${request.releaseId}${what} (GET /v1/releases lists what it does)`, details: { releaseId: request.releaseId, host },
        });
      }
      hosts.push(host);
      for (const s of services) items.push({ url: t.url, host, service: s.service, phase: s.phase ?? 0, imageId: s.imageId, ok: false, client });
    } catch (err) {
      if (!isFerryError(err)) throw err;
      problems.push({ url: t.url, ...(host ? { host } : {}), error: { code: err.code, message: err.message } });
    }
  });
  // Hosts and services in the order they were named, whatever order the answers came in.
  const order = (url: string): number => targets.findIndex((t) => t.url === url);
  items.sort((a, b) => order(a.url) - order(b.url) || a.service.localeCompare(b.service));
  hosts.sort((a, b) => order(items.find((i) => i.host === a)?.url ?? '') - order(items.find((i) => i.host === b)?.url ?? ''));
  problems.sort((a, b) => order(a.url) - order(b.url));
  const left = await leftReleases(items, targets, deps.credentials, parallel);
  for (const item of items) {
    const from = left[item.host]?.[item.service];
    if (from !== undefined) item.from = from;
  }
  const plan: ReturnPlan = {
    releaseId: request.releaseId, hosts,
    services: items.map(({ url, host, service, phase, imageId, from }) => ({ url, host, service, phase, imageId, ...(from === undefined ? {} : { from }) })),
    problems,
  };
  deps.onPlanned?.(plan);
  const started = performance.now();
  const told = await tellStarted(items, request.releaseId, deps);

  for (const phase of [...new Set(items.map((i) => i.phase))].sort((a, b) => b - a)) {
    await eachLimited(items.filter((i) => i.phase === phase), parallel, async (item) => {
      const answer = await rollbackService(item.client, item.service, { toRelease: request.releaseId, attempts: request.attempts });
      item.ok = answer.ok;
      item.deploymentId = answer.deploymentId;
      if (answer.ok) item.state = answer.result.state;
      else item.error = { code: answer.error.code, message: answer.error.message };
      deps.onDone?.(strip(item));
    });
  }
  const results = items.map(strip);
  tellRolledBack(told, results, request.releaseId, Math.round(performance.now() - started));
  return { ...plan, ok: problems.length === 0 && results.length > 0 && results.every((r) => r.ok), results };
}

/** What each service on each host ran before: the release it leaves (never the one it returns to). */
async function leftReleases(
  items: ReadonlyArray<ServiceReturn & { client: ReceiverClient }>, targets: ReadonlyArray<{ url: string; hostKey?: string | undefined }>, credentials: Credentials, parallel: number,
): Promise<PreviousReleases> {
  const byHost = new Map<string, { url: string; host: string; hostKey?: string | undefined; services: string[] }>();
  for (const item of items) {
    const entry = byHost.get(item.host) ?? { url: item.url, host: item.host, hostKey: targets.find((t) => t.url === item.url)?.hostKey, services: [] };
    entry.services.push(item.service);
    byHost.set(item.host, entry);
  }
  return await previousReleases([...byHost.values()], credentials, parallel);
}

/** A release left, with the events publisher of it. */
interface LeftRelease {
  id: string;
  events: ReturnType<typeof releaseEventsOf>;
  hosts: string[];
}

/** `release.rollback.started` on each release left whose project is known; answers those told. */
async function tellStarted(items: readonly ServiceReturn[], to: string, deps: BackToReleaseDeps): Promise<LeftRelease[]> {
  const { events } = deps;
  if (!events) return [];
  const ids = [...new Set(items.flatMap((i) => (i.from !== undefined && i.from !== to ? [i.from] : [])))].sort();
  const told: LeftRelease[] = [];
  for (const id of ids) {
    const project = await events.projectOf(id).catch(() => undefined);
    if (project === undefined) {
      deps.onWarning?.(`release ${id} is left, but its project is unknown (no registry record of it, no deployment file): its release events are not published`);
      continue;
    }
    const hosts = [...new Set(items.filter((i) => i.from === id).map((i) => i.host))];
    const publisher = releaseEventsOf({ events: events.sink, source: events.source, credentials: deps.credentials }, id, project);
    publisher.publish('release.rollback.started', { reason: `ferry rollback --to-release ${to}`, hosts, to });
    told.push({ id, events: publisher, hosts });
  }
  return told;
}

/** `release.rolled_back` on each release told: its services' outcomes on its hosts, and where they went. */
function tellRolledBack(told: readonly LeftRelease[], results: readonly ServiceReturn[], to: string, durationMs: number): void {
  for (const left of told) {
    const mine = results.filter((r) => r.from === left.id);
    const outcomes: Record<string, Record<string, ReleaseOutcome>> = {};
    for (const r of mine) (outcomes[r.host] ??= {})[r.service] = r.ok ? 'rolled-back' : 'rollback-failed';
    const failed = mine.filter((r) => !r.ok);
    const error = failed.length === 0 ? undefined : {
      code: 'FERRY_ERR_ROLLBACK_FAILED' as const,
      message: `Not rolled back to ${to}: ${failed.map((r) => `${r.service} on ${r.host} (${r.error?.message ?? 'no answer'})`).join('; ')}`,
    };
    left.events.publish('release.rolled_back', { outcomes, durationMs, ...(error ? { error } : { rolledBackTo: to }) });
  }
}

function strip({ client: _client, ...result }: ServiceReturn & { client: ReceiverClient }): ServiceReturn {
  return result;
}
