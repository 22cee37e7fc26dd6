import { Router, type Express } from 'express';
import { authorize, type RequestVerifier } from '@ferry/auth';
import { SIGNED_HEADERS, createBaseApp, finishApp, requireAllowedSource, requireSignature, readSignedJson, strictHeaders, type AuthLocals, type SecurityOptions } from '@ferry/http';
import type { Logger } from '@ferry/log';
import { FerryError, PATHS, RELEASE_ID_PATTERN } from '@ferry/protocol';
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
  app.use(releasesRouter(deps.jobs));
  return finishApp(app);
}

function deploymentsRouter(jobs: DeploymentJobs): Router {
  const router = Router();
  router.post(PATHS.deployments, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    const body = await readSignedJson(req, res, { maxBytes: MAX_DOCUMENT_BYTES });
    const parsed = parseDeploymentJson(body);
    if (!parsed.ok) throw invalidDocument(parsed.problems);
    for (const service of Object.keys(parsed.document.services)) authorizeService(auth, service);
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

function releasesRouter(jobs: DeploymentJobs): Router {
  const router = Router();
  router.post(`${PATHS.releases}/:id/continue`, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    // The id becomes a file name: nothing but a release id goes further.
    const id = req.params.id;
    if (!RELEASE_ID_PATTERN.test(id)) {
      throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'Not a release id (rel-YYYYMMDDTHHMMSSZ-<8 hex>)' });
    }
    // Signed without a body: one sent is refused, after its digest is checked.
    await readSignedJson(req, res, { maxBytes: 1024, empty: 'only' });
    const job = await jobs.continueRelease(id, auth.keyId, (document) => {
      for (const service of Object.keys(document.services)) authorizeService(auth, service);
    });
    res.status(202).json({ id: job.id, state: job.state, created: true, releaseId: id, links: { self: `${PATHS.deployments}/${job.id}` } });
  });
  return router;
}

/**
 * The caller's grants must allow deploying `service`, and on every host: the service deploys
 * with its own key to whatever the document's targets turn out to be (a URL names no host until
 * it is dialled, a selector resolves at run time), so a grant limited to some hosts would let its
 * holder reach others through it. Such keys deploy with `ferry deploy` themselves.
 *
 * @throws FerryError FERRY_ERR_NOT_GRANTED naming the service.
 */
export function authorizeService(auth: AuthLocals['auth'], service: string): void {
  authorize(auth, 'deploy', { service });
  const everywhere = auth.scopes.filter(({ scope }) => scope.hosts.includes('*'));
  if (!canDeploy(everywhere, service)) {
    throw new FerryError('FERRY_ERR_NOT_GRANTED', {
      message: `The key may deploy ${service} to some hosts only; the sender service takes keys granted every host ("*") for each service of the document`,
      details: { action: 'deploy', service },
    });
  }
}

function canDeploy(scopes: AuthLocals['auth']['scopes'], service: string): boolean {
  try {
    authorize({ scopes }, 'deploy', { service });
    return true;
  } catch {
    return false;
  }
}

