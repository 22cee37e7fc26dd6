import type { IncomingMessage } from 'node:http';
import type { RequestHandler } from 'express';
import { authorize, type ScopeAtTime } from '@ferry/auth';
import { createEvent, type EventSink } from '@ferry/events';
import { readBody, type AuthLocals } from '@ferry/http';
import { digestOf } from '@ferry/integrity';
import type { Logger } from '@ferry/log';
import { FerryError, MANIFEST_MAX_BYTES, parseDeferredManifest, parseManifest, type Manifest } from '@ferry/protocol';
import type { PolicyGate } from '../policy/index.ts';

/** The three ways a package enters: one-shot (§5), resumable session (§10), stream (§10.6). */
export type UploadKind = 'package' | 'upload' | 'stream';

/** The verified request that carries a manifest: its key, its signed content digest, its scopes. */
export type SignedRequest = AuthLocals['auth'] & { scopes: ScopeAtTime[] };

export interface AdmissionDeps {
  /** The receiver's policy: no older release than the one that runs, and what a service may ask for. */
  policy: PolicyGate;
  events: EventSink;
  hostId: string;
  logger: Logger;
  /** Refuses (507 FERRY_ERR_DISK_FULL) when the data disk has no room for a package of this size. */
  assertDiskSpace: (packageBytes: number) => Promise<void>;
  /** The largest `package.size` a one-shot upload and a resumable session take; a stream's is unknown when it opens. */
  limits: { package: number; upload: number };
}

/** A manifest let in: what the upload that follows is checked against. */
export interface Admitted {
  manifest: Manifest;
  /** The manifest as signed, as parsed JSON (a stream keeps it, to check it again after a restart). */
  document: unknown;
  /** BLAKE3 of the manifest bytes, which is the request's signed content digest. */
  digest: string;
}

/**
 * The receiver's one admission of a manifest, whichever way it comes in, before any package byte
 * is spooled or loaded. In this order, each failure answering with its own code:
 *
 * 1. the manifest is the one the request signed (422 FERRY_ERR_MANIFEST_DIGEST_MISMATCH) and
 *    parses (400 FERRY_ERR_BAD_MANIFEST; a stream's opening manifest lacks the seal);
 * 2. the signing key is granted its service (403 FERRY_ERR_NOT_GRANTED; a grant inside its grace
 *    is let in with a `grant.grace` event);
 * 3. its `package.size` is within the upload's limit (413 FERRY_ERR_PAYLOAD_TOO_LARGE);
 * 4. the data disk has room for the package (507 FERRY_ERR_DISK_FULL);
 * 5. the policy: no release older than the running one (FERRY_ERR_DOWNGRADE), nothing the
 *    policy does not grant (403 FERRY_ERR_POLICY_DENIED, after its `policy.denied` audit event).
 *
 * The one rejection event, `deployment.failed`, goes out for a refusal at step 3, 5 or any later
 * one ({@link rejected}: a package that does not match its manifest, a load that refuses it), so
 * a watcher of the deployment id learns the outcome. Not before the grant passed: a key may not
 * end deployments of a service it is not granted, not even in the event stream (the registry
 * takes a failed deployment as final). Not for a full disk either, which the sender waits out and
 * retries under the same deployment id.
 */
export class Admission {
  readonly #deps: AdmissionDeps;

  constructor(deps: AdmissionDeps) {
    this.#deps = deps;
  }

  /** The largest package a one-shot upload takes. */
  get packageLimit(): number {
    return this.#deps.limits.package;
  }

  async admit(kind: UploadKind, bytes: Buffer, auth: SignedRequest): Promise<Admitted> {
    const digest = digestOf(bytes);
    if (digest !== auth.contentDigest) throw new FerryError('FERRY_ERR_MANIFEST_DIGEST_MISMATCH');
    const document = manifestJson(bytes);
    const parsed = kind === 'stream' ? parseDeferredManifest(document) : parseManifest(document);
    if (!parsed.ok) throw new FerryError('FERRY_ERR_BAD_MANIFEST', { message: `Manifest is invalid: ${parsed.problems.join('; ')}`, details: { problems: parsed.problems } });
    const manifest = parsed.manifest;
    this.#granted(manifest, auth);
    const limit = kind === 'stream' ? undefined : this.#deps.limits[kind];
    if (limit !== undefined && manifest.package.size > limit) {
      throw this.rejected(manifest, new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: `package.size exceeds this upload's limit of ${limit} bytes`, details: { limit } }));
    }
    await this.#deps.assertDiskSpace(kind === 'stream' ? 0 : manifest.package.size);
    try {
      this.#deps.policy.check(manifest);
    } catch (err) {
      throw this.rejected(manifest, err);
    }
    return { manifest, document, digest };
  }

  /**
   * Publishes `deployment.failed` for an admitted manifest whose upload was refused, and returns
   * the refusal (typed, with the deployment id) for the caller to throw.
   */
  rejected(manifest: Manifest, err: unknown): FerryError {
    const error = (err instanceof FerryError ? err : new FerryError('FERRY_ERR_INTERNAL', { cause: err })).withDetails({ deploymentId: manifest.deploymentId });
    const { hostId, events } = this.#deps;
    events.publish(createEvent('deployment.failed', {
      source: `ferry://receiver/${hostId}`, host: hostId, service: manifest.service.name, deploymentId: manifest.deploymentId,
      data: { image: manifest.image.ref, imageId: manifest.image.id, code: error.code, reason: error.message, state: 'FAILED' },
    }));
    return error;
  }

  /**
   * A request on an upload or stream that exists (`HEAD` reads it, the rest write or deploy it):
   * the key must be granted the service it deploys, whatever the id it learnt.
   */
  requireGrant(serviceOf: (id: string) => string | undefined): RequestHandler {
    return (req, res, next) => {
      const service = serviceOf(String(req.params.id ?? ''));
      if (service !== undefined) authorize((res.locals as AuthLocals).auth, req.method === 'HEAD' ? 'read' : 'deploy', { service });
      next();
    };
  }

  #granted(manifest: Manifest, auth: SignedRequest): void {
    const { hostId, events, logger } = this.#deps;
    const service = manifest.service.name;
    const granted = authorize(auth, 'deploy', { service });
    if (!granted.grace) return;
    const notAfter = granted.scope.notAfter === undefined ? null : new Date(granted.scope.notAfter * 1000).toISOString();
    events.publish(createEvent('grant.grace', {
      source: `ferry://receiver/${hostId}`, host: hostId, service, deploymentId: manifest.deploymentId,
      data: { keyId: auth.keyId, grant: granted.scope.grantId ?? null, notAfter, graceSeconds: granted.scope.graceSeconds },
    }));
    logger.warn({ deploymentId: manifest.deploymentId, service, keyId: auth.keyId, notAfter }, 'deployment let in by its grant\'s grace period');
  }
}

/**
 * The manifest body of `POST /v1/uploads` and `POST /v1/streams`: `application/json` (else 415),
 * at most MANIFEST_MAX_BYTES (else 413).
 */
export async function readManifestBody(req: IncomingMessage): Promise<Buffer> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') throw new FerryError('FERRY_ERR_UNSUPPORTED_MEDIA_TYPE', { message: 'The manifest is sent as Content-Type: application/json' });
  return readBody(req, MANIFEST_MAX_BYTES, 'Manifest');
}

function manifestJson(bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new FerryError('FERRY_ERR_BAD_MANIFEST', { message: 'Manifest is not JSON' });
  }
}
