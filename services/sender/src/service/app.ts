import type { IncomingMessage } from 'node:http';
import { Router, type Express } from 'express';
import type { RequestVerifier } from '@ferry/auth';
import { SIGNED_HEADERS, createBaseApp, finishApp, requireAllowedSource, requireSignature, strictHeaders, type AuthLocals, type SecurityOptions } from '@ferry/http';
import { digestOf } from '@ferry/integrity';
import type { Logger } from '@ferry/log';
import { FerryError, PATHS } from '@ferry/protocol';
import { invalidDocument, parseDeploymentJson } from '../deployfile/index.ts';
import { jobView, type DeploymentJobs } from './jobs.ts';

/** A deployment document is a few kilobytes; this leaves room for large env maps. */
export const MAX_DOCUMENT_BYTES = 1024 ** 2;
const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export interface SenderServiceDeps {
  logger: Logger;
  verifier: RequestVerifier;
  jobs: DeploymentJobs;
  /** FERRY_HOST_ID: the audience of signed requests, named in `GET /healthz`. */
  hostId: string;
  version: string;
  security?: SecurityOptions;
}

/** The sender service's HTTP surface, with no listening and no environment: main.ts and tests wire it. */
export function createApp(deps: SenderServiceDeps): Express {
  const app = createBaseApp(deps.logger);
  app.get(PATHS.healthz, (_req, res) => {
    res.json({ status: 'ok', host: deps.hostId, version: deps.version });
  });
  app.use(requireAllowedSource(deps.security ?? {}), strictHeaders(SIGNED_HEADERS));
  app.use('/v1', requireSignature(deps.verifier, deps.security ?? {}));
  app.use(deploymentsRouter(deps.jobs));
  return finishApp(app);
}

function deploymentsRouter(jobs: DeploymentJobs): Router {
  const router = Router();
  router.post(PATHS.deployments, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    const body = await readJsonBody(req, auth.contentDigest);
    const parsed = parseDeploymentJson(body);
    if (!parsed.ok) throw invalidDocument(parsed.problems);
    const { job, created } = await jobs.submit(parsed.document, auth.keyId);
    res.status(202).json({ id: job.id, state: job.state, created, links: { self: `${PATHS.deployments}/${job.id}` } });
  });
  router.get(`${PATHS.deployments}/:id`, (req, res) => {
    const job = JOB_ID.test(req.params.id) ? jobs.get(req.params.id) : undefined;
    if (!job) throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `No deployment ${req.params.id} on this sender`, details: { id: req.params.id } });
    res.setHeader('Cache-Control', 'no-store');
    res.json(jobView(job));
  });
  return router;
}

/** Reads the body whole (it is small and bounded) and checks it is the body that was signed. */
async function readJsonBody(req: IncomingMessage, signedDigest: string): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') throw new FerryError('FERRY_ERR_UNSUPPORTED_MEDIA_TYPE', { message: 'A deployment document is sent as Content-Type: application/json' });
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_DOCUMENT_BYTES) throw new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: `A deployment document is at most ${MAX_DOCUMENT_BYTES} bytes` });
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks);
  if (digestOf(raw) !== signedDigest) throw new FerryError('FERRY_ERR_BODY_DIGEST_MISMATCH', { message: 'The body is not the one the signature covers (X-Ferry-Content-Digest)' });
  try {
    return JSON.parse(raw.toString('utf8')) as unknown;
  } catch (err) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `The body is not JSON: ${(err as Error).message}`, cause: err });
  }
}
