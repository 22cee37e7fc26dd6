import type { RetainedRelease } from './store.ts';

/** One service of a retained release, as `GET /v1/releases` shows it. */
export interface RetainedServiceView {
  service: string;
  image: string;
  imageId: string;
  configHash: string;
  deploymentId: string;
  /** Only releases whose deployment completed here are retained. */
  state: 'COMPLETED';
  /** When that deployment completed. */
  at: string;
  /** Its place in the release, as the signed manifest said. */
  phase: number;
  wave?: number;
}

export interface ReleasesView {
  /** Newest release first. */
  releases: { id: string; services: RetainedServiceView[] }[];
}

/** What this host retains, grouped by release (docs/protocol.md §11.5); env values never appear. */
export function releasesView(retained: readonly RetainedRelease[]): ReleasesView {
  const byId = new Map<string, RetainedServiceView[]>();
  for (const r of retained) {
    const services = byId.get(r.releaseId) ?? [];
    const ref = r.manifest.release;
    services.push({
      service: r.service, image: r.image, imageId: r.imageId, configHash: r.configHash, deploymentId: r.deploymentId,
      state: 'COMPLETED', at: r.at, phase: ref?.phase ?? 0, ...(ref?.wave !== undefined ? { wave: ref.wave } : {}),
    });
    byId.set(r.releaseId, services);
  }
  return {
    releases: [...byId.entries()]
      .sort(([a], [b]) => b.localeCompare(a))
      .map(([id, services]) => ({ id, services: services.sort((a, b) => a.service.localeCompare(b.service)) })),
  };
}
