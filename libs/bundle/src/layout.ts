import { z } from 'zod';
import { FerryError } from '@ferry/protocol';

/**
 * A bundle is an `oci-archive`: a tar of an OCI image layout (the image spec's layout, v1.1),
 * so skopeo, crane, oras or containerd read its images, plus Ferry's own entries under `ferry/`.
 */
export const OCI_LAYOUT = 'oci-layout';
export const INDEX = 'index.json';
export const RELEASE = 'ferry/release.json';
export const SIGNATURE = 'ferry/signature';
export const OCI_LAYOUT_CONTENT = '{"imageLayoutVersion":"1.0.0"}';

export const MEDIA = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  /** A layer a differential bundle made for a host's inventory leaves out: described by its diff id. */
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
} as const;

/** How OCI tools (skopeo `oci-archive:FILE:NAME`, containerd) find an image in an index. */
export const REF_NAME = 'org.opencontainers.image.ref.name';
/** The image reference the service runs, beside the service name that `REF_NAME` holds. */
export const IMAGE_REF = 'dev.ferry.image.ref';

export const SHA256 = /^sha256:[0-9a-f]{64}$/;
const digest = z.string().regex(SHA256, 'sha256:<64 hex>');

/** The path of a blob in the layout. */
export function blobPath(id: string): string {
  return `blobs/sha256/${id.slice('sha256:'.length)}`;
}

export const DescriptorSchema = z.object({
  mediaType: z.string().max(255),
  digest,
  size: z.int().min(0).max(Number.MAX_SAFE_INTEGER),
  annotations: z.record(z.string().max(255), z.string().max(4096)).optional(),
});
export type Descriptor = z.infer<typeof DescriptorSchema>;

export const IndexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.literal(MEDIA.index).optional(),
  manifests: z.array(DescriptorSchema).min(1).max(1024),
});
export type OciIndex = z.infer<typeof IndexSchema>;

export const ManifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.literal(MEDIA.manifest).optional(),
  config: DescriptorSchema,
  layers: z.array(DescriptorSchema).min(1).max(1000),
});
export type OciManifest = z.infer<typeof ManifestSchema>;

/** Reads a small JSON entry by a schema; anything else is FERRY_ERR_BUNDLE_MALFORMED naming it. */
export function parseEntry<T>(schema: z.ZodType<T>, bytes: Buffer, name: string): T {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw malformed(`${name} is not JSON`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw malformed(`${name}: ${parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

export function malformed(reason: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('FERRY_ERR_BUNDLE_MALFORMED', { message: `Not a usable Ferry bundle: ${reason}`, details: { reason, ...details } });
}

export function digestMismatch(what: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('FERRY_ERR_BUNDLE_DIGEST', { message: `${what} does not match its digest: the bundle was altered or damaged`, details: { entry: what, ...details } });
}
