import { Router } from 'express';
import { PATHS } from '@ferry/protocol';
import type { ReleaseStore } from '../releases/store.ts';
import { releasesView } from '../releases/view.ts';
import { readableBy } from './readable.ts';
import { onlyParameters, requireEmptyBody } from './services.ts';

export interface ReleasesDeps {
  releases: ReleaseStore;
}

/**
 * `GET /v1/releases`: the releases this host retains, newest first (a read, like the journal's),
 * of the services the key may read only.
 */
export function releasesRouter(deps: ReleasesDeps): Router {
  const router = Router();
  router.get(PATHS.releases, (req, res) => {
    onlyParameters(req, []);
    requireEmptyBody(res);
    const readable = readableBy(res);
    res.json(releasesView(deps.releases.list().filter((r) => readable(r.service))));
  });
  return router;
}
