import { Router, type Response } from 'express';
import { readSignedJson, type AuthLocals } from '@ferry/http';
import { PATHS } from '@ferry/protocol';
import type { Deployer } from '../deploy/engine.ts';
import { readManifestBody, type Admission } from '../upload/admission.ts';
import { parsePartHeaders } from '../upload/headers.ts';
import type { StreamStore } from '../upload/streams.ts';

export interface StreamsDeps {
  deployer: Deployer;
  streams: StreamStore;
  /** Lets the opening manifest in when a stream opens, before it takes a byte. */
  admission: Admission;
}

/** A seal is two fields. */
const SEAL_MAX_BYTES = 1024;

/**
 * The streamed upload (docs/protocol.md §10.6): open with a manifest that lacks the package's size
 * and digest, PATCH parts that are loaded as they come (HEAD says where the stream stands), then
 * deploy with the signed seal.
 */
export function streamsRouter(deps: StreamsDeps): Router {
  const router = Router();
  const { streams } = deps;

  router.post(PATHS.streams, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    const { streamId, offset, created } = await streams.open(await deps.admission.admit('stream', await readManifestBody(req), auth));
    res.setHeader('Location', `${PATHS.streams}/${streamId}`);
    offsetHeader(res, offset);
    // 200: the live stream of this very manifest, opened by an earlier request whose answer was lost.
    res.status(created ? 201 : 200).json({ streamId, offset });
  });

  // A stream is reachable only by keys granted its service.
  router.use(`${PATHS.streams}/:id`, deps.admission.requireGrant((id) => streams.serviceOf(id)));

  // Where the stream stands, durably: after a lost answer or a receiver restart, the sender goes on from here.
  router.head(`${PATHS.streams}/:id`, async (req, res) => {
    await readSignedJson(req, res, { maxBytes: 0, empty: 'only' });
    offsetHeader(res, streams.offset(req.params.id));
    res.status(204).end();
  });

  router.patch(`${PATHS.streams}/:id`, async (req, res) => {
    const streamId = req.params.id;
    try {
      const { offset, contentLength } = parsePartHeaders(req);
      offsetHeader(res, await streams.writePart({ streamId, offset, contentLength, digest: (res.locals as AuthLocals).auth.contentDigest, body: req }));
      res.status(204).end();
    } catch (err) {
      // Every refusal says where the stream stands, so the client resumes without asking.
      const current = streams.peek(streamId);
      if (current !== undefined && !res.headersSent) offsetHeader(res, current);
      throw err;
    }
  });

  router.post(`${PATHS.streams}/:id/deploy`, async (req, res) => {
    const seal = await readSignedJson(req, res, { maxBytes: SEAL_MAX_BYTES });
    res.status(200).json(await streams.deploy(req.params.id, seal, (pkg) => deps.deployer.deploy(pkg)));
  });

  router.delete(`${PATHS.streams}/:id`, async (req, res) => {
    await readSignedJson(req, res, { maxBytes: 0, empty: 'only' });
    streams.abort(req.params.id);
    res.status(204).end();
  });

  return router;
}

function offsetHeader(res: Response, offset: number): void {
  res.setHeader('Upload-Offset', String(offset));
  res.setHeader('Cache-Control', 'no-store');
}
