import { isFerryError } from '@ferry/protocol';
import { ReceiverClient, type Credentials, type DeploymentRecord, type RetainedRelease } from '../receiver-client.ts';
import { eachLimited } from './limit.ts';

/** Journal records looked at, newest first, to find what runs of a service now. */
const JOURNAL_DEPTH = 20;

/** One host of a release, and the services the release deploys there. */
export interface HostServices {
  url: string;
  /** The host id as proven, the key of the result. */
  host: string;
  hostKey?: string | undefined;
  services: string[];
}

/** previous[host][service]: the retained release that runs of the service on the host now. */
export type PreviousReleases = Record<string, Record<string, string>>;

/**
 * The release each service runs on each host before a release replaces it, so that a halted
 * release goes back to exactly that release (`rollback?toRelease=`). A host retains releases
 * (`GET /v1/releases`), and its journal says which one runs: the newest deployment of the service
 * that completed, or rollback that went back to a release; failed deployments and rollbacks in
 * progress run nothing new. A service that runs what no retained release brought (a plain push, a
 * swap back to the kept container, a service new to the host) has no entry: its rollback is the
 * receiver's swap back to the container it kept. Never throws: a host that cannot say is left out.
 */
export async function previousReleases(hosts: readonly HostServices[], credentials: Credentials, parallel: number): Promise<PreviousReleases> {
  const previous: PreviousReleases = {};
  await eachLimited(hosts, parallel, async (h) => {
    const client = new ReceiverClient({ url: h.url, credentials, audience: h.host, ...(h.hostKey ? { hostKey: h.hostKey } : {}) });
    try {
      const retained = await client.releases();
      for (const service of h.services) {
        const kept = retainedOf(retained, service);
        if (kept.size === 0) continue;
        const running = runningRelease(await client.deployments({ service, limit: JOURNAL_DEPTH }), kept);
        if (running !== undefined) (previous[h.host] ??= {})[service] = running;
      }
    } catch (err) {
      // A receiver without retained releases (an older one answers 404), or one that is away now:
      // its services go back through the kept container, as before releases were retained.
      if (!isFerryError(err)) throw err;
    }
  });
  return previous;
}

/** The ids of the releases a host retains of `service`. */
export function retainedOf(retained: readonly RetainedRelease[], service: string): Set<string> {
  return new Set(retained.filter((release) => release.services.some((s) => s.service === service)).map((release) => release.id));
}

/**
 * The retained release a service's journal (newest first) says runs now, if one does: the newest
 * record that changed what runs decides.
 */
export function runningRelease(records: readonly DeploymentRecord[], kept: ReadonlySet<string>): string | undefined {
  for (const record of records) {
    if (record.kind === 'deploy' && record.state === 'COMPLETED') {
      const id = record.release?.id;
      return id !== undefined && kept.has(id) ? id : undefined;
    }
    // Taken off the host: nothing of it runs.
    if (record.kind === 'remove' && record.state === 'ROLLED_BACK') return undefined;
    if (record.kind === 'rollback' && record.state === 'ROLLED_BACK') {
      // A swap back to the kept container says nothing of which release that was.
      return record.toRelease !== undefined && kept.has(record.toRelease) ? record.toRelease : undefined;
    }
  }
  return undefined;
}

/** The release a release replaced on its hosts (ReleaseRecord.previousId): the newest one they ran. */
export function newestOf(previous: PreviousReleases): string | undefined {
  const ids = Object.values(previous).flatMap((byService) => Object.values(byService));
  return ids.length === 0 ? undefined : ids.reduce((a, b) => (a > b ? a : b));
}
