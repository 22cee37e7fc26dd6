import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Compression } from '@ferry/protocol';
import { omittableLayers } from './layer-filter.ts';
import { parseTarget, type TargetLayers } from './receiver-client.ts';

/**
 * The diff ids one package may leave out for all these targets: what every one of them holds, so
 * the package carries the union of what any target lacks (one package, compressed and hashed once).
 */
export function layersToOmit(diffIds: readonly string[], answers: readonly TargetLayers[]): string[] {
  if (answers.length === 0) return [];
  return omittableLayers(diffIds, Math.min(...answers.map((answer) => answer.present)));
}

/** `--compression auto|zstd|gzip|none`. */
export type CompressionChoice = Compression | 'auto';

/**
 * `auto`: no compression when every target is on a loopback or private link (the link is faster
 * than zstd, so compressing only costs time), zstd otherwise. A target named by host name counts
 * as private only if every address it resolves to is.
 */
export async function resolveCompression(choice: CompressionChoice, urls: readonly string[]): Promise<Compression> {
  if (choice !== 'auto') return choice;
  const local = await Promise.all(urls.map(async (url) => isPrivateHost(parseTarget(url).hostname)));
  return local.length > 0 && local.every(Boolean) ? 'none' : 'zstd';
}

/**
 * The compression of one package, given the link's (from {@link resolveCompression}): `auto`
 * compresses with zstd, even on a fast link, a package that leaves out most of the image's
 * layers. Such a warm push sends a few top layers, which zstd packs in a fraction of a second,
 * and then moves about what a registry's gzip would; a package with most of the image is where
 * compressing costs more time than a fast link gains.
 */
export function packageCompression(choice: CompressionChoice, link: Compression, omittedLayers: readonly string[], totalLayers: number): Compression {
  return choice === 'auto' && omittedLayers.length * 2 > totalLayers ? 'zstd' : link;
}

export async function isPrivateHost(hostname: string): Promise<boolean> {
  if (isIP(hostname) !== 0) return isPrivateAddress(hostname);
  if (hostname === 'localhost' || hostname.endsWith('.localhost')) return true;
  try {
    const addresses = await lookup(hostname, { all: true });
    return addresses.length > 0 && addresses.every((entry) => isPrivateAddress(entry.address));
  } catch {
    return false;
  }
}

/** Loopback, RFC 1918, link-local (IPv4 and IPv6), unique local IPv6, and IPv4-mapped forms of them. */
export function isPrivateAddress(address: string): boolean {
  const lower = address.toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower)?.[1];
  if (mapped !== undefined) return isPrivateAddress(mapped);
  if (isIP(lower) === 4) {
    const [a = -1, b = -1] = lower.split('.').map(Number);
    return a === 127 || a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 169 && b === 254);
  }
  if (isIP(lower) === 6) {
    return lower === '::1' || /^f[cd][0-9a-f]{2}:/.test(lower) || /^fe[89ab][0-9a-f]:/.test(lower);
  }
  return false;
}
