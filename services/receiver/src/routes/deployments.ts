import { Router, type Request } from 'express';
import { FerryError, PATHS } from '@ferry/protocol';
import type { Journal } from '../journal/journal.ts';
import { onlyParameters, requireEmptyBody } from './services.ts';

export interface DeploymentsDeps {
  journal: Journal;
}

/** Default and maximum `limit` of `GET /v1/deployments`. */
const DEFAULT_LIMIT = 20;
const MAX_LIMIT = 500;
const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SERVICE = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/**
 * `GET /v1/deployments/:id` and `GET /v1/deployments?service=S&limit=N`: the journal's records,
 * read-only; the journal already holds everything, these only pick and shape.
 */
export function deploymentsRouter(deps: DeploymentsDeps): Router {
  const router = Router();
  router.get(PATHS.deployments, (req, res) => {
    onlyParameters(req, ['service', 'limit']);
    requireEmptyBody(res);
    const { service, limit } = listQuery(req);
    res.json({ deployments: deps.journal.list({ ...(service ? { service } : {}), limit }) });
  });
  router.get(`${PATHS.deployments}/:id`, (req, res) => {
    onlyParameters(req, []);
    requireEmptyBody(res);
    const id = req.params.id;
    const record = ID.test(id) ? deps.journal.get(id.toLowerCase()) : undefined;
    if (!record) throw new FerryError('FERRY_ERR_NOT_FOUND', { message: 'No deployment with this id in the journal', details: { deploymentId: id } });
    res.json(record);
  });
  return router;
}

function listQuery(req: Request): { service: string | undefined; limit: number } {
  const { service, limit } = req.query;
  const problems: string[] = [];
  if (service !== undefined && (typeof service !== 'string' || !SERVICE.test(service))) problems.push('service: a service name');
  let parsed = DEFAULT_LIMIT;
  if (limit !== undefined) {
    parsed = typeof limit === 'string' && /^\d{1,4}$/.test(limit) ? Number(limit) : NaN;
    if (!(parsed >= 1 && parsed <= MAX_LIMIT)) problems.push(`limit: a whole number from 1 to ${MAX_LIMIT}`);
  }
  if (problems.length > 0) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `Invalid query: ${problems.join('; ')}`, details: { problems } });
  return { service: service as string | undefined, limit: parsed };
}
