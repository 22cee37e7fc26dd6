import { FerryError, ROUTE_HOST_PATTERN, ROUTE_PATH_PATTERN, SERVICE_NAME_PATTERN, type Route } from '@ferry/protocol';
import type { Upstream } from './types.ts';

/**
 * Everything that ends up in a runtime command is checked here first. HAProxy's CLI splits a line
 * on spaces and on ";" and takes "\" as an escape, so a name that could hold any of them could
 * smuggle a second command: only the characters each kind of name needs get through.
 */

/** An upstream's name: the container id's first 12 hex digits (up to the whole id). */
export const UPSTREAM_NAME_PATTERN = /^[a-f0-9]{12,64}$/;
/** `127.0.0.1:8080`: an IPv4 address and a port, as the upstream's container is published. */
const ADDRESS_PATTERN = /^((?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}):(\d{1,5})$/;
/** What any argument of a runtime command may hold at all (paths, names, map keys). */
const TOKEN_PATTERN = /^[A-Za-z0-9._~:/@-]+$/;

function refuse(what: string): FerryError {
  return new FerryError('FERRY_ERR_BAD_REQUEST', { message: `Refused by the proxy: ${what}` });
}

export function checkService(service: string): void {
  if (typeof service !== 'string' || !SERVICE_NAME_PATTERN.test(service)) throw refuse('not a service name');
}

export function checkUpstreamName(name: string): void {
  if (typeof name !== 'string' || !UPSTREAM_NAME_PATTERN.test(name)) throw refuse('an upstream name is 12 to 64 lowercase hex digits');
}

export function checkHost(host: string): void {
  if (typeof host !== 'string' || !ROUTE_HOST_PATTERN.test(host)) throw refuse('not a lowercase DNS host name');
}

/** The parts of an address, or a refusal. */
export function parseAddress(address: string): { ip: string; port: number } {
  const m = typeof address === 'string' ? ADDRESS_PATTERN.exec(address) : null;
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) throw refuse('an upstream address is an IPv4 address and a port, e.g. 127.0.0.1:8080');
  return { ip: m[1], port };
}

export function checkUpstream(upstream: Upstream): void {
  if (typeof upstream !== 'object' || upstream === null) throw refuse('not an upstream');
  checkUpstreamName(upstream.name);
  parseAddress(upstream.address);
  if (!Number.isInteger(upstream.weight) || upstream.weight < 0 || upstream.weight > 256) throw refuse('a weight is a whole number from 0 to 256');
}

export function checkRoute(route: Route): void {
  if (typeof route !== 'object' || route === null) throw refuse('not a route');
  if (route.host !== undefined) checkHost(route.host);
  if (route.path !== undefined) {
    if (typeof route.path !== 'string' || route.path.length > 256 || !ROUTE_PATH_PATTERN.test(route.path)
      || route.path.split('/').some((s) => s === '.' || s === '..')) throw refuse('not a path prefix');
  }
  if (route.host === undefined && route.path === undefined) throw refuse('a route needs a host, a path, or both');
  if (route.tls === true && route.host === undefined) throw refuse('TLS needs a host name');
  if (!Number.isInteger(route.port) || route.port < 1 || route.port > 65535) throw refuse('not a port');
}

/** The last line of defence: every argument of every command sent passes this. */
export function checkToken(token: string): void {
  if (!TOKEN_PATTERN.test(token)) {
    throw new FerryError('FERRY_ERR_PROXY_COMMAND', { message: 'Refused to send a runtime command argument with characters outside [A-Za-z0-9._~:/@-]' });
  }
}

/** A directory HAProxy's files live in: its path goes into commands and the config unquoted. */
export function checkDirPath(dir: string): void {
  if (!dir.startsWith('/') || !TOKEN_PATTERN.test(dir)) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: 'The proxy directory must be an absolute path of letters, digits and . _ ~ : @ - /' });
  }
}
