import { z } from 'zod';
import { parseDuration } from './duration.ts';

/**
 * How a service's traffic reaches it through the proxy on its host (docs/proxy.md): requests whose
 * host name and path prefix match go to the container's `port`, published on loopback only.
 */

/** A DNS host name as a Host header carries it, lowercase, without a port. */
export const ROUTE_HOST_PATTERN = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;
/** A path prefix: starts with "/", unreserved characters and "/" only (no query, no "..", no spaces). */
export const ROUTE_PATH_PATTERN = /^\/(?:[A-Za-z0-9._~-]+\/?)*$/;

export const RouteSchema = z.strictObject({
  host: z.string().regex(ROUTE_HOST_PATTERN, 'a lowercase DNS host name without a port').optional(),
  path: z.string().max(256).regex(ROUTE_PATH_PATTERN, 'a path prefix: "/" then letters, digits, ".", "_", "~", "-" and "/"')
    .refine((p) => !p.split('/').some((s) => s === '.' || s === '..'), 'no "." or ".." segments').optional(),
  /** The port the container listens on; the receiver publishes it on 127.0.0.1 at a port of its choosing. */
  port: z.int().min(1).max(65535),
  /** Served on the proxy's HTTPS listener with the host's certificate for `host`. */
  tls: z.boolean().optional(),
}).refine((r) => r.host !== undefined || r.path !== undefined, { message: 'a route needs a host, a path, or both' })
  .refine((r) => !r.tls || r.host !== undefined, { path: ['tls'], message: 'TLS needs a host name to choose the certificate' });
export type Route = z.infer<typeof RouteSchema>;

export const UPDATE_STRATEGIES = ['stop-first', 'start-first'] as const;
export type UpdateStrategy = (typeof UPDATE_STRATEGIES)[number];

/** `10%` or `10`: a share of requests or of responses, in percent. */
const percent = (min: number, max: number) => z.union([z.number(), z.string().regex(/^\d{1,3}(?:\.\d{1,3})?%?$/, 'a percentage, e.g. 10%')])
  .transform((v) => (typeof v === 'number' ? v : Number(v.replace('%', ''))))
  .pipe(z.number().min(min).max(max));

const duration = (maxMs: number) => z.union([z.int().min(0), z.string().max(64)])
  .transform((v, ctx) => {
    const ms = typeof v === 'number' ? v : parseDuration(v, 's');
    if (ms === undefined || ms > maxMs) { ctx.addIssue({ code: 'custom', message: 'a duration, e.g. 30s or 2m' }); return z.NEVER; }
    return ms;
  });

/**
 * A canary: the new container gets `weight` percent of the requests for `forMs`; if more than
 * `maxErrorRate` percent of its responses are 5xx (or its connections fail) it is rolled back,
 * else promoted. Counted by the proxy, not by the service.
 */
export const CanarySchema = z.strictObject({
  weight: percent(1, 99),
  forMs: duration(24 * 3_600_000),
  maxErrorRate: percent(0, 100),
  /** Fewer responses than this by the end of `forMs` is not enough to promote: the canary waits on (up to twice `forMs`), then fails. */
  minRequests: z.int().min(0).max(1_000_000).default(1),
});
export type Canary = z.infer<typeof CanarySchema>;

/** How long the old container keeps its in-flight requests after traffic moved away from it. */
export const DEFAULT_DRAIN_MS = 30_000;
export const MAX_DRAIN_MS = 3_600_000;
export const DrainSchema = duration(MAX_DRAIN_MS);
