import { createHash, timingSafeEqual } from 'node:crypto';
import { Router, type RequestHandler } from 'express';
import { trackUpload, type ReceiverMetrics } from '@ferry/metrics';
import { FerryError, PATHS } from '@ferry/protocol';
import type { Readiness } from '../readiness.ts';

// `/healthz` and `/readyz` are the same for every Ferry service.
export { healthRouter } from '@ferry/http';

export interface HealthDeps {
  hostId: string;
  version: string;
  /** The dependency checks behind `/readyz`; without it the receiver reports ready with no checks. */
  readiness?: () => Promise<Readiness>;
  /** Served at `/metrics`; without it that path is a 404. */
  metrics?: ReceiverMetrics;
  /** When set, `/metrics` wants `Authorization: Bearer <token>`. */
  metricsToken?: string;
}

/**
 * `/metrics` in the Prometheus text format. No signature (a scraper holds no Ferry key); mounted
 * after the source allowlist, and behind a bearer token when FERRY_METRICS_TOKEN is set.
 */
export function metricsRouter(deps: Pick<HealthDeps, 'metrics' | 'metricsToken'>): Router {
  const router = Router();
  const metrics = deps.metrics;
  if (metrics) {
    const token = deps.metricsToken === undefined ? undefined : sha256(deps.metricsToken);
    router.get(PATHS.metrics, async (req, res) => {
      if (token && !bearerMatches(req.headers.authorization, token)) {
        throw new FerryError('FERRY_ERR_AUTH_MISSING', { message: 'GET /metrics needs Authorization: Bearer <FERRY_METRICS_TOKEN>' });
      }
      const { contentType, body } = await metrics.render();
      res.setHeader('Content-Type', contentType);
      res.setHeader('Cache-Control', 'no-store');
      res.send(body);
    });
  }
  return router;
}

/**
 * Counts requests that carry package bytes (the one-shot upload, resumable and streamed PATCHes) in
 * `ferry_uploads_total` and `ferry_received_bytes_total`. Mounted before authentication, so a
 * refused upload is counted too.
 */
export function countUploads(metrics: ReceiverMetrics): RequestHandler {
  return (req, res, next) => {
    const path = req.path;
    const isUpload = (req.method === 'POST' && path === PATHS.packages)
      || (req.method === 'PATCH' && (path.startsWith(`${PATHS.uploads}/`) || path.startsWith(`${PATHS.streams}/`)));
    if (isUpload) trackUpload(metrics, req, res);
    next();
  };
}

// Hashing both sides gives equal lengths, which timingSafeEqual needs, without leaking the token's length.
function sha256(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function bearerMatches(header: string | undefined, expected: Buffer): boolean {
  const match = /^Bearer (\S+)$/.exec(header ?? '');
  return match?.[1] !== undefined && timingSafeEqual(sha256(match[1]), expected);
}
