import { Router, type Response } from 'express';
import { digestOf } from '@ferry/integrity';
import { FerryError, HEADERS, PATHS } from '@ferry/protocol';
import type { AuthLocals } from '@ferry/http';
import type { Deployer } from '../deploy/engine.ts';
import { readManifestBody, type Admission } from '../upload/admission.ts';
import { parsePartHeaders } from '../upload/headers.ts';
import type { UploadStore, UploadView } from '../upload/sessions.ts';

export interface UploadsDeps {
  deployer: Deployer;
  uploads: UploadStore;
  /** Lets the manifest in when a session is created, before it takes a byte. */
  admission: Admission;
}

const EMPTY_DIGEST = digestOf('');

/**
 * The resumable upload (docs/protocol.md §10): create a session from a manifest, PATCH parts at
 * the acknowledged offset, HEAD to learn it after a failure, then deploy.
 */
export function uploadsRouter(deps: UploadsDeps): Router {
  const router = Router();
  const { uploads } = deps;

  router.post(PATHS.uploads, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    const { view, created } = await uploads.create(await deps.admission.admit('upload', await readManifestBody(req), auth));
    res.setHeader('Location', `${PATHS.uploads}/${view.uploadId}`);
    offsetHeaders(res, view);
    res.status(created ? 201 : 200).json({ uploadId: view.uploadId, offset: view.offset, length: view.length, expiresAt: view.expiresAt });
  });

  // A session is reachable only by keys granted its service: another key cannot write, probe or
  // deploy it, whatever the id it learnt.
  router.use(`${PATHS.uploads}/:id`, deps.admission.requireGrant((id) => uploads.serviceOf(id)));

  router.head(`${PATHS.uploads}/:id`, (req, res) => {
    requireEmptyBody(res);
    offsetHeaders(res, uploads.status(req.params.id));
    res.status(200).end();
  });

  router.patch(`${PATHS.uploads}/:id`, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    const uploadId = req.params.id;
    try {
      const { offset, contentLength } = parsePartHeaders(req);
      offsetHeaders(res, await uploads.writePart({ uploadId, offset, contentLength, digest: auth.contentDigest, body: req }));
      res.status(204).end();
    } catch (err) {
      // Every refusal says where the upload stands, so the client resumes without a HEAD.
      const current = uploads.peek(uploadId);
      if (current && !res.headersSent) offsetHeaders(res, current);
      throw err;
    }
  });

  router.post(`${PATHS.uploads}/:id/deploy`, async (req, res) => {
    requireEmptyBody(res);
    const result = await uploads.deploy(req.params.id, (pkg) => deps.deployer.deploy(pkg));
    res.status(200).json(result);
  });

  return router;
}

function offsetHeaders(res: Response, view: UploadView): void {
  res.setHeader('Upload-Offset', String(view.offset));
  res.setHeader('Upload-Length', String(view.length));
  res.setHeader('Upload-Expires', new Date(view.expiresAt).toUTCString());
  res.setHeader('Cache-Control', 'no-store');
}

/** HEAD and deploy carry no body; their signed digest is that of the empty body. */
function requireEmptyBody(res: Response): void {
  if ((res.locals as AuthLocals).auth.contentDigest !== EMPTY_DIGEST) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `${HEADERS.contentDigest} must be the BLAKE3 of the empty body (${EMPTY_DIGEST})` });
  }
}
