import { z } from 'zod';
import { DIGEST_PATTERN, IMAGE_ID_PATTERN, SERVICE_NAME_PATTERN } from './wire.ts';

export const COMPRESSIONS = ['zstd', 'gzip', 'none'] as const;
export type Compression = (typeof COMPRESSIONS)[number];

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Docker's reference grammar without digests: `[domain[:port]/]path[:tag]`. */
const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
export const IMAGE_REF_PATTERN = new RegExp(
  `^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?/)?${PATH_COMPONENT}(?:/${PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$`,
);

export const HealthCheckSchema = z.strictObject({
  type: z.literal('http'),
  /** Probed by the receiver, so it is an address as seen from the target host. */
  url: z.url({ protocol: /^https?$/ }),
  expectStatus: z.int().min(100).max(599).optional(),
  intervalMs: z.int().min(50).max(60_000).default(1000),
  timeoutMs: z.int().min(50).max(60_000).default(2000),
  retries: z.int().min(1).max(1000).default(30),
  startPeriodMs: z.int().min(0).max(600_000).default(0),
});
export type HealthCheck = z.infer<typeof HealthCheckSchema>;

export const ServiceSpecSchema = z.strictObject({
  name: z.string().regex(SERVICE_NAME_PATTERN, 'lowercase letters, digits, "-" and "_", at most 63'),
  env: z.record(z.string().regex(ENV_NAME, 'an environment variable name'), z.string()).default({}),
  network: z.enum(['host', 'bridge', 'none']).default('bridge'),
  health: HealthCheckSchema.optional(),
});
export type ServiceSpec = z.infer<typeof ServiceSpecSchema>;

export const ManifestSchema = z.strictObject({
  schema: z.literal('ferry.manifest/v1'),
  deploymentId: z.uuid(),
  createdAt: z.iso.datetime(),
  image: z.strictObject({
    /** The reference as pushed; the receiver tags the loaded image with it and runs it by this name. */
    ref: z.string().min(1).max(255).regex(IMAGE_REF_PATTERN, '[registry[:port]/]name[:tag], lowercase name, no digest'),
    id: z.string().regex(IMAGE_ID_PATTERN, 'sha256:<64 hex>'),
    diffIds: z.array(z.string().regex(IMAGE_ID_PATTERN, 'sha256:<64 hex>')).min(1),
  }),
  package: z.strictObject({
    format: z.literal('docker-archive'),
    compression: z.enum(COMPRESSIONS),
    size: z.int().min(1),
    digest: z.string().regex(DIGEST_PATTERN, 'blake3:<64 hex>'),
  }),
  service: ServiceSpecSchema,
});
export type Manifest = z.infer<typeof ManifestSchema>;
/** What a client writes: fields with defaults may be left out. */
export type ManifestInput = z.input<typeof ManifestSchema>;

export type ManifestResult = { ok: true; manifest: Manifest } | { ok: false; problems: string[] };

export function parseManifest(value: unknown): ManifestResult {
  const result = ManifestSchema.safeParse(value);
  if (result.success) return { ok: true, manifest: result.data };
  return {
    ok: false,
    problems: result.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`),
  };
}
