import { FerryError } from '@ferry/protocol';

/** What nats.js's `connect()` needs from a FERRY_NATS_URL: the servers, and the credentials apart. */
export interface NatsConnectTarget {
  /** The servers without their userinfo. */
  servers: string[];
  user?: string;
  pass?: string;
  token?: string;
}

// scheme://userinfo@rest, the userinfo up to the last "@" so that a password holding an unencoded
// "@" is still hidden whole.
const WITH_USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)(.*)@/i;

/**
 * Splits a FERRY_NATS_URL (comma-separated servers, each `nats://[user:password@]host:port` or
 * `nats://token@host:port`) into servers and credentials. nats.js reads no credentials from a
 * server URL: it would connect without them and be refused, so they are passed as options.
 *
 * @throws FerryError FERRY_ERR_CONFIG when a server URL with credentials cannot be parsed or two
 * servers carry different credentials (a connection has one identity for every server it tries).
 */
export function natsConnectTarget(url: string): NatsConnectTarget {
  const servers: string[] = [];
  let credentials: { user?: string; pass?: string; token?: string } | undefined;
  for (const server of url.split(',').map((s) => s.trim()).filter(Boolean)) {
    const userinfo = WITH_USERINFO.exec(server)?.[2];
    if (userinfo === undefined) {
      servers.push(server);
      continue;
    }
    let parsed: URL;
    let user: string;
    let pass: string;
    try {
      parsed = new URL(server);
      user = decodeURIComponent(parsed.username);
      pass = decodeURIComponent(parsed.password);
    } catch {
      // No cause: Node's URL error carries the whole input, password included.
      throw new FerryError('FERRY_ERR_CONFIG', { message: `FERRY_NATS_URL: cannot parse ${redactNatsUrl(server)}` });
    }
    // nats://secret@host is a token, as in the NATS command line tools and the Go client.
    const found = userinfo.includes(':') ? { user, pass } : { token: user };
    // Both sides come from the operator's own setting: no caller learns anything from the timing.
    if (credentials && !sameCredentials(credentials, found)) {
      throw new FerryError('FERRY_ERR_CONFIG', { message: `FERRY_NATS_URL: the servers in ${redactNatsUrl(url)} carry different credentials` });
    }
    credentials = found;
    servers.push(`${parsed.protocol}//${parsed.host}`);
  }
  return { servers, ...credentials };
}

/**
 * The URL with every password (or token) replaced by `***`, for logs and messages:
 * `nats://ferry-publisher:***@127.0.0.1:4222`. Every comma-separated server is redacted.
 */
export function redactNatsUrl(url: string): string {
  return url.split(',').map((server) => server.replace(WITH_USERINFO, (_match, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    return `${scheme}${colon === -1 ? '***' : `${userinfo.slice(0, colon)}:***`}@`;
  })).join(',');
}

function sameCredentials(a: { user?: string; pass?: string; token?: string }, b: { user?: string; pass?: string; token?: string }): boolean {
  return JSON.stringify([a.user, a.pass, a.token]) === JSON.stringify([b.user, b.pass, b.token]);
}
