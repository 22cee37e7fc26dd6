import { join } from 'node:path';
import { FerryError } from '@ferry/protocol';

/** Where everything of one proxy lives under its directory. */
export function proxyPaths(dir: string) {
  return {
    config: join(dir, 'haproxy.cfg'),
    pidFile: join(dir, 'haproxy.pid'),
    adminSocket: join(dir, 'admin.sock'),
    masterSocket: join(dir, 'master.sock'),
    hostMap: join(dir, 'hosts.map'),
    pathMap: join(dir, 'paths.map'),
    tlsMap: join(dir, 'tls.map'),
    crtList: join(dir, 'crt.list'),
    defaultCert: join(dir, 'default.pem'),
    certs: join(dir, 'certs'),
  };
}
export type ProxyPaths = ReturnType<typeof proxyPaths>;

/** `addr:port` of a listener: an IPv4 address, `[IPv6]` or `*`, and a port. */
const LISTEN_PATTERN = /^(?:(?:\d{1,3}\.){3}\d{1,3}|\[[0-9a-fA-F:.]+\]|\*):(\d{1,5})$/;

export function checkListen(what: string, value: string): void {
  const m = LISTEN_PATTERN.exec(value);
  if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${what}: an address and a port, e.g. 0.0.0.0:80 or 127.0.0.1:8080` });
  }
}

/** `addr:port` of a syslog receiver: an address (no wildcard) and a port; nothing else reaches HAProxy's `log` line. */
export function checkLogTarget(value: string): void {
  const m = LISTEN_PATTERN.exec(value);
  if (!m || value.startsWith('*') || Number(m[1]) < 1 || Number(m[1]) > 65535) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: 'the proxy log: a UDP syslog address and port, e.g. 127.0.0.1:514' });
  }
}

export interface ConfigInput {
  paths: ProxyPaths;
  http: string;
  https: string | undefined;
  slots: number;
  /** A syslog address (UDP `addr:port`) HAProxy sends one line per request to; none when undefined. */
  log?: string | undefined;
}

export function slotName(i: number): string {
  return `slot${i}`;
}

/**
 * The whole configuration, written once when HAProxy is started: the listeners, the routing by
 * maps, and a fixed set of empty "slot" backends. Routes are mapped to slots and servers added to
 * them at run time, so nothing here changes when routes do.
 */
export function renderConfig({ paths, http, https, slots, log }: ConfigInput): string {
  const lines = [
    '# Written by the Ferry receiver when it starts HAProxy; routes and servers change at run time',
    '# through the admin socket (docs/proxy.md), so this file does not list them.',
    'global',
    `  stats socket ${paths.adminSocket} mode 600 level admin`,
    '  stats timeout 30s',
    '  ssl-default-bind-options ssl-min-ver TLSv1.2',
    ...(log !== undefined ? [`  log ${log} len 4096 local0 info`] : []),
    '',
    'defaults',
    '  mode http',
    ...(log !== undefined ? ['  log global', '  option httplog'] : []),
    '  option forwardfor',
    // A connection refused by an upstream that just went away is retried on another one.
    '  option redispatch',
    '  retries 2',
    '  timeout connect 5s',
    '  timeout client 60s',
    '  timeout server 60s',
    '  timeout http-request 30s',
    '  timeout http-keep-alive 5s',
    '  timeout queue 30s',
    '  timeout tunnel 1h',
    '',
    'frontend http',
    `  bind ${http}`,
  ];
  if (https !== undefined) {
    lines.push(`  bind ${https} ssl crt-list ${paths.crtList} alpn h2,http/1.1`);
    // A TLS route's host is only served over TLS: plain requests for it are sent to https.
    lines.push(`  http-request redirect scheme https code 308 if !{ ssl_fc } { req.hdr(host),field(1,:),lower,map_str(${paths.tlsMap}) -m found }`);
  }
  lines.push(
    '  http-request set-header X-Forwarded-Proto https if { ssl_fc }',
    '  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }',
    '  http-request set-var(txn.path) path',
    '  http-request set-var(txn.route) req.hdr(host),field(1,:),lower,concat(,txn.path)',
    // Host and path first, then path alone; each map holds its longest keys first, so the first match is the longest prefix.
    `  use_backend %[var(txn.route),map_beg(${paths.hostMap})] if { var(txn.route),map_beg(${paths.hostMap}) -m found }`,
    `  use_backend %[var(txn.path),map_beg(${paths.pathMap})] if { var(txn.path),map_beg(${paths.pathMap}) -m found }`,
    '  default_backend none',
    '',
    'backend none',
    '  http-request return status 404 content-type text/plain string "No route for this host and path."',
    '',
  );
  for (let i = 0; i < slots; i++) lines.push(`backend ${slotName(i)}`, '  balance roundrobin', '');
  return lines.join('\n');
}

/** How many slots a written configuration has (what the running HAProxy was started with). */
export function slotsOf(config: string): number {
  return config.split('\n').filter((l) => /^backend slot\d+$/.test(l)).length;
}
