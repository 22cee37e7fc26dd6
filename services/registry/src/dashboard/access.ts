import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Request, RequestHandler, Response } from 'express';
import { FerryError } from '@ferry/protocol';

/** The cookie a browser holds after opening the dashboard once with `?token=`. */
export const SESSION_COOKIE = 'ferry_dashboard';
const SESSION_MAX_AGE_SECONDS = 12 * 60 * 60;
const TOKEN_SHAPE = /^[\x21-\x7e]{16,256}$/;

/**
 * Guards the dashboard with FERRY_DASHBOARD_TOKEN. A request passes with `Authorization: Bearer
 * <token>`, with the session cookie, or with `?token=<token>`; on the page itself the query form
 * answers with the cookie and a redirect to the same URL without the token, so the token leaves the
 * address bar and the history. Without a token every request passes: the registry then relies on
 * listening on loopback only.
 */
export function dashboardAccess(token: string | undefined): RequestHandler {
  if (token === undefined) return (_req, _res, next) => next();
  if (!TOKEN_SHAPE.test(token)) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: 'FERRY_DASHBOARD_TOKEN must be 16–256 printable characters without spaces' });
  }
  const expected = digest(token);
  // The cookie holds a value derived from the token, not the token: a leaked cookie cannot be
  // replayed as a bearer token, and changing the token ends every session.
  const session = createHmac('sha256', token).update('ferry-dashboard-session-v1').digest('base64url');
  const expectedSession = digest(session);

  return (req, res, next) => {
    if (matches(bearer(req), expected) || matches(cookie(req, SESSION_COOKIE), expectedSession)) {
      next();
      return;
    }
    const fromQuery = req.query.token;
    if (typeof fromQuery === 'string' && matches(fromQuery, expected)) {
      setSessionCookie(req, res, session);
      if (req.method === 'GET' && req.path === '/') {
        res.setHeader('Cache-Control', 'no-store');
        res.redirect(303, withoutToken(req.originalUrl));
        return;
      }
      next();
      return;
    }
    res.setHeader('WWW-Authenticate', 'Bearer realm="ferry-dashboard"');
    throw new FerryError('FERRY_ERR_AUTH_MISSING', {
      message: 'The dashboard needs FERRY_DASHBOARD_TOKEN: send Authorization: Bearer <token>, or open /?token=<token> once',
    });
  };
}

// Hashing both sides gives equal lengths, which timingSafeEqual needs, without leaking the length.
function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function matches(given: string | undefined, expected: Buffer): boolean {
  return given !== undefined && timingSafeEqual(digest(given), expected);
}

function bearer(req: Request): string | undefined {
  return /^Bearer (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
}

function cookie(req: Request, name: string): string | undefined {
  for (const pair of (req.headers.cookie ?? '').split(';')) {
    const at = pair.indexOf('=');
    if (at > 0 && pair.slice(0, at).trim() === name) return pair.slice(at + 1).trim();
  }
  return undefined;
}

function setSessionCookie(req: Request, res: Response, session: string): void {
  const secure = req.secure ? '; Secure' : '';
  res.append('Set-Cookie', `${SESSION_COOKIE}=${session}; Path=/; Max-Age=${SESSION_MAX_AGE_SECONDS}; HttpOnly; SameSite=Strict${secure}`);
}

function withoutToken(originalUrl: string): string {
  const url = new URL(originalUrl, 'http://dashboard.invalid');
  url.searchParams.delete('token');
  return `${url.pathname}${url.search}`;
}
