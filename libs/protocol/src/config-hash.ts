import { createHash } from 'node:crypto';
import type { Manifest } from './manifest.ts';

/**
 * What the container was asked to be, hashed: the same hash later means the same config, which is
 * how drift is told apart from a legitimate redeploy. The receiver puts it in the container label
 * `ferry.config-hash`; the sender records the same value as desired state, so both must hash the
 * manifest as `ManifestSchema` parsed it (defaults applied).
 */
export function configHash(manifest: Manifest): string {
  const canonical = stableJson({ image: manifest.image.ref, imageId: manifest.image.id, service: manifest.service });
  return `sha256:${createHash('sha256').update(canonical).digest('hex')}`;
}

/** JSON with object keys sorted at every depth, so equal configs hash equal whatever their order. */
function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}
