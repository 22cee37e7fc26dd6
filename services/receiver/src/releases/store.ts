import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeRecordFile } from '@ferry/durable';
import type { Logger } from '@ferry/log';
import { FerryError, RELEASE_ID_PATTERN, SERVICE_NAME_PATTERN, parseManifest, type Manifest } from '@ferry/protocol';

/** What FERRY_RETAIN_RELEASES defaults to. */
export const DEFAULT_RETAIN_RELEASES = 5;

/** One release of one service this host keeps to go back to. */
export interface RetainedRelease {
  releaseId: string;
  service: string;
  /** The deployment that brought it here and completed. */
  deploymentId: string;
  image: string;
  imageId: string;
  configHash: string;
  /** When that deployment completed. */
  at: string;
  /**
   * The manifest as it was verified and deployed, env values included: what a rollback to this
   * release runs again. Kept as the upload sessions keep theirs, 0600 in a 0700 directory.
   */
  manifest: Manifest;
}

interface ServiceFile {
  version: 1;
  service: string;
  /** Newest release first. */
  releases: RetainedRelease[];
}

const FILE = /^([a-z0-9][a-z0-9_-]{0,62})\.json$/;

/** `404 FERRY_ERR_RELEASE_NOT_RETAINED`: the answer to a rollback this host cannot make. */
export function releaseNotRetained(service: string, releaseId: string, reason = 'this host does not keep it'): FerryError {
  return new FerryError('FERRY_ERR_RELEASE_NOT_RETAINED', {
    message: `Release ${releaseId} of ${service} is not retained here: ${reason}`, details: { service, releaseId },
  });
}

/**
 * The releases each service keeps (FERRY_RETAIN_RELEASES), one file per service under
 * `<dataDir>/releases/<service>.json`, replaced atomically. Only a service name, checked against
 * the manifest's own pattern, ever becomes a file name; a release id is only ever a value in a
 * file. Held in memory, read back when the receiver starts; a file that does not check out is
 * ignored with a warning, never trusted in part. The deployer's per-service lock serialises the
 * writes of one service's file.
 */
export class ReleaseStore {
  readonly #dir: string;
  readonly #byService = new Map<string, RetainedRelease[]>();

  private constructor(dir: string) {
    this.#dir = dir;
  }

  static async open(dir: string, log: Logger): Promise<ReleaseStore> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const store = new ReleaseStore(dir);
    for (const name of await readdir(dir)) {
      if (name.endsWith('.json.tmp')) {
        await rm(join(dir, name), { force: true });
        continue;
      }
      const service = FILE.exec(name)?.[1];
      if (!service) continue;
      const releases = parseFile(service, await readFile(join(dir, name), 'utf8').catch(() => ''));
      if (releases) store.#byService.set(service, releases);
      else log.warn({ file: name }, 'retained releases file does not check out; ignored');
    }
    return store;
  }

  /** Every retained release of every service, newest release first, then by service. */
  list(): RetainedRelease[] {
    return [...this.#byService.values()].flat()
      .sort((a, b) => b.releaseId.localeCompare(a.releaseId) || a.service.localeCompare(b.service))
      .map((r) => structuredClone(r));
  }

  get(service: string, releaseId: string): RetainedRelease | undefined {
    const found = this.#byService.get(service)?.find((r) => r.releaseId === releaseId);
    return found && structuredClone(found);
  }

  /** The images of a service's retained releases: pruning leaves them alone. */
  imageIds(service: string): Set<string> {
    return new Set((this.#byService.get(service) ?? []).map((r) => r.imageId));
  }

  /**
   * Keeps `release` (replacing one of the same id: a release deployed again) and the newest
   * `keep` - 1 others of its service; resolves to the ones dropped, whose images may then go.
   */
  async retain(release: RetainedRelease, keep: number): Promise<RetainedRelease[]> {
    const { service } = release;
    if (!SERVICE_NAME_PATTERN.test(service) || !RELEASE_ID_PATTERN.test(release.releaseId)) throw new Error('not a retainable release');
    const others = (this.#byService.get(service) ?? []).filter((r) => r.releaseId !== release.releaseId);
    const all = [release, ...others].sort((a, b) => b.releaseId.localeCompare(a.releaseId));
    const kept = all.slice(0, Math.max(1, keep));
    const file: ServiceFile = { version: 1, service, releases: kept };
    await writeRecordFile(this.#dir, service, file);
    this.#byService.set(service, structuredClone(kept));
    return all.slice(kept.length);
  }
}

/** A service's file as written by retain(), or undefined when anything in it is not. */
function parseFile(service: string, text: string): RetainedRelease[] | undefined {
  let file: Partial<ServiceFile>;
  try {
    file = JSON.parse(text) as Partial<ServiceFile>;
  } catch {
    return undefined;
  }
  if (file.version !== 1 || file.service !== service || !Array.isArray(file.releases)) return undefined;
  const releases: RetainedRelease[] = [];
  for (const entry of file.releases as unknown[]) {
    const release = parseRelease(service, entry);
    if (!release) return undefined;
    releases.push(release);
  }
  return releases;
}

function parseRelease(service: string, value: unknown): RetainedRelease | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const r = value as Record<string, unknown>;
  const parsed = parseManifest(r.manifest);
  if (!parsed.ok) return undefined;
  const { manifest } = parsed;
  const strings = [r.deploymentId, r.image, r.imageId, r.configHash, r.at].every((v) => typeof v === 'string');
  if (!strings || typeof r.releaseId !== 'string' || !RELEASE_ID_PATTERN.test(r.releaseId)) return undefined;
  // The entry and the signed manifest it keeps must agree, or neither is believed.
  if (r.service !== service || manifest.service.name !== service || manifest.release?.id !== r.releaseId) return undefined;
  if (manifest.image.id !== r.imageId || manifest.image.ref !== r.image || manifest.deploymentId !== r.deploymentId) return undefined;
  return {
    releaseId: r.releaseId, service, deploymentId: r.deploymentId, image: r.image, imageId: r.imageId,
    configHash: r.configHash as string, at: r.at as string, manifest,
  };
}
