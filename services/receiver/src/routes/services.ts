import { Router, type Request, type Response } from 'express';
import { authorize, type Action } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { FerryError, HEADERS, PATHS, RELEASE_ID_PATTERN } from '@ferry/protocol';
import type { AuthLocals } from '@ferry/http';
import type { Deployer } from '../deploy/engine.ts';

export interface ServicesDeps {
  deployer: Deployer;
}

const EMPTY_DIGEST = digestOf('');
const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const SERVICE = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** `POST /v1/services/:name/reconcile` asks no more than a read grant: see receiverAction. */
const RECONCILE = new RegExp(`^${PATHS.services}/[^/]+/reconcile$`);

/**
 * What a receiver request asks of the key's role before its body is read: reconcile only starts
 * again what a signed deployment left (the registry's drift correction), so reading is enough;
 * otherwise GET and HEAD read and the rest deploys.
 */
export function receiverAction(req: { method: string; path: string; originalUrl?: string }): Action {
  const path = (req.originalUrl ?? req.path).split('?')[0] ?? '';
  if (req.method === 'POST' && RECONCILE.test(path)) return 'read';
  return req.method === 'GET' || req.method === 'HEAD' ? 'read' : 'deploy';
}

/**
 * `POST /v1/services/:name/rollback[?deploymentId=<uuid>][&toRelease=<release id>]`: swaps the
 * kept previous container back in, or runs a retained release of the service again. The optional
 * deployment id (signed, as part of the path) makes a retry answer the stored outcome instead of
 * swapping a second time, which would roll forward again.
 *
 * `DELETE /v1/services/:name[?deploymentId=<uuid>][&release=<release id>]`: stops and removes
 * the service's containers (deploy/remove.ts), journalled under the deployment id as a rollback is.
 * With `release`, only if what runs is that release's (409 FERRY_ERR_RELEASE_MISMATCH otherwise):
 * how a whole-release rollback takes away a service the release brought to the host.
 *
 * `POST /v1/services/:name/reconcile`: starts the container of the service's last successful
 * deployment again if it is stopped (Deployer.reconcileService); a key with read access to the
 * service may ask.
 */
export function servicesRouter(deps: ServicesDeps): Router {
  const router = Router();
  router.post(`${PATHS.services}/:name/reconcile`, async (req, res) => {
    onlyParameters(req, []);
    requireEmptyBody(res);
    const service = req.params.name;
    if (!SERVICE.test(service)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'Invalid service name' });
    authorize((res.locals as AuthLocals).auth, 'read', { service });
    res.json(await deps.deployer.reconcileService(service));
  });
  router.post(`${PATHS.services}/:name/rollback`, async (req, res) => {
    onlyParameters(req, ['deploymentId', 'toRelease']);
    requireEmptyBody(res);
    const service = req.params.name;
    if (!SERVICE.test(service)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'Invalid service name' });
    authorize((res.locals as AuthLocals).auth, 'deploy', { service });
    res.json(await deps.deployer.rollback(service, deploymentIdOf(req), releaseIdOf(req, 'toRelease')));
  });
  router.delete(`${PATHS.services}/:name`, async (req, res) => {
    onlyParameters(req, ['deploymentId', 'release']);
    requireEmptyBody(res);
    const service = req.params.name;
    if (!SERVICE.test(service)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'Invalid service name' });
    authorize((res.locals as AuthLocals).auth, 'deploy', { service });
    res.json(await deps.deployer.remove(service, deploymentIdOf(req), releaseIdOf(req, 'release')));
  });
  return router;
}

function deploymentIdOf(req: Request): string | undefined {
  const { deploymentId } = req.query;
  if (deploymentId === undefined) return undefined;
  if (typeof deploymentId !== 'string' || !ID.test(deploymentId)) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'deploymentId: a lowercase UUID' });
  }
  return deploymentId;
}

/** A release id, checked here: it is looked up, never used as a name of anything. */
function releaseIdOf(req: Request, name: 'toRelease' | 'release'): string | undefined {
  const value = req.query[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !RELEASE_ID_PATTERN.test(value)) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `${name}: a release id, rel-YYYYMMDDTHHMMSSZ-<8 hex>` });
  }
  return value;
}

/**
 * Refuses a query parameter the route does not take: a misspelt `limit` or `deploymentId` would
 * otherwise be ignored, and the client would act on an answer to a question it did not ask.
 */
export function onlyParameters(req: Request, allowed: readonly string[]): void {
  const unknown = Object.keys(req.query).filter((name) => !allowed.includes(name));
  if (unknown.length === 0) return;
  // Names are the client's own text: a few, cut short, are enough to say what was wrong.
  const named = unknown.slice(0, 8).map((name) => name.slice(0, 64));
  throw new FerryError('FERRY_ERR_BAD_REQUEST', {
    message: `Unknown query parameter: ${named.join(', ')}${allowed.length ? ` (this path takes ${allowed.join(', ')})` : ' (this path takes none)'}`,
    details: { unknown: named, allowed: [...allowed] },
  });
}

/** These requests carry no body; their signed digest is that of the empty body. */
export function requireEmptyBody(res: Response): void {
  if ((res.locals as AuthLocals).auth.contentDigest !== EMPTY_DIGEST) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `${HEADERS.contentDigest} must be the BLAKE3 of the empty body (${EMPTY_DIGEST})` });
  }
}
