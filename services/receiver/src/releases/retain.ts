import type { Logger } from '@ferry/log';
import { configHash, type DeploymentResult, type Manifest } from '@ferry/protocol';
import { lowOnSpace, type DiskGuard } from '../deploy/disk.ts';
import { DEFAULT_RETAIN_RELEASES, type ReleaseStore } from './store.ts';

/** Releases a service keeps while the data disk is below its reserve: the one that runs and the one before. */
export const RETAINED_WHEN_LOW = 2;

export interface RetainDeps {
  releases: ReleaseStore;
  /** FERRY_RETAIN_RELEASES. */
  keep?: number;
  disk?: DiskGuard;
  logger: Logger;
}

/**
 * Files a completed deployment under the release its signed manifest names, keeping the service's
 * newest FERRY_RETAIN_RELEASES (fewer when the data disk is short of its reserve: old releases'
 * images are what pruning may then remove). Never fails the deployment, which has completed:
 * a release that could not be kept is said in the log, and a rollback to it answers 404.
 */
export async function retainRelease(deps: RetainDeps, manifest: Manifest, result: DeploymentResult): Promise<void> {
  const ref = manifest.release;
  if (!ref || result.state !== 'COMPLETED') return;
  const service = manifest.service.name;
  try {
    const configured = deps.keep ?? DEFAULT_RETAIN_RELEASES;
    const low = deps.disk ? await lowOnSpace(deps.disk) : false;
    const keep = low ? Math.min(configured, RETAINED_WHEN_LOW) : configured;
    const dropped = await deps.releases.retain({
      releaseId: ref.id, service, deploymentId: manifest.deploymentId, image: manifest.image.ref, imageId: manifest.image.id,
      configHash: configHash(manifest), at: new Date().toISOString(), manifest,
    }, keep);
    if (low) deps.logger.warn({ service, keep }, 'the data disk is below its reserve: fewer releases retained');
    if (dropped.length > 0) deps.logger.info({ service, dropped: dropped.map((r) => r.releaseId) }, 'older releases no longer retained');
  } catch (err) {
    deps.logger.error({ err, service, releaseId: ref.id }, 'could not retain the release');
  }
}
