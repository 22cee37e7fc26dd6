import type { Express, Router } from 'express';
import type { AddressList, RequestVerifier } from '@ferry/auth';
import {
  SIGNED_HEADERS, createBaseApp, finishApp, healthRouter, requireAllowedSource, requireSignature, strictHeaders, type Readiness,
} from '@ferry/http';
import type { Logger } from '@ferry/log';
import type { EventProjector } from './consumer.ts';
import type { EnrollmentProof } from './enrollment.ts';
import type { Registry } from './registry.ts';
import { enrollRouter, registryAction, registryRouter } from './routes.ts';

// `/readyz`'s shapes; a `down` check makes the registry degraded (it still serves).
export type { CheckResult, Readiness } from '@ferry/http';

export interface RegistryDeps {
  logger: Logger;
  /** Verifies `/v1` requests: the trust file's keys, and the enrolled host keys (the registry's `hostScope`). */
  verifier: RequestVerifier;
  registry: Registry;
  /** Checks that an enrollment is signed by the key it presents (`POST /v1/enroll`). */
  enrollment: EnrollmentProof;
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
  app.use('/v1', requireAllowedSource({ ...(deps.allow ? { allow: deps.allow } : {}) }), strictHeaders(SIGNED_HEADERS));
  // Before the signature check: an enrollment is signed by the key it brings.
  app.use(enrollRouter({ registry: deps.registry, proof: deps.enrollment }));
  app.use('/v1', requireSignature(deps.verifier, { action: registryAction }));
  app.use(registryRouter({ registry: deps.registry, ...(deps.projector ? { projector: deps.projector } : {}) }));
  return finishApp(app);
}
