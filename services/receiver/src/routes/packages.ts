import { Router } from 'express';
import { PATHS } from '@ferry/protocol';
import type { AuthLocals } from '@ferry/http';
import type { Deployer } from '../deploy/engine.ts';
import type { Admission } from '../upload/admission.ts';
import { receiveMultipart } from '../upload/multipart.ts';

export interface PackagesDeps {
  deployer: Deployer;
  admission: Admission;
  spoolDir: string;
}

/** `POST /v1/packages`: the one-shot upload; answers when the deployment has an outcome. */
export function packagesRouter(deps: PackagesDeps): Router {
  const router = Router();
  router.post(PATHS.packages, async (req, res) => {
    const { auth } = res.locals as AuthLocals;
    const { admission } = deps;
    const pkg = await receiveMultipart(req, {
      spoolDir: deps.spoolDir,
      maxPackageBytes: admission.packageLimit,
      admit: async (bytes) => (await admission.admit('package', bytes, auth)).manifest,
      rejected: (manifest, error) => admission.rejected(manifest, error),
    });
    res.status(200).json(await deps.deployer.deploy(pkg));
  });
  return router;
}
