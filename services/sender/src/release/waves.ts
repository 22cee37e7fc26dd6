import { RegistryClient } from '@ferry/auth';
import { FerryError, matchesSelector, parseSelector } from '@ferry/protocol';
import type { Rollout, WavePause } from '../deployfile/index.ts';
import type { Credentials } from '../receiver-client.ts';

/** One wave of a release: the hosts it deploys to (by host id, or URL until one proved its id). */
export interface Wave {
  name: string;
  hosts: string[];
  /** After this wave, before the next. */
  pause?: WavePause;
}

/** A host of the release, in the order the document's targets first name it. */
export interface ReleaseHost {
  key: string;
  url: string;
}

/**
 * The release's hosts in waves, as `rollout:` says: each wave takes, of the hosts no earlier wave
 * took, the first N, the first N% of all the hosts (rounded up), the ones whose registry labels
 * match, or the ones named; the hosts left over form a last wave. A wave that takes no host is
 * left out. Without `rollout:`, one wave of every host.
 *
 * @throws FerryError FERRY_ERR_CONFIG when a wave picks hosts by label and there is no registry to
 *   ask them of; the registry's own errors.
 */
export async function planWaves(rollout: Rollout | undefined, hosts: readonly ReleaseHost[], registry: { url?: string | undefined; credentials: Credentials }): Promise<Wave[]> {
  if (!rollout) return hosts.length > 0 ? [{ name: 'wave-1', hosts: hosts.map((h) => h.key) }] : [];
  let labels: Map<string, Record<string, string>> | undefined;
  if (rollout.waves.some((w) => 'selector' in w.hosts)) {
    if (!registry.url) {
      throw new FerryError('FERRY_ERR_CONFIG', { message: 'rollout: a wave picks hosts by their labels, which the registry knows; set FERRY_REGISTRY_URL, or name the hosts or count them' });
    }
    const records = await new RegistryClient(registry.url, registry.credentials).hosts();
    labels = new Map(records.map((h) => [h.id, h.labels]));
  }
  let left = [...hosts];
  const waves: Wave[] = [];
  const names = new Set(rollout.waves.flatMap((w) => (w.name ? [w.name] : [])));
  rollout.waves.forEach((spec, i) => {
    const how = spec.hosts;
    let taken: ReleaseHost[];
    if ('count' in how) taken = left.slice(0, how.count);
    else if ('percent' in how) taken = left.slice(0, Math.max(1, Math.ceil((how.percent * hosts.length) / 100)));
    else if ('selector' in how) {
      const selector = parseSelector(how.selector);
      taken = left.filter((h) => matchesSelector(selector, labels?.get(h.key) ?? {}));
    } else taken = left.filter((h) => how.names.includes(h.key) || how.names.includes(h.url));
    left = left.filter((h) => !taken.includes(h));
    if (taken.length === 0) return;
    waves.push({ name: spec.name ?? `wave-${i + 1}`, hosts: taken.map((h) => h.key), ...(spec.pause ? { pause: spec.pause } : {}) });
  });
  if (left.length > 0) {
    const name = `wave-${rollout.waves.length + 1}`;
    waves.push({ name: names.has(name) ? `${name}-rest` : name, hosts: left.map((h) => h.key) });
  }
  return waves;
}
