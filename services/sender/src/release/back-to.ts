import { FerryError, isFerryError } from '@ferry/protocol';
import { ReceiverClient, type Credentials } from '../receiver-client.ts';
import { resolveTargets } from '../targets.ts';
import { eachLimited } from './limit.ts';
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
}

/** One service to return on one host: its place in the release's order decides when. */
export interface ServiceReturn {
  url: string;
  host: string;
  service: string;
  /** Its phase in the release, counted from 0. */
  phase: number;
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
  const plan: ReturnPlan = { releaseId: request.releaseId, hosts, services: items.map(({ url, host, service, phase, imageId }) => ({ url, host, service, phase, imageId })), problems };
  deps.onPlanned?.(plan);

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
  return { ...plan, ok: problems.length === 0 && results.length > 0 && results.every((r) => r.ok), results };
}

function strip({ client: _client, ...result }: ServiceReturn & { client: ReceiverClient }): ServiceReturn {
  return result;
}
