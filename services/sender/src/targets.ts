import { RegistryClient, type ClientCredentials } from '@ferry/auth';
import { FerryError, SELECTOR_PREFIX, checkSelectorInput } from '@ferry/protocol';

/** One receiver to deploy to; `host` is its registered id when a selector found it. */
export interface ResolvedTarget {
  url: string;
  host?: string;
  /**
   * The fingerprint of the host key the registry enrolled for `host` (selectors only): the key the
   * receiver at `url` must prove, for SignedClient's `hostKey` option.
   */
  hostKey?: string;
}

export interface ResolveOptions {
  /** FERRY_REGISTRY_URL; only needed when a target is a selector. */
  registryUrl?: string | undefined;
  credentials: ClientCredentials;
  /** Injected by unit tests; the global fetch otherwise. */
  fetch?: typeof fetch;
}

/** True for `selector:k=v,…` (docs/protocol.md §2.3), the form of a target the registry resolves. */
export function isSelector(target: string): boolean {
  return target.startsWith(SELECTOR_PREFIX);
}

/**
 * Turns `--to` values (and a deployment document's `targets`) into receiver URLs: a URL passes
 * through as it is; `selector:env=prod,role!=db` becomes the URLs of the registry's online hosts
 * the selector matches. Each URL appears once, in the order first named.
 *
 * @throws FerryError FERRY_ERR_USAGE for a malformed selector, FERRY_ERR_CONFIG for a selector
 *   without a registry, FERRY_ERR_NO_MATCHING_HOSTS when no online host matches,
 *   FERRY_ERR_REGISTRY_UNREACHABLE and the registry's own errors.
 */
export async function resolveTargets(targets: string[], options: ResolveOptions): Promise<ResolvedTarget[]> {
  const resolved: ResolvedTarget[] = [];
  const seen = new Set<string>();
  const add = (target: ResolvedTarget): void => {
    if (seen.has(target.url)) return;
    seen.add(target.url);
    resolved.push(target);
  };
  let registry: RegistryClient | undefined;
  for (const target of targets) {
    if (!isSelector(target)) {
      add({ url: target });
      continue;
    }
    const selector = target.slice(SELECTOR_PREFIX.length);
    checkSelectorInput(`target ${SELECTOR_PREFIX}…`, selector);
    if (!options.registryUrl) {
      throw new FerryError('FERRY_ERR_CONFIG', { message: `${target}: selectors are resolved by the registry; set FERRY_REGISTRY_URL (e.g. http://registry:7702) or name the receivers' URLs` });
    }
    registry ??= new RegistryClient(options.registryUrl, options.credentials, options.fetch ? { fetch: options.fetch } : {});
    const hosts = await registry.hosts({ selector, status: 'online' });
    if (hosts.length === 0) {
      throw new FerryError('FERRY_ERR_NO_MATCHING_HOSTS', { message: `No online host in the registry at ${options.registryUrl} matches ${selector}`, details: { selector } });
    }
    for (const host of [...hosts].sort((a, b) => a.id.localeCompare(b.id))) add({ url: host.url, host: host.id, ...(host.hostKey ? { hostKey: host.hostKey } : {}) });
  }
  return resolved;
}
