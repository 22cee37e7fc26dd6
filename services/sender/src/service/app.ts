import { Router, type Express } from 'express';
import type { RequestVerifier } from '@ferry/auth';
import { SIGNED_HEADERS, createBaseApp, finishApp, requireAllowedSource, requireSignature, readSignedJson, strictHeaders, type AuthLocals, type SecurityOptions } from '@ferry/http';
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
    const body = await readSignedJson(req, res, { maxBytes: MAX_DOCUMENT_BYTES });
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

