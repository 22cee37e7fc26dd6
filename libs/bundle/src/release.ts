import { z } from 'zod';
import { IMAGE_REF_PATTERN, RELEASE_ID_PATTERN, SERVICE_NAME_PATTERN, ServiceSpecSchema } from '@ferry/protocol';
import { SHA256 } from './layout.ts';

export const BUNDLE_SCHEMA = 'ferry.bundle/v1';
/** release.json is small: a release of at most 64 phases of services, and an embedded grant. */
export const RELEASE_MAX_BYTES = 4 * 1024 * 1024;

const digest = z.string().regex(SHA256, 'sha256:<64 hex>');
const instant = z.iso.datetime({ offset: true });

/** Which inventory a differential bundle was made for: its host, when it was taken, and its SHA-256. */
export const InventoryRefSchema = z.strictObject({
  host: z.string().min(1).max(253).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/),
  takenAt: instant,
  digest,
});

/** One layer of an image, as the bundle carries it (or, in a differential bundle, its base does). */
export const LayerSchema = z.strictObject({
  /** The zstd blob's digest and size. */
  digest,
  blobSize: z.int().min(1).max(Number.MAX_SAFE_INTEGER),
  /** The uncompressed tar's digest (the config's `rootfs.diff_ids` entry). */
  diffId: digest,
  /** Bytes of the uncompressed tar: a loader writes its tar header before it decompresses it. */
  size: z.int().min(0).max(Number.MAX_SAFE_INTEGER),
});
export type BundleLayer = z.infer<typeof LayerSchema>;

export const BundleServiceSchema = z.strictObject({
  name: z.string().regex(SERVICE_NAME_PATTERN),
  phase: z.int().min(0).max(63),
  dependsOn: z.array(z.strictObject({ service: z.string().regex(SERVICE_NAME_PATTERN), condition: z.enum(['started', 'healthy']) })).max(64),
  image: z.strictObject({
    /** The reference the receiver tags the image with and runs it by. */
    ref: z.string().min(1).max(255).regex(IMAGE_REF_PATTERN),
    /** The image id: the config blob's digest. */
    id: digest,
    /** The OCI manifest blob's digest, listed in index.json. */
    manifest: digest,
    layers: z.array(LayerSchema).min(1).max(1000),
  }),
  /** The manifest's service spec, as a receiver gets it from `ferry deploy`. */
  spec: ServiceSpecSchema,
});
export type BundleService = z.infer<typeof BundleServiceSchema>;

export const ReleaseDocumentSchema = z.strictObject({
  schema: z.literal(BUNDLE_SCHEMA),
  /** index.json's digest and size: through content addressing it covers every blob. */
  index: z.strictObject({ digest, size: z.int().min(1).max(RELEASE_MAX_BYTES) }),
  release: z.strictObject({
    id: z.string().regex(RELEASE_ID_PATTERN),
    createdAt: instant,
    project: z.string().min(1).max(63),
    phases: z.array(z.strictObject({ name: z.string().min(1).max(63), services: z.array(z.string().regex(SERVICE_NAME_PATTERN)).min(1).max(256) })).min(1).max(64),
    services: z.array(BundleServiceSchema).min(1).max(256),
    /** The deployment file's rollout, as written there (hosts in waves); a local apply has one host. */
    rollout: z.unknown().optional(),
  }),
  /**
   * A differential bundle: the layers it leaves out, which the bundle it was made against carries
   * (`releaseId`, `index`) or the host whose inventory it was made for holds (`inventory`).
   */
  base: z.union([
    z.strictObject({
      releaseId: z.string().regex(RELEASE_ID_PATTERN),
      index: digest,
      /** Diff ids of the layers this bundle names but does not carry. */
      layers: z.array(digest).min(1).max(10_000),
    }),
    z.strictObject({
      inventory: InventoryRefSchema,
      layers: z.array(digest).min(1).max(10_000),
    }),
  ]).optional(),
  provenance: z.strictObject({
    createdAt: instant,
    ferryVersion: z.string().max(64),
    keyId: z.string().max(128),
    /** Base64 of the raw Ed25519 public key whose signature `ferry/signature` is. */
    publicKey: z.string().max(64),
    fingerprint: z.string().max(128),
    git: z.strictObject({ revision: z.string().regex(/^[0-9a-f]{40,64}$/), dirty: z.boolean() }).optional(),
  }),
  /** The customer's grant (a signed `ferry.grant/v1` document): the licence a site applies it under. */
  grant: z.unknown().optional(),
});
export type ReleaseDocument = z.infer<typeof ReleaseDocumentSchema>;
export type ReleaseDocumentInput = z.input<typeof ReleaseDocumentSchema>;

/** What a differential bundle was made against, in words: "release ID" or "the inventory of HOST taken at TIME". */
export function describeBase(base: NonNullable<ReleaseDocument['base']>): string {
  return 'releaseId' in base ? `release ${base.releaseId}` : `the inventory of ${base.inventory.host} taken at ${base.inventory.takenAt}`;
}
