import type { RequestHandler } from 'express';
import type { RequestVerifier } from '@ferry/auth';
import { continueIfExpected } from '@ferry/http';

/** What the auth middleware leaves in `res.locals` for the routes after it. */
export interface AuthLocals {
  auth: { keyId: string; contentDigest: string };
}

/**
 * Verifies the signature from the headers alone, before the body is touched; a client that sent
 * `Expect: 100-continue` is asked for the body only after this passed.
 */
export function requireSignature(verifier: RequestVerifier): RequestHandler {
  return async (req, res, next) => {
    const verified = await verifier.verify({ method: req.method, path: req.originalUrl, headers: req.headers });
    (res.locals as AuthLocals).auth = { keyId: verified.keyId, contentDigest: verified.contentDigest };
    continueIfExpected(req, res);
    next();
  };
}
