import { createHash } from 'node:crypto';
import { z } from 'zod';
import { FerryError } from '@ferry/protocol';
import type { BaseLayers } from './create.ts';
import { SHA256 } from './layout.ts';
import type { BundleLayer } from './release.ts';

/**
 * A host's inventory: the layers its engine holds, as the chains of diff ids of its images. It is
 * what `ferry inventory` writes on a site no network reaches, carried out on removable media, for
 * `ferry bundle create --for-inventory` to leave out of the next bundle every layer the site holds.
 * It names no image and no tag: only layer digests leave the site.
 */
export const INVENTORY_SCHEMA = 'ferry.inventory/v1';
export const INVENTORY_MAX_BYTES = 16 * 1024 * 1024;

const digest = z.string().regex(SHA256, 'sha256:<64 hex>');

export const InventorySchema = z.strictObject({
  schema: z.literal(INVENTORY_SCHEMA),
  host: z.string().min(1).max(253).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/),
  takenAt: z.iso.datetime({ offset: true }),
  /** Each image's layers, bottom first: the engine holds a layer under the layers below it. */
  chains: z.array(z.array(digest).min(1).max(1000)).max(100_000),
});
export type Inventory = z.infer<typeof InventorySchema>;

/** The engine's images, as far as an inventory needs them. */
export interface InventorySource {
  listIds(): Promise<string[]>;
  inspect(ref: string): Promise<{ diffIds: string[] } | undefined>;
}

/** What the engine holds now; each chain once, in a stable order. */
export async function takeInventory(images: InventorySource, host: string, now = new Date()): Promise<Inventory> {
  const chains = new Map<string, string[]>();
  for (const id of await images.listIds()) {
    const diffIds = (await images.inspect(id))?.diffIds ?? [];
    if (diffIds.length > 0) chains.set(diffIds.join(' '), diffIds);
  }
  return InventorySchema.parse({
    schema: INVENTORY_SCHEMA, host, takenAt: now.toISOString(),
    chains: [...chains.keys()].sort().map((key) => chains.get(key)),
  });
}

/** An inventory file's bytes, checked, with the digest a bundle made for it records. */
export function parseInventory(bytes: Buffer, name: string): { inventory: Inventory; digest: string } {
  const refuse = (why: string): FerryError => new FerryError('FERRY_ERR_BAD_INVENTORY', { message: `${name} is not a host inventory written by ferry inventory: ${why}` });
  if (bytes.length > INVENTORY_MAX_BYTES) throw refuse(`larger than ${INVENTORY_MAX_BYTES} bytes`);
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw refuse('not JSON');
  }
  const parsed = InventorySchema.safeParse(json);
  if (!parsed.success) throw refuse(parsed.error.issues.slice(0, 3).map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; '));
  return { inventory: parsed.data, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` };
}

/**
 * The base of a bundle made for an inventory: every layer the host holds may be left out. Such a
 * layer has no blob to describe it, so the bundle describes it uncompressed, by its diff id and
 * its tar's size, which the bundle's maker reads when it meets the layer (undefined here).
 */
export function inventoryBase(inventory: Inventory, digest: string): BaseLayers {
  const layers = new Map<string, BundleLayer | undefined>();
  for (const chain of inventory.chains) for (const diffId of chain) layers.set(diffId, undefined);
  return { from: { inventory: { host: inventory.host, takenAt: inventory.takenAt, digest } }, layers };
}
