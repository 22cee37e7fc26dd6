/** Paths, headers and limits of the wire contract; docs/protocol.md is their normative description. */

export const PATHS = {
  healthz: '/healthz',
  readyz: '/readyz',
  metrics: '/metrics',
  packages: '/v1/packages',
  uploads: '/v1/uploads',
  streams: '/v1/streams',
  deployments: '/v1/deployments',
  services: '/v1/services',
  releases: '/v1/releases',
  capacity: '/v1/capacity',
  layers: '/v1/layers',
  identity: '/v1/identity',
} as const;

export const HEADERS = {
  keyId: 'x-ferry-key-id',
  timestamp: 'x-ferry-timestamp',
  nonce: 'x-ferry-nonce',
  contentDigest: 'x-ferry-content-digest',
  signature: 'x-ferry-signature',
  audience: 'x-ferry-audience',
  grant: 'x-ferry-grant',
  requestId: 'x-request-id',
  uploadOffset: 'upload-offset',
  uploadLength: 'upload-length',
  uploadExpires: 'upload-expires',
} as const;

/** The first line of every canonical string: a change of signing rules gets a new label. */
export const SIGNATURE_SCHEME = 'FERRY-ED25519-V1';

/** Accepted distance between the signed timestamp and the receiver's clock. */
export const TIMESTAMP_WINDOW_SECONDS = 300;

export const MANIFEST_MAX_BYTES = 64 * 1024;

/** Media type of a resumable upload's PATCH body (as in tus and the IETF resumable uploads draft). */
export const UPLOAD_PART_MEDIA_TYPE = 'application/offset+octet-stream';

/** Largest PATCH body a receiver takes in one request; a bigger one invalidates the upload (413). */
export const UPLOAD_MAX_PART_BYTES = 512 * 1024 ** 2;

export const DIGEST_PATTERN = /^blake3:[0-9a-f]{64}$/;
export const SERVICE_NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const IMAGE_ID_PATTERN = /^sha256:[0-9a-f]{64}$/;

/** Container labels Ferry sets on what it runs; drift detection and rollback read them back. */
export const LABELS = {
  service: 'ferry.service',
  deploymentId: 'ferry.deployment-id',
  configHash: 'ferry.config-hash',
  imageRef: 'ferry.image-ref',
  imageId: 'ferry.image-id',
  /**
   * A routed container's route, drain and health check (JSON, route-label.ts): what a
   * start-first switch to it needs when no manifest is at hand (a manual rollback, a recovery).
   */
  route: 'ferry.route',
} as const;

/**
 * Largest part of a streamed upload (docs/protocol.md §10.6). The receiver holds a part in memory
 * until its signed digest is checked, so this bounds its memory per stream.
 */
export const STREAM_MAX_PART_BYTES = 16 * 1024 ** 2;

/**
 * The part size the Ferry sender streams in: small enough to keep memory flat, large enough that
 * signing and a round trip per part cost little. With 8 MiB parts the receiver's peak for a 1 GB
 * image was ~180 MiB against ~135 MiB with 2 MiB, in the same time (bench/README.md).
 */
export const STREAM_PART_BYTES = 2 * 1024 ** 2;

/**
 * Where `value` (parsed JSON or YAML) has an object key `__proto__`: the path to each, as keys
 * (`['service', 'env', '__proto__']`), the first `limit` found. No Ferry name can be one: an
 * ordinary JavaScript object cannot hold it as a key (assigning it replaces the object's
 * prototype), so parsers and schemas drop it in silence. Input holding one is refused instead of
 * quietly changed.
 */
export function prototypeKeyPaths(value: unknown, limit = 10): string[][] {
  interface Step { key: string; parent: Step | undefined }
  const pathOf = (step: Step): string[] => {
    const keys: string[] = [];
    for (let at: Step | undefined = step; at !== undefined; at = at.parent) keys.push(at.key);
    return keys.reverse();
  };
  const found: string[][] = [];
  // A stack of steps that point to their parent, not recursion nor copied paths: a body nested a
  // hundred thousand levels deep takes neither the call stack nor quadratic time.
  const pending: { value: unknown; step: Step | undefined }[] = [{ value, step: undefined }];
  for (let next = pending.pop(); next !== undefined && found.length < limit; next = pending.pop()) {
    if (typeof next.value !== 'object' || next.value === null) continue;
    for (const [key, child] of Object.entries(next.value)) {
      const step: Step = { key, parent: next.step };
      if (key === '__proto__') found.push(pathOf(step));
      pending.push({ value: child, step });
    }
  }
  return found.slice(0, limit);
}
