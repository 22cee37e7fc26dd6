import { statfs } from 'node:fs/promises';
import { availableParallelism, totalmem } from 'node:os';
import { toFerryError, type ContainerInspect, type ContainerSummary } from '@ferry/docker';
import { LABELS, nanoCpus, type CapacityReport } from '@ferry/protocol';

/** Share of the engine's memory the default budget leaves to the host itself (its OS, the engine, Ferry). */
const DEFAULT_MEMORY_RESERVE = 0.1;

/** The part of a Docker client capacity reads (@ferry/docker's DockerEngine fits it). */
export interface CapacityEngine {
  info(): Promise<unknown>;
  listContainers(query: { filters: { label: string[]; status: string[] } }): Promise<ContainerSummary[]>;
  inspectContainer(id: string): Promise<ContainerInspect>;
}

export interface CapacityDeps {
  docker: CapacityEngine;
  hostId: string;
  dataDir: string;
  /** FERRY_BUDGET_MEMORY / FERRY_BUDGET_CPUS; undefined: 90 % of the memory, every CPU. */
  budget: { memoryBytes: number | undefined; cpus: number | undefined };
  /**
   * Whether the engine's data root is a path of this machine (a local socket): the root of an
   * engine reached over TCP is another machine's, and this one's statfs would answer for the wrong disk.
   */
  localEngine: boolean;
}

/**
 * What `GET /v1/capacity` answers. The engine's machine is the one containers run on, so its
 * memory and CPUs (not the receiver's, which may be elsewhere) set the default budget; the
 * receiver's own are the fallback when the engine does not say. Committed is what the running
 * Ferry containers' limits add up to: a container without a limit counts as 0.
 */
export async function readCapacity(deps: CapacityDeps): Promise<CapacityReport> {
  const engine = await engineOf(deps.docker);
  const host = { memoryBytes: totalmem(), cpus: availableParallelism() };
  const total = engine ?? host;
  const engineRoot = engine?.rootDir && deps.localEngine ? await diskOf(engine.rootDir) : undefined;
  const dataDir = await diskOf(deps.dataDir);
  return {
    hostId: deps.hostId, host, ...(engine ? { engine } : {}),
    disk: { dataDir: dataDir ?? { path: deps.dataDir, freeBytes: 0, totalBytes: 0 }, ...(engineRoot ? { engineRoot } : {}) },
    budget: {
      memoryBytes: deps.budget.memoryBytes ?? Math.floor(total.memoryBytes * (1 - DEFAULT_MEMORY_RESERVE)),
      cpus: deps.budget.cpus ?? total.cpus,
    },
    committed: await committedOf(deps.docker),
  };
}

async function engineOf(docker: CapacityEngine): Promise<CapacityReport['engine']> {
  let info: { MemTotal?: unknown; NCPU?: unknown; DockerRootDir?: unknown };
  try {
    info = await docker.info() as typeof info;
  } catch (err) {
    throw toFerryError(err, 'FERRY_ERR_DOCKER', 'read the engine info');
  }
  if (typeof info.MemTotal !== 'number' || typeof info.NCPU !== 'number' || info.MemTotal <= 0 || info.NCPU <= 0) return undefined;
  return { memoryBytes: info.MemTotal, cpus: info.NCPU, ...(typeof info.DockerRootDir === 'string' ? { rootDir: info.DockerRootDir } : {}) };
}

async function diskOf(path: string): Promise<CapacityReport['disk']['dataDir'] | undefined> {
  const stats = await statfs(path).catch(() => undefined);
  return stats ? { path, freeBytes: stats.bavail * stats.bsize, totalBytes: stats.blocks * stats.bsize } : undefined;
}

/**
 * The limits of every running container Ferry deployed, by its `ferry.service` label. A swap's
 * new container counts beside the one it replaces while both run, as both do take their share.
 */
async function committedOf(docker: CapacityEngine): Promise<CapacityReport['committed']> {
  let containers: ContainerSummary[];
  try {
    containers = await docker.listContainers({ filters: { label: [LABELS.service], status: ['running'] } });
  } catch (err) {
    throw toFerryError(err, 'FERRY_ERR_DOCKER', 'list the containers');
  }
  const byService = new Map<string, { memoryBytes: number; nano: number }>();
  for (const container of containers) {
    const service = container.Labels?.[LABELS.service];
    if (!service) continue;
    // Gone between the list and the inspect: it commits nothing any more.
    const inspect = await docker.inspectContainer(container.Id).catch(() => undefined);
    const limits = inspect?.HostConfig ?? {};
    const sum = byService.get(service) ?? { memoryBytes: 0, nano: 0 };
    sum.memoryBytes += typeof limits.Memory === 'number' ? limits.Memory : 0;
    sum.nano += typeof limits.NanoCpus === 'number' ? limits.NanoCpus : 0;
    byService.set(service, sum);
  }
  const services = [...byService.entries()].sort(([a], [b]) => a.localeCompare(b))
    .map(([service, s]) => ({ service, memoryBytes: s.memoryBytes, cpus: s.nano / 1e9 }));
  const nano = services.reduce((n, s) => n + nanoCpus(s.cpus), 0);
  return { memoryBytes: services.reduce((n, s) => n + s.memoryBytes, 0), cpus: nano / 1e9, services };
}
