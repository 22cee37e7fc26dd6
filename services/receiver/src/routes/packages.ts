import { Router } from 'express';
import type { Manifest } from '@ferry/protocol';
import { FerryError, PATHS } from '@ferry/protocol';
import type { AuthLocals } from '@ferry/http';
import type { Deployer } from '../deploy/engine.ts';
import type { PolicyGate } from '../policy/index.ts';
import { receiveMultipart } from '../upload/multipart.ts';

export interface PackagesDeps {
  deployer: Deployer;
  spoolDir: string;
  maxPackageBytes: number;
  policy: PolicyGate;
}

/** `POST /v1/packages`: the one-shot upload; answers when the deployment has an outcome. */
export function packagesRouter(deps: PackagesDeps): Router {
  const router = Router();
  router.post(PATHS.packages, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    let manifest: Manifest | undefined;
    const received = await receiveMultipart(req, {
      signedDigest: auth.contentDigest,
      spoolDir: deps.spoolDir,
      maxPackageBytes: deps.maxPackageBytes,
      // A refusal here stops the package from being spooled; the upload is drained, then answered 403.
      onManifest: (m) => { manifest = m; deps.policy.admit(m, auth); },
    }).catch((err: unknown) => {
      if (manifest && err instanceof FerryError) deps.deployer.rejected(manifest, err);
      throw err;
    });
    res.status(200).json(await deps.deployer.deploy(received));
  });
  return router;
}
