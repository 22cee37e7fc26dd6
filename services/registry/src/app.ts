import type { Express, Router } from 'express';
import { Router as createRouter } from 'express';
import type { AddressList, RequestVerifier } from '@ferry/auth';
import { SIGNED_HEADERS, createBaseApp, finishApp, requireAllowedSource, requireSignature, strictHeaders } from '@ferry/http';
import type { Logger } from '@ferry/log';
import { PATHS } from '@ferry/protocol';
import type { EventProjector } from './consumer.ts';
import type { Registry } from './registry.ts';
import { registryRouter } from './routes.ts';

/** One dependency's state in `/readyz`; `down` makes the registry degraded (it still serves). */
export interface CheckResult {
  status: 'up' | 'down' | 'disabled';
  reason?: string;
  [detail: string]: unknown;
}

export interface Readiness {
  status: 'ready' | 'degraded';
  checks: Record<string, CheckResult>;
}

export interface RegistryDeps {
  logger: Logger;
  verifier: RequestVerifier;
  registry: Registry;
  projector?: EventProjector;
  /** The registry's id, named in `/healthz` as `host`: the audience of signed requests. */
  hostId: string;
  version: string;
  /** FERRY_ALLOW_CIDRS: sources allowed to reach `/v1`; every address when absent. */
  allow?: AddressList;
  /** Dependency checks behind `GET /readyz`. */
  readiness?: () => Promise<Readiness>;
  /**
   * The dashboard's routes, mounted at `/` before the signed `/v1` API: it authenticates its own
   * way (FERRY_DASHBOARD_TOKEN) and reads the registry through its RegistryView.
   */
  dashboard?: Router;
}

/** The registry's HTTP surface, with no listening and no environment: main.ts and tests wire it. */
export function createApp(deps: RegistryDeps): Express {
  const app = createBaseApp(deps.logger);
  app.use(healthRouter(deps));
  if (deps.dashboard) app.use('/', deps.dashboard);
  app.use('/v1', requireAllowedSource({ ...(deps.allow ? { allow: deps.allow } : {}) }), strictHeaders(SIGNED_HEADERS), requireSignature(deps.verifier));
  app.use(registryRouter({ registry: deps.registry, ...(deps.projector ? { projector: deps.projector } : {}) }));
  return finishApp(app);
}

/** `/healthz` (the process answers) and `/readyz` (Redis and NATS answer); unsigned, for probes. */
function healthRouter(deps: RegistryDeps): Router {
  const router = createRouter();
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
