import type { ImageStore } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import type { Journal } from '../journal/journal.ts';

/** What FERRY_RETAIN_IMAGES defaults to. */
export const DEFAULT_RETAIN_IMAGES = 3;

/**
 * Removes the images Ferry loaded for `service` beyond the newest `keep`, as the journal tells
 * them apart: only images a deployment of this service loaded and tagged, never one that was on
 * the engine before Ferry loaded it, nor one any other service's deployments used. The engine
 * itself refuses to remove an image a container (running or kept for rollback) still uses, or
 * one with several tags; such an image is left alone, and so is every image of a release the
 * service retains (`retained`, releases/store.ts). Resolves to the ids removed.
 */
export async function pruneImages(images: ImageStore, journal: Journal, service: string, keep: number, log: Logger, retained: ReadonlySet<string> = new Set()): Promise<string[]> {
  const all = journal.list();
  const loaded = all.filter((r) => r.kind === 'deploy' && r.service === service && r.states.some((s) => s.state === 'DEPLOYING'));
  const newest: string[] = [];
  for (const record of loaded) if (!newest.includes(record.imageId)) newest.push(record.imageId);
  const untouchable = new Set([
    ...newest.slice(0, keep),
    ...retained,
    ...all.filter((r) => r.service !== service || r.imagePreexisting === true || r.kind !== 'deploy').map((r) => r.imageId),
  ]);
  const removed: string[] = [];
  for (const imageId of newest.slice(keep)) {
    if (untouchable.has(imageId)) continue;
    try {
      if (!(await images.inspect(imageId))) continue;
      await images.remove(imageId);
      removed.push(imageId);
    } catch (err) {
      log.info({ err, imageId, service }, 'old image kept: the engine would not remove it');
    }
  }
  if (removed.length > 0) log.info({ service, removed }, 'removed old images');
  return removed;
}
