import { isIPv4 } from 'node:net';
import { parsePort, type HealthCheck, type ServiceSpec } from './manifest.ts';

/**
 * The port a health check aimed at the target host's loopback waits on, when the container
 * cannot answer there: on the bridge network a container's ports reach the host only when they
 * are published, so such a check can only fail (or, worse, pass against some other process).
 * Undefined when the check can reach the container, or when that cannot be told from the spec
 * (another address, a `cmd` check, a port published at all).
 */
export function unpublishedHealthPort(spec: Pick<ServiceSpec, 'network' | 'ports' | 'health'> & { route?: unknown }): number | undefined {
  // A routed container's check goes through the route's published port (checkThroughPublished).
  if (spec.network !== 'bridge' || spec.route !== undefined) return undefined;
  const target = healthTarget(spec.health);
  if (!target || !isLoopback(target.host)) return undefined;
  const published = (spec.ports ?? []).some((text) => {
    const port = parsePort(text);
    return port?.protocol === 'tcp' && port.hostPort === target.port;
  });
  return published ? undefined : target.port;
}

/** What to say about it, in the words of the place the spec came from. */
export function unpublishedHealthPortHint(port: number, spelling: 'flags' | 'file' = 'flags'): string {
  const fix = spelling === 'flags' ? `add -p ${port}:${port} or --network host` : `add ports: ["${port}:${port}"] or network: host`;
  return `the container runs on the bridge network and publishes no port ${port}: ${fix}`;
}

function healthTarget(check: HealthCheck | undefined): { host: string; port: number } | undefined {
  if (check?.type === 'tcp') return { host: check.host, port: check.port };
  if (check?.type !== 'http') return undefined;
  let url: URL;
  try {
    url = new URL(check.url);
  } catch {
    return undefined;
  }
  const port = url.port !== '' ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
  return { host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port };
}

function isLoopback(host: string): boolean {
  const name = host.toLowerCase().replace(/\.$/, '');
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  if (isIPv4(name)) return name.startsWith('127.');
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(name)?.[1];
  if (mapped !== undefined) return isIPv4(mapped) && mapped.startsWith('127.');
  // A URL spells an IPv4-mapped address in hex: [::ffff:127.0.0.1] is ::ffff:7f00:1.
  return /^::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}$/.test(name) || name === '::1' || /^(?:0{1,4}:){7}0{0,3}1$/.test(name);
}
