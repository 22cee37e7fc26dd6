import { Router } from 'express';
import { PATHS } from '@ferry/protocol';

/** `up` and `disabled` (not configured) are fine; `down` makes the service degraded. */
export type CheckStatus = 'up' | 'down' | 'disabled';

/** One dependency's state as `/readyz` shows it: a status, and details a human can act on. */
export interface CheckResult {
  status: CheckStatus;
  /** Why it is down, e.g. `ECONNREFUSED`, `timeout`; never a URL with credentials. */
  reason?: string;
  [detail: string]: unknown;
}

/** `degraded` still serves (events wait, stores fall back), but an operator should know. */
export interface Readiness {
  status: 'ready' | 'degraded';
  checks: Record<string, CheckResult>;
}

export interface ProbeDeps {
  /** The service's id, named as `host`: the audience of signed requests to it. */
  hostId: string;
  version: string;
  /** The dependency checks behind `/readyz`; without it the service reports ready with no checks. */
  readiness?: () => Promise<Readiness>;
}

/**
 * `/healthz` (liveness: the process answers) and `/readyz` (its dependencies answer). No signature
 * and no source check: a load balancer's probe holds no Ferry key and may come from anywhere.
 */
export function healthRouter(deps: ProbeDeps): Router {
  const router = Router();
  router.get(PATHS.healthz, (_req, res) => {
    res.json({ status: 'ok', host: deps.hostId, version: deps.version });
  });
  router.get(PATHS.readyz, async (_req, res) => {
    const readiness = deps.readiness ? await deps.readiness() : { status: 'ready' as const, checks: {} };
    res.setHeader('Cache-Control', 'no-store');
    res.status(readiness.status === 'ready' ? 200 : 503).json({ ...readiness, host: deps.hostId });
  });
  return router;
}
