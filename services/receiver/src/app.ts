import type { Express } from 'express';
import type { RequestVerifier } from '@ferry/auth';
import { createBaseApp, finishApp } from '@ferry/http';
import type { Logger } from '@ferry/log';
import { PATHS } from '@ferry/protocol';
import { requireSignature } from './auth.ts';
import type { Deployer } from './deploy/engine.ts';
import { packagesRouter } from './routes/packages.ts';

export interface ReceiverDeps {
  logger: Logger;
  verifier: RequestVerifier;
  deployer: Deployer;
  hostId: string;
  version: string;
  /** Where uploads are spooled while they are hashed. */
  spoolDir: string;
  maxPackageBytes: number;
}

/** The receiver's HTTP surface, with no listening and no environment: main.ts and tests wire it. */
export function createApp(deps: ReceiverDeps): Express {
  const app = createBaseApp(deps.logger);
  app.get(PATHS.healthz, (_req, res) => {
    res.json({ status: 'ok', host: deps.hostId, version: deps.version });
  });
  app.use('/v1', requireSignature(deps.verifier));
  app.use(packagesRouter(deps));
  return finishApp(app);
}
