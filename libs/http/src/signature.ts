import type { RequestHandler } from 'express';
import { authorize, clientAddress, type Action, type AddressList, type RequestVerifier, type ScopeAtTime } from '@ferry/auth';
import type { BodyRateOptions } from './guards.ts';
import { continueIfExpected } from './server.ts';
import { FerryError, HEADERS, isFerryError, type ErrorCode } from '@ferry/protocol';

/** What the auth middleware leaves in `res.locals` for the routes after it. */
export interface AuthLocals {
  /** The key that signed, the digest it signed, and its scopes in force (for a route's own checks). */
  auth: { keyId: string; contentDigest: string; scopes: ScopeAtTime[] };
}

/** What the source check leaves in `res.locals`. */
export interface SourceLocals {
  /** The client's address: the peer's, or the one trusted proxies reported in X-Forwarded-For. */
  clientAddress: string;
}

/** Headers a signed request carries once at most; two copies are a 400 before any check. */
export const SIGNED_HEADERS = [
  HEADERS.keyId, HEADERS.timestamp, HEADERS.nonce, HEADERS.contentDigest, HEADERS.signature, HEADERS.audience, HEADERS.uploadOffset, HEADERS.grant,
] as const;

export interface AuthHooks {
  /** Called with the code of every refused request (401 and 403): a metrics counter follows it. */
  onReject?: (code: ErrorCode) => void;
  /**
   * Checks of an authenticated request that has a body, run before the body is asked for (the
   * disk guard): a refusal then costs the client no upload, and no EPIPE hides the answer.
   */
  beforeBody?: () => Promise<void>;
  /**
   * What the request asks to do, checked against the key's role before the body is read; routes
   * check services and hosts themselves once they know them. Default: GET and HEAD read, the
   * rest deploy.
   */
  action?: (req: { method: string; path: string }) => Action;
}

function defaultAction(req: { method: string }): Action {
  return req.method === 'GET' || req.method === 'HEAD' ? 'read' : 'deploy';
}

/**
 * Verifies the signature from the headers alone, before the body is touched; a client that sent
 * `Expect: 100-continue` is asked for the body only after this passed.
 */
export function requireSignature(verifier: RequestVerifier, hooks: AuthHooks = {}): RequestHandler {
  return async (req, res, next) => {
    let verified;
    try {
      verified = await verifier.verify({ method: req.method, path: req.originalUrl, headers: req.headers });
      authorize(verified, (hooks.action ?? defaultAction)(req));
    } catch (err) {
      hooks.onReject?.(isFerryError(err) ? err.code : 'FERRY_ERR_INTERNAL');
      throw err;
    }
    (res.locals as AuthLocals).auth = { keyId: verified.keyId, contentDigest: verified.contentDigest, scopes: verified.scopes };
    if (hasBody(req)) await hooks.beforeBody?.();
    continueIfExpected(req, res);
    next();
  };
}

function hasBody(req: { headers: Record<string, string | string[] | undefined> }): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (typeof length === 'string' && length !== '0');
}

export interface SourceOptions extends AuthHooks {
  /** Addresses allowed to send requests; undefined or empty = every address. */
  allow?: AddressList;
  /** Peers whose X-Forwarded-For is believed. */
  trustedProxies?: AddressList;
}

/**
 * Refuses a client outside the allowlist with 403 before anything else about the request is
 * looked at. X-Forwarded-For counts only when the peer itself is a trusted proxy.
 */
export function requireAllowedSource(options: SourceOptions): RequestHandler {
  return (req, res, next) => {
    const peer = req.socket.remoteAddress ?? '';
    const client = clientAddress(peer, req.headers['x-forwarded-for'], options.trustedProxies);
    (res.locals as SourceLocals).clientAddress = client;
    if (!options.allow || options.allow.empty || options.allow.has(client)) return next();
    options.onReject?.('FERRY_ERR_FORBIDDEN_SOURCE');
    res.setHeader('Connection', 'close');
    next(new FerryError('FERRY_ERR_FORBIDDEN_SOURCE', { details: { address: client } }));
  };
}

/** A signed service's front-door settings beyond the signature (docs/receiver.md "Hardening"). */
export interface SecurityOptions extends SourceOptions {
  /** Minimum body rate of authenticated requests; without it there is none. */
  bodyRate?: BodyRateOptions;
}
