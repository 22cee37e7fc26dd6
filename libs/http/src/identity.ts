import { Router } from 'express';
import { isChallenge, signIdentity, type SigningKey } from '@ferry/auth';
import { FerryError, PATHS } from '@ferry/protocol';

export interface IdentityDeps {
  hostId: string;
  version: string;
  /** The service's own key: the identity is signed with it over the caller's challenge. */
  hostKey: SigningKey;
}

/**
 * `GET /v1/identity?challenge=…`: who this service is, signed with its host key over a challenge
 * the caller chose, so an answer cannot be replayed from elsewhere. Unsigned requests are welcome:
 * a caller asks this before it knows the audience to sign for.
 */
export function identityRouter(deps: IdentityDeps): Router {
  const router = Router();
  router.get(PATHS.identity, (req, res) => {
    const challenge = req.query.challenge;
    if (!isChallenge(challenge)) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'challenge: 22–128 characters of [A-Za-z0-9_-], fresh for every request' });
    res.setHeader('Cache-Control', 'no-store');
    res.json({ identity: signIdentity(deps.hostKey, { host: deps.hostId, version: deps.version }, challenge) });
  });
  return router;
}
