import { Router } from 'express';
import { PATHS, type CapacityReport } from '@ferry/protocol';
import { onlyParameters, requireEmptyBody } from './services.ts';

export interface CapacityRouteDeps {
  capacity: () => Promise<CapacityReport>;
}

/** `GET /v1/capacity`: what this host has, its budget and what Ferry's containers commit (capacity.ts). */
export function capacityRouter(deps: CapacityRouteDeps): Router {
  const router = Router();
  router.get(PATHS.capacity, async (req, res) => {
    onlyParameters(req, []);
    requireEmptyBody(res);
    res.json(await deps.capacity());
  });
  return router;
}
