import type { Compression } from '@ferry/protocol';
import { omittableLayers } from './layer-filter.ts';
import type { TargetLayers } from './receiver-client.ts';

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
