import { z } from 'zod';
import { HealthCheckSchema, effectiveStrategy, type HealthCheck, type ServiceSpec } from './manifest.ts';
import { DEFAULT_DRAIN_MS, MAX_DRAIN_MS, RouteSchema, type Route, type UpdateStrategy } from './route.ts';

/**
 * What a routed container carries in its `ferry.route` label (LABELS.route): enough to switch
 * traffic to it again without its manifest — a manual rollback starts the kept container, checks
 * it through its published port and switches the proxy to it; a restarted receiver finishes a
 * switch from it. Written by the receiver; read back as untrusted text (anyone with the engine's
 * socket can relabel a container), so it is parsed, never evaluated.
 */
export const RouteLabelSchema = z.strictObject({
  route: RouteSchema,
  strategy: z.enum(['stop-first', 'start-first']),
  drainMs: z.int().min(0).max(MAX_DRAIN_MS),
  health: HealthCheckSchema.optional(),
});
export type RouteLabel = z.infer<typeof RouteLabelSchema>;

/** The label of a routed service's container; undefined for a service without a route. */
export function routeLabelOf(spec: Pick<ServiceSpec, 'route' | 'strategy' | 'drain' | 'health'>): RouteLabel | undefined {
  if (!spec.route) return undefined;
  return { route: spec.route, strategy: effectiveStrategy(spec), drainMs: spec.drain ?? DEFAULT_DRAIN_MS, ...(spec.health ? { health: spec.health } : {}) };
}

/** Parses a `ferry.route` label; undefined when absent or not one the receiver wrote. */
export function parseRouteLabel(text: string | undefined): RouteLabel | undefined {
  if (text === undefined || text.length > 16_384) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = RouteLabelSchema.safeParse(value);
  return parsed.success ? parsed.data : undefined;
}

/**
 * A routed container's check as the receiver probes it: through the port its route's `port` is
 * published on at 127.0.0.1. An http check keeps its scheme, path and query and goes to
 * `127.0.0.1:<published>`; a tcp check connects to the published port; a cmd check runs inside
 * the container and stays as it is. The check's own host and port name the container's side.
 */
export function checkThroughPublished(check: HealthCheck, publishedPort: number): HealthCheck {
  if (check.type === 'tcp') return { ...check, host: '127.0.0.1', port: publishedPort };
  if (check.type !== 'http') return check;
  const url = new URL(check.url);
  return { ...check, url: `${url.protocol}//127.0.0.1:${publishedPort}${url.pathname}${url.search}` };
}

/** The proxy's name for a container's upstream: the container id's first 12 hex digits. */
export function upstreamName(containerId: string): string {
  const name = containerId.slice(0, 12);
  if (!/^[0-9a-f]{12}$/.test(name)) throw new Error(`not a container id: ${containerId.slice(0, 64)}`);
  return name;
}

export type { Route, UpdateStrategy };
