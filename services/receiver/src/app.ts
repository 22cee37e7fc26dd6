import type { Express } from 'express';
import type { RequestVerifier, SigningKey } from '@ferry/auth';
import { SIGNED_HEADERS, createBaseApp, finishApp, identityRouter, minimumBodyRate, requireAllowedSource, requireSignature, strictHeaders, type SecurityOptions } from '@ferry/http';
import type { Logger } from '@ferry/log';
import type { CapacityReport } from '@ferry/protocol';
import type { ReceiverMetrics } from '@ferry/metrics';
import type { Deployer } from './deploy/engine.ts';
import type { Readiness } from './readiness.ts';
import { layersRouter, type LayerInventory } from './layers/index.ts';
import { countUploads, healthRouter, metricsRouter } from './routes/health.ts';
import { deploymentsRouter } from './routes/deployments.ts';
import { packagesRouter } from './routes/packages.ts';
import { receiverAction, servicesRouter } from './routes/services.ts';
import { releasesRouter } from './routes/releases.ts';
import { capacityRouter } from './routes/capacity.ts';
import { uploadsRouter } from './routes/uploads.ts';
import type { Admission } from './upload/admission.ts';
import type { UploadStore } from './upload/sessions.ts';
import type { StreamStore } from './upload/streams.ts';
import { streamsRouter } from './routes/streams.ts';
import { canaryRouter } from './routes/canary.ts';
import type { CanaryControl } from './deploy/canary.ts';

export interface ReceiverDeps {
  logger: Logger;
  verifier: RequestVerifier;
  deployer: Deployer;
  hostId: string;
  /** The receiver's own key: it signs `GET /v1/identity`, from which senders learn the audience. */
  hostKey: SigningKey;
  version: string;
  /** Where one-shot uploads are spooled while they are hashed. */
  spoolDir: string;
  /** The one admission of a manifest (grant, disk, policy), which every upload route goes through before taking bytes. */
  admission: Admission;
  /** Resumable upload sessions; without it the receiver offers only the one-shot upload. */
  uploads?: UploadStore;
  /** Streamed uploads, loaded as they arrive; without it the routes do not exist (404). */
  streams?: StreamStore;
  /** Source allowlist, body rate and the hook every auth refusal calls (for a metric). */
  security?: SecurityOptions;
  /** Dependency checks behind `GET /readyz` (readiness.ts). */
  readiness?: () => Promise<Readiness>;
  /** Served at `GET /metrics`, fed by upload requests here and by events and auth hooks in main.ts. */
  metrics?: ReceiverMetrics;
  /** FERRY_METRICS_TOKEN: when set, `/metrics` needs it as a bearer token. */
  metricsToken?: string;
  /** Answers `POST /v1/layers` (which layers the engine holds); the route exists only with it. */
  layers?: LayerInventory;
  /** Answers `GET /v1/capacity` (capacity.ts); the route exists only with it. */
  capacity?: () => Promise<CapacityReport>;
  /** Canaries in progress: `POST /v1/services/:name/canary/promote|abort` exists only with it. */
  canaries?: CanaryControl;
}

/** The receiver's HTTP surface, with no listening and no environment: main.ts and tests wire it. */
export function createApp(deps: ReceiverDeps): Express {
  const app = createBaseApp(deps.logger);
  // /healthz and /readyz answer probes, which hold no key and may sit outside the allowlist.
  app.use(healthRouter(deps));
  if (deps.metrics) app.use(countUploads(deps.metrics));
  // Everything below /healthz: the source first, then the head's framing, then the signature.
  app.use(requireAllowedSource(deps.security ?? {}), strictHeaders(SIGNED_HEADERS));
  // A scraper holds no key either, but what it reads is for the allowed networks only.
  app.use(metricsRouter(deps));
  app.use(identityRouter(deps));
  app.use('/v1', requireSignature(deps.verifier, { action: receiverAction, ...deps.security, beforeBody: () => deps.deployer.assertDiskSpace() }), minimumBodyRate(deps.security?.bodyRate ?? { minBytesPerSecond: 0, windowMs: 1000 }));
  app.use(packagesRouter(deps));
  app.use(deploymentsRouter({ journal: deps.deployer.journal }), servicesRouter(deps));
  if (deps.deployer.releases) app.use(releasesRouter({ releases: deps.deployer.releases }));
  if (deps.capacity) app.use(capacityRouter({ capacity: deps.capacity }));
  if (deps.canaries) app.use(canaryRouter({ canaries: deps.canaries }));
  if (deps.layers) app.use(layersRouter({ layers: deps.layers }));
  if (deps.uploads) app.use(uploadsRouter({ deployer: deps.deployer, uploads: deps.uploads, admission: deps.admission }));
  if (deps.streams) app.use(streamsRouter({ deployer: deps.deployer, streams: deps.streams, admission: deps.admission }));
  return finishApp(app);
}
