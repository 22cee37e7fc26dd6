/**
 * The one registry of Ferry's error codes. Every error that crosses a process boundary (an HTTP
 * answer, a CLI exit, an event) carries one of these codes; callers match on `code`, never on text.
 * docs/protocol.md lists them, and a test keeps that list and this table in step.
 */
export const ERRORS = {
  FERRY_ERR_AUTH_MISSING: { status: 401, message: 'Authentication headers are missing or malformed' },
  FERRY_ERR_UNKNOWN_KEY: { status: 401, message: 'Unknown key id' },
  FERRY_ERR_BAD_SIGNATURE: { status: 401, message: 'Signature does not match the request' },
  FERRY_ERR_STALE_TIMESTAMP: { status: 401, message: 'Timestamp is outside the accepted window' },
  FERRY_ERR_REPLAY: { status: 401, message: 'Nonce was already used' },
  FERRY_ERR_BAD_REQUEST: { status: 400, message: 'Malformed request' },
  FERRY_ERR_BAD_MANIFEST: { status: 400, message: 'Manifest is missing or invalid' },
  FERRY_ERR_MANIFEST_DIGEST_MISMATCH: { status: 422, message: 'Manifest bytes do not match the signed content digest' },
  FERRY_ERR_CHECKSUM_MISMATCH: { status: 422, message: 'Package BLAKE3 digest does not match the manifest' },
  FERRY_ERR_SIZE_MISMATCH: { status: 422, message: 'Package size does not match the manifest' },
  FERRY_ERR_PAYLOAD_TOO_LARGE: { status: 413, message: 'Request body exceeds the limit' },
  FERRY_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'Unsupported content type' },
  FERRY_ERR_LOAD_FAILED: { status: 422, message: 'Docker could not load the package' },
  FERRY_ERR_IMAGE_MISMATCH: { status: 422, message: 'Loaded image does not match the manifest' },
  FERRY_ERR_CONTAINER_FAILED: { status: 422, message: 'The new container could not be started' },
  FERRY_ERR_HEALTHCHECK_FAILED: { status: 422, message: 'Health check failed; the previous version was restored' },
  FERRY_ERR_ROLLBACK_FAILED: { status: 500, message: 'The deployment failed and the previous version could not be restored' },
  FERRY_ERR_DEPLOYMENT_IN_PROGRESS: { status: 409, message: 'Another deployment of this service is in progress' },
  FERRY_ERR_NOT_FOUND: { status: 404, message: 'Not found' },
  FERRY_ERR_DOCKER_UNAVAILABLE: { status: 503, message: 'The Docker engine cannot be reached' },
  FERRY_ERR_DOCKER: { status: 502, message: 'The Docker engine returned an error' },
  FERRY_ERR_INTERNAL: { status: 500, message: 'Internal error' },
  FERRY_ERR_CONFIG: { status: 500, message: 'Invalid configuration' },
  FERRY_ERR_USAGE: { status: 400, message: 'Invalid command line' },
  FERRY_ERR_IMAGE_NOT_FOUND: { status: 404, message: 'Image not found on the build engine' },
  FERRY_ERR_RECEIVER_UNREACHABLE: { status: 503, message: 'The receiver cannot be reached' },
  FERRY_ERR_RECEIVER_CIRCUIT_OPEN: { status: 503, message: 'The receiver kept failing; the sender stopped trying it' },
  FERRY_ERR_BAD_RESPONSE: { status: 502, message: 'The peer sent a response Ferry does not understand' },
  FERRY_ERR_EVENTS_UNAVAILABLE: { status: 503, message: 'The event stream cannot be reached' },
  FERRY_ERR_BAD_OFFSET: { status: 400, message: 'Upload-Offset is missing, repeated or not a valid byte offset' },
  FERRY_ERR_OFFSET_MISMATCH: { status: 409, message: 'Upload-Offset does not match the offset the receiver holds' },
  FERRY_ERR_UPLOAD_BUSY: { status: 409, message: 'Another request is writing to this upload' },
  FERRY_ERR_UPLOAD_INCOMPLETE: { status: 409, message: 'The upload has not received all its bytes yet' },
  FERRY_ERR_UPLOAD_CONFLICT: { status: 409, message: 'A live upload with this deployment id has a different manifest' },
  FERRY_ERR_UPLOAD_NOT_FOUND: { status: 404, message: 'No such upload' },
  FERRY_ERR_UPLOAD_EXPIRED: { status: 410, message: 'The upload expired' },
  FERRY_ERR_UPLOAD_INVALIDATED: { status: 410, message: 'The upload was invalidated and its bytes discarded' },
  FERRY_ERR_UPLOAD_COMPLETE: { status: 410, message: 'The upload is complete and accepts no more bytes' },
  FERRY_ERR_DISK_FULL: { status: 507, message: 'The receiver has no space left for this upload' },
  FERRY_ERR_WRONG_AUDIENCE: { status: 401, message: 'The request was signed for another host' },
  FERRY_ERR_GRANT_EXPIRED: { status: 401, message: "The key's grant is past its notAfter date and its grace period" },
  FERRY_ERR_GRANT_NOT_YET_VALID: { status: 401, message: "The key's grant is not valid yet (notBefore)" },
  FERRY_ERR_KEY_REVOKED: { status: 401, message: 'The key or its grant was revoked' },
  FERRY_ERR_BAD_GRANT: { status: 401, message: 'The grant or signed document does not check out' },
  FERRY_ERR_HOST_KEY_MISMATCH: { status: 502, message: 'The host answered with another host key than the one expected for it' },
  FERRY_ERR_DOWNGRADE: { status: 409, message: 'The release was signed before the one this host runs, and is not a signed rollback' },
  FERRY_ERR_NOT_GRANTED: { status: 403, message: "The key's grant does not allow this" },
  FERRY_ERR_FORBIDDEN_SOURCE: { status: 403, message: 'The source address is not allowed' },
  FERRY_ERR_HEADERS_TOO_LARGE: { status: 431, message: 'Request headers are too large' },
  FERRY_ERR_REQUEST_TIMEOUT: { status: 408, message: 'The request did not arrive in time' },
  FERRY_ERR_TOO_MANY_STREAMS: { status: 503, message: 'Too many live streams are open; try again later' },
  FERRY_ERR_MISDIRECTED_REQUEST: { status: 421, message: 'This server does not answer to that host name' },
  FERRY_ERR_BAD_ARCHIVE: { status: 422, message: 'The package is not a docker-save archive' },
  FERRY_ERR_UNSAFE_ARCHIVE: { status: 422, message: 'The archive holds an entry that is not allowed' },
  FERRY_ERR_ARCHIVE_TOO_LARGE: { status: 422, message: 'The archive decompresses to more than the allowed size' },
  FERRY_ERR_POLICY_DENIED: { status: 403, message: "The deployment asks for something the receiver's policy does not allow" },
  FERRY_ERR_INTERRUPTED: { status: 500, message: 'The receiver stopped in the middle of this deployment; it was resolved when it started again' },
  FERRY_ERR_NOTHING_TO_ROLL_BACK: { status: 409, message: 'The service has no previous version to roll back to' },
  FERRY_ERR_DEPLOYMENT_CONFLICT: { status: 409, message: 'This deployment id was already used for another service or image' },
  FERRY_ERR_RELEASE_MISMATCH: { status: 409, message: 'What runs of the service was not deployed by the release named in the request; nothing was removed' },
  FERRY_ERR_BUILD_FAILED: { status: 422, message: 'The image build failed' },
  FERRY_ERR_IMAGE_TOO_LARGE: { status: 413, message: 'The built image is larger than the allowed size' },
  FERRY_ERR_STREAM_UNAVAILABLE: { status: 409, message: 'This receiver cannot load a package while it streams in; send it as a package or a resumable upload' },
  FERRY_ERR_LAYERS_MISSING: { status: 409, message: 'The package leaves out layers this host does not have; send the full package' },
  FERRY_ERR_HOST_UNKNOWN: { status: 404, message: 'The registry does not know this host, or has marked it lost: register again' },
  FERRY_ERR_JOIN_TOKEN_INVALID: { status: 401, message: 'The join token is unknown, used, expired or issued for another host' },
  FERRY_ERR_HOST_ENROLLED: { status: 409, message: 'The host is enrolled with another key; a join token issued with replace is needed to change it' },
  FERRY_ERR_LABELS_PINNED: { status: 403, message: 'The host registered other labels than the ones fixed at its enrollment' },
  FERRY_ERR_REGISTRY_LIMIT: { status: 409, message: 'The registry holds as many of these as it is configured to' },
  FERRY_ERR_NOT_RECONCILABLE: { status: 409, message: 'The service has no stopped container of its last successful deployment to start again' },
  FERRY_ERR_REBUILD_IN_PROGRESS: { status: 409, message: 'A projection rebuild is already running' },
  FERRY_ERR_SENDER_UNREACHABLE: { status: 503, message: 'The sender service cannot be reached' },
  FERRY_ERR_REGISTRY_UNREACHABLE: { status: 503, message: 'The registry cannot be reached' },
  FERRY_ERR_NO_MATCHING_HOSTS: { status: 404, message: 'No online host matches the selector' },
  FERRY_ERR_BAD_DEPLOYMENT_FILE: { status: 400, message: 'The deployment document is invalid' },
  FERRY_ERR_BODY_DIGEST_MISMATCH: { status: 422, message: 'The request body does not match the signed content digest' },
  FERRY_ERR_SENDER_INTERRUPTED: { status: 500, message: 'The sender service stopped before this deployment finished' },
  FERRY_ERR_UNSTABLE: { status: 422, message: 'The new container did not stay up after its check passed; the previous version was restored' },
  FERRY_ERR_RELEASE_NOT_RETAINED: { status: 404, message: 'This host does not retain that release of the service' },
  FERRY_ERR_RELEASE_HALTED: { status: 422, message: 'A phase of the release failed; its later phases were neither built nor deployed' },
  FERRY_ERR_PROXY_UNAVAILABLE: { status: 503, message: 'The proxy on this host does not answer on its runtime socket; routed services cannot be switched' },
  FERRY_ERR_PROXY_COMMAND: { status: 502, message: 'The proxy refused a runtime command' },
  FERRY_ERR_ROUTE_TAKEN: { status: 409, message: 'Another service already has this route (host name and path prefix) on this host' },
  FERRY_ERR_ROUTES_FULL: { status: 507, message: 'Every route slot of the proxy on this host is taken' },
  FERRY_ERR_CANARY_FAILED: { status: 422, message: 'The canary answered more errors than allowed; traffic went back to the previous version' },
  FERRY_ERR_CANARY_ABORTED: { status: 422, message: 'The canary was aborted by hand; traffic went back to the previous version' },
  FERRY_ERR_NO_CANARY: { status: 404, message: 'No canary of this service is in progress on this host' },
  FERRY_ERR_OVER_BUDGET: { status: 422, message: 'The release would commit more memory or CPUs on a host than its budget allows; nothing was built or sent' },
  FERRY_ERR_BUNDLE_MALFORMED: { status: 422, message: 'The file is not a Ferry bundle, or an entry, the index, a manifest or release.json in it is malformed' },
  FERRY_ERR_BUNDLE_SIGNATURE: { status: 422, message: "The bundle's signature does not verify, or its key is not trusted here" },
  FERRY_ERR_BUNDLE_DIGEST: { status: 422, message: 'A blob, the index or a part of the bundle does not match its digest' },
  FERRY_ERR_BUNDLE_BASE_MISSING: { status: 409, message: 'The differential bundle leaves out layers this host does not hold; apply the bundle it was made against first' },
  FERRY_ERR_BAD_INVENTORY: { status: 400, message: 'The file is not a host inventory written by ferry inventory' },
  FERRY_ERR_DATA_DIR_LOCKED: { status: 409, message: 'Another process (a running receiver, or a bundle apply) holds this data directory' },
  FERRY_ERR_LICENCE_EXPIRED: { status: 403, message: "The bundle's grant is past its notAfter date and its grace period" },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERRORS, value);
}

export interface FerryErrorOptions {
  /** What went wrong in words for this occurrence; defaults to the registry message. */
  message?: string;
  cause?: unknown;
  /** Safe-to-show facts (never secrets) that travel in the HTTP error body. */
  details?: Record<string, unknown>;
  /** Override of the registry status, for codes reused by a peer's answer. */
  status?: number;
}

export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, options: FerryErrorOptions = {}) {
    super(options.message ?? ERRORS[code].message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FerryError';
    this.code = code;
    this.status = options.status ?? ERRORS[code].status;
    this.details = options.details;
  }

  /** The same error with more facts attached; errors stay immutable once thrown. */
  withDetails(extra: Record<string, unknown>): FerryError {
    return new FerryError(this.code, { message: this.message, cause: this.cause, status: this.status, details: { ...this.details, ...extra } });
  }

  toJSON(): ErrorBody {
    return { error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) } };
  }
}

/** The body of every non-2xx answer from a Ferry service. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: Record<string, unknown> };
}

export function isFerryError(err: unknown, code?: ErrorCode): err is FerryError {
  return err instanceof FerryError && (code === undefined || err.code === code);
}

/** Reads a peer's error body back into a FerryError; anything unrecognised is a bad response. */
export function errorFromBody(status: number, body: unknown): FerryError {
  const candidate = (body as Partial<ErrorBody> | null)?.error;
  if (candidate && isErrorCode(candidate.code) && typeof candidate.message === 'string') {
    return new FerryError(candidate.code, { message: candidate.message, details: candidate.details, status });
  }
  return new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `Unexpected answer (HTTP ${status})`, status });
}
