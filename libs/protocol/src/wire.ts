/** Paths, headers and limits of the wire contract; docs/protocol.md is their normative description. */

export const PATHS = {
  healthz: '/healthz',
  packages: '/v1/packages',
} as const;

export const HEADERS = {
  keyId: 'x-ferry-key-id',
  timestamp: 'x-ferry-timestamp',
  nonce: 'x-ferry-nonce',
  contentDigest: 'x-ferry-content-digest',
  signature: 'x-ferry-signature',
  requestId: 'x-request-id',
} as const;

/** The first line of every canonical string: a change of signing rules gets a new label. */
export const SIGNATURE_SCHEME = 'FERRY-HMAC-SHA256-V1';

/** Accepted distance between the signed timestamp and the receiver's clock. */
export const TIMESTAMP_WINDOW_SECONDS = 300;

export const MANIFEST_MAX_BYTES = 64 * 1024;

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
} as const;
