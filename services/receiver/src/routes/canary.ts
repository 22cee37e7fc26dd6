import { Router } from 'express';
import { authorize } from '@ferry/auth';
import { FerryError, PATHS, SERVICE_NAME_PATTERN } from '@ferry/protocol';
import type { AuthLocals } from '@ferry/http';
import type { CanaryControl } from '../deploy/canary.ts';
import { onlyParameters, requireEmptyBody } from './services.ts';

export interface CanaryRouteDeps {
  canaries: CanaryControl;
}

/**
 * `POST /v1/services/:name/canary/promote` and `…/abort`: ends the canary of the service in
 * progress on this host by hand, as its counters would have (docs/protocol.md, "Canaries"). The
 * deployment that runs it answers its own call with the outcome; this one answers 202 at once.
 * Either can change what users get, so both ask the `deploy` role on the service.
 */
export function canaryRouter(deps: CanaryRouteDeps): Router {
  const router = Router();
  router.post(`${PATHS.services}/:name/canary/:command`, (req, res) => {
    onlyParameters(req, []);
    requireEmptyBody(res);
    const { name: service, command } = req.params;
    if (!SERVICE_NAME_PATTERN.test(service)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'Invalid service name' });
    if (command !== 'promote' && command !== 'abort') throw new FerryError('FERRY_ERR_NOT_FOUND', { message: 'A canary is promoted or aborted: …/canary/promote or …/canary/abort' });
    authorize((res.locals as AuthLocals).auth, 'deploy', { service });
    deps.canaries.command(service, command);
    res.status(202).json({ service, command });
  });
  return router;
}
