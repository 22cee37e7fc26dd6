import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
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

/** Names the dashboard answers to when FERRY_DASHBOARD_HOSTS is not set; addresses always pass. */
export const DEFAULT_DASHBOARD_HOSTS: readonly string[] = ['localhost', '127.0.0.1', '[::1]'];

/** FERRY_DASHBOARD_HOSTS when unset: the loopback names and the address or name the registry listens on. */
export function defaultDashboardHosts(listenHost: string): string[] {
  return [...DEFAULT_DASHBOARD_HOSTS, isIP(listenHost) === 6 ? `[${listenHost}]` : listenHost];
}

/**
 * FERRY_DASHBOARD_HOSTS: `name[,name…]`, each a host name or an address (IPv6 with or without
 * brackets), without a port.
 * @throws Error naming what is wrong, for the configuration's report.
 */
export function parseDashboardHosts(value: string): string[] {
  const names = value.split(',').map((name) => name.trim()).filter((name) => name !== '').map((name) => (isIP(name) === 6 ? `[${name}]` : name));
  const bad = names.filter((name) => hostNameOf(name) === undefined || /:\d+$/.test(name.replace(/^\[.*\]$/, '')));
  if (names.length === 0 || bad.length > 0) {
    throw new Error(`host names or addresses without a port, comma-separated (e.g. registry.example.com,localhost)${bad.length > 0 ? `; not one: ${bad.join(', ')}` : ''}`);
  }
  return names;
}

/**
 * Guards the dashboard against DNS rebinding: a page on a name the attacker controls, once that
 * name resolves to the registry's address, is same-origin with the dashboard for the browser and
 * could read it, but its requests carry the attacker's name in `Host`. Only the names in `allowed`
 * (FERRY_DASHBOARD_HOSTS) pass, port aside; so does any IP address, which no DNS answer can point
 * elsewhere. Anything else, a missing or malformed `Host` included, gets `421
 * FERRY_ERR_MISDIRECTED_REQUEST`.
 */
export function requireDashboardHost(allowed: readonly string[] = DEFAULT_DASHBOARD_HOSTS): RequestHandler {
  const names = new Set(allowed.map((name) => {
    const normal = hostNameOf(name);
    if (normal === undefined) throw new FerryError('FERRY_ERR_CONFIG', { message: `FERRY_DASHBOARD_HOSTS: "${name}" is not a host name or address` });
    return normal;
  }));
  return (req, _res, next) => {
    const name = hostNameOf(req.headers.host);
    if (name !== undefined && (names.has(name) || isIP(name.replace(/^\[(.*)\]$/, '$1')) !== 0)) {
      next();
      return;
    }
    throw new FerryError('FERRY_ERR_MISDIRECTED_REQUEST', {
      message: 'The dashboard does not answer to this host name: open it by a name in FERRY_DASHBOARD_HOSTS, or by address',
    });
  };
}

/**
 * The host name of a `Host` header value (`name[:port]`, `[v6][:port]`), as URLs compare it:
 * lower case, IDNs in punycode, IPv4 in dotted decimal, one trailing dot dropped; undefined when it
 * is no such value.
 */
export function hostNameOf(value: string | undefined): string | undefined {
  if (value === undefined || !/^(?:\[[0-9A-Fa-f:.]+\]|[^\s/?#@[\]:\\%]+)(?::\d{1,5})?$/.test(value)) return undefined;
  try {
    const hostname = new URL(`http://${value}/`).hostname;
    return hostname.endsWith('.') ? hostname.slice(0, -1) : hostname;
  } catch {
    return undefined;
  }
}
