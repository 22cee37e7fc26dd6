import type { ActualReport, HostRegistration } from '@ferry/auth';
import { statusOf, toFerryError, type ContainerInspect, type ContainerSummary } from '@ferry/docker';
import { LABELS } from '@ferry/protocol';
import { isContainerdStore } from '../layers/index.ts';

/** The part of a Docker client the registration reads (@ferry/docker's DockerEngine fits it). */
export interface EngineReader {
  info(): Promise<unknown>;
  listContainers(query: { all: boolean; filters: { label: string[] } }): Promise<ContainerSummary[]>;
  inspectContainer(nameOrId: string): Promise<Pick<ContainerInspect, 'RestartCount'>>;
}

/** Inspects under way at once: a heartbeat must not queue a burst of requests on the engine. */
const INSPECT_CONCURRENCY = 4;

/**
 * What runs here for each Ferry-managed service: the container named after the service (not the
 * `.ferry-previous` / `.ferry-next` ones a swap keeps), with what its `ferry.*` labels say and how
 * often its restart policy restarted it. The list's `State` alone cannot tell a crash loop: it
 * alternates between `restarting` and `running`; the count, which only an inspect gives, can. One
 * inspect per service container, a few at a time. A service whose container vanished is simply
 * absent: the registry, which knows the desired services, reports it `missing`.
 */
export async function actualServices(docker: Pick<EngineReader, 'listContainers' | 'inspectContainer'>): Promise<ActualReport[]> {
  let containers: ContainerSummary[];
  try {
    containers = await docker.listContainers({ all: true, filters: { label: [LABELS.service] } });
  } catch (err) {
    throw toFerryError(err, 'FERRY_ERR_DOCKER', 'list the containers');
  }
  const reports: ActualReport[] = [];
  for (const container of containers) {
    const labels = container.Labels ?? {};
    const service = labels[LABELS.service];
    if (!service || !(container.Names ?? []).includes(`/${service}`)) continue;
    const image = labels[LABELS.imageRef] ?? container.Image;
    const imageId = container.ImageID ?? labels[LABELS.imageId];
    reports.push({
      service, containerId: container.Id, state: container.State ?? 'unknown',
      ...(image ? { image } : {}), ...(imageId ? { imageId } : {}),
      ...(labels[LABELS.configHash] ? { configHash: labels[LABELS.configHash] } : {}),
      ...(labels[LABELS.deploymentId] ? { deploymentId: labels[LABELS.deploymentId] } : {}),
    });
  }
  await inBatches(reports, INSPECT_CONCURRENCY, async (report) => {
    if (report.containerId === undefined) return;
    const restarts = await restartCount(docker, report.containerId);
    if (restarts !== undefined) report.restarts = restarts;
  });
  return reports.sort((a, b) => a.service.localeCompare(b.service));
}

/** Undefined when the container went away since the list (its absence shows next time) or Docker gave no count. */
async function restartCount(docker: Pick<EngineReader, 'inspectContainer'>, id: string): Promise<number | undefined> {
  let info: Pick<ContainerInspect, 'RestartCount'>;
  try {
    info = await docker.inspectContainer(id);
  } catch (err) {
    if (statusOf(err) === 404) return undefined;
    throw toFerryError(err, 'FERRY_ERR_DOCKER', `inspect container ${id}`);
  }
  const count = info.RestartCount;
  return typeof count === 'number' && Number.isInteger(count) && count >= 0 ? count : undefined;
}

async function inBatches<T>(items: readonly T[], size: number, run: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(run));
}

/**
 * The list for a heartbeat, or undefined while a deployment is under way: its containers are then
 * mid-swap (created, renamed, stopped), and the registry would read the swap itself as drift. A
 * deployment that began during the read drops the list too.
 */
export async function settledServices(read: () => Promise<ActualReport[]>, changing: () => boolean): Promise<ActualReport[] | undefined> {
  if (changing()) return undefined;
  const services = await read();
  return changing() ? undefined : services;
}

/** The engine facts a registration carries: version, storage driver and image store kind. */
export async function engineFacts(docker: Pick<EngineReader, 'info'>): Promise<HostRegistration['engine']> {
  let info: { ServerVersion?: unknown; Driver?: unknown; DriverStatus?: unknown };
  try {
    info = await docker.info() as typeof info;
  } catch (err) {
    throw toFerryError(err, 'FERRY_ERR_DOCKER', 'read the engine info');
  }
  return {
    version: typeof info.ServerVersion === 'string' ? info.ServerVersion : 'unknown',
    storageDriver: typeof info.Driver === 'string' ? info.Driver : 'unknown',
    imageStore: isContainerdStore(info) ? 'containerd' : 'legacy',
  };
}
