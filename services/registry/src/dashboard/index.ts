import { readFileSync } from 'node:fs';
import { Router, type RequestHandler, type Response } from 'express';
import type { AddressList } from '@ferry/auth';
import { requireAllowedSource } from '@ferry/http';
import { FerryError } from '@ferry/protocol';
import type { RegistryChange, RegistryView } from '../view.ts';
import { dashboardAccess, requireDashboardHost } from './access.ts';
import { PAGE } from './page.ts';
import { dashboardChange, dashboardState, feedEntry, type DashboardChange, type FeedEntry } from './shape.ts';
import { EventStream, type EventStreamOptions } from './stream.ts';

export type { DashboardChange, DashboardService, DashboardState, FeedEntry } from './shape.ts';

export interface DashboardOptions {
  view: RegistryView;
  /** FERRY_DASHBOARD_TOKEN. Without it the dashboard is open to whoever reaches the listener. */
  token?: string;
  /** FERRY_ALLOW_CIDRS: the dashboard shows the fleet, so it honours the API's allowlist too. */
  allow?: AddressList;
  /**
   * FERRY_DASHBOARD_HOSTS: the names the dashboard answers to (any IP address passes too);
   * default `localhost`, `127.0.0.1`, `[::1]`. Others get `421 FERRY_ERR_MISDIRECTED_REQUEST`.
   */
  hosts?: readonly string[];
  /** Tuning of the live stream; the defaults suit a browser on a LAN. */
  stream?: Partial<EventStreamOptions>;
  /**
   * FERRY_DASHBOARD_MAX_STREAMS: live streams open at once (default {@link DEFAULT_MAX_STREAMS});
   * one more gets `503 FERRY_ERR_TOO_MANY_STREAMS`.
   */
  maxStreams?: number;
  /** How often open pages get the hosts' heartbeat times (a heartbeat is not a change). Default 5 s. */
  heartbeatRefreshMs?: number;
}

/** The dashboard's routes, plus `close()` to end its live streams before the server stops. */
export interface DashboardRouter extends Router {
  close(): void;
}

const FEED_LENGTH = 100;
/** Each stream holds a subscription and up to `maxQueuedBytes` of events: their number is bounded too. */
export const DEFAULT_MAX_STREAMS = 100;
/** What a stream refused for their number is told to wait before asking again. */
const RETRY_AFTER_SECONDS = 10;
const STREAM_DEFAULTS: EventStreamOptions = { heartbeatMs: 15_000, maxQueuedBytes: 1024 * 1024, retryMs: 2_000 };

/**
 * The registry's read-only dashboard, mounted at `/`:
 * - `GET /` one HTML page; its script and style are same-origin files (`/dashboard/app.js`,
 *   `/dashboard/app.css`), so a CSP without `unsafe-inline` allows them;
 * - `GET /dashboard/state` the state as JSON (hosts, services, deployments, recent events);
 * - `GET /dashboard/events` server-sent events: a `snapshot` first, then `host`, `service`,
 *   `deployment` and `event` changes as they happen.
 * Everything it serves passes through {@link dashboardState}, which leaves out environment values.
 */
export function dashboardRouter(options: DashboardOptions): DashboardRouter {
  const { view } = options;
  const streamOptions = { ...STREAM_DEFAULTS, ...options.stream };
  const assets = {
    script: readFileSync(new URL('./assets/app.js', import.meta.url)),
    style: readFileSync(new URL('./assets/app.css', import.meta.url)),
  };
  const host = requireDashboardHost(options.hosts);
  const source = requireAllowedSource(options.allow ? { allow: options.allow } : {});
  const access = dashboardAccess(options.token);
  const streams = new Set<EventStream>();
  const maxStreams = options.maxStreams ?? DEFAULT_MAX_STREAMS;
  // Counted from the request on, not from the first byte: a stream waiting for its snapshot
  // already holds a subscription and whatever changes arrive meanwhile.
  let openStreams = 0;

  // The feed outlives any one page, so a page opened now still sees what happened a moment ago.
  const feed: FeedEntry[] = [];
  const stopFeed = view.subscribe((change) => {
    if (change.kind !== 'event') return;
    const entry = feedEntry(change.data);
    if (!entry || feed.some((known) => known.id === entry.id)) return;
    // By event time, not arrival: a projection rebuild replays old events, which must not bury new
    // ones; of two with the same time, the one that came later is shown above.
    const at = feed.findIndex((known) => known.time <= entry.time);
    feed.splice(at === -1 ? feed.length : at, 0, entry);
    feed.length = Math.min(feed.length, FEED_LENGTH);
  });

  // The view announces hosts that register or get lost, not every heartbeat (that would be a
  // change per host every few seconds). While a page is open, one shared read sends the hosts
  // whose last heartbeat moved, so "last seen" stays true without a stream per heartbeat.
  const lastSeen = new Map<string, string>();
  let refreshing = false;
  const refresh = setInterval(() => {
    if (streams.size === 0 || refreshing) return;
    refreshing = true;
    view.snapshot().then((snapshot) => {
      for (const host of snapshot.hosts) {
        if (lastSeen.get(host.id) === host.lastSeenAt) continue;
        lastSeen.set(host.id, host.lastSeenAt);
        for (const stream of streams) stream.send('host', host);
      }
    }, () => {
      // The next tick reads again; meanwhile the pages keep what they have.
    }).finally(() => {
      refreshing = false;
    });
  }, options.heartbeatRefreshMs ?? 5_000).unref();

  const router = Router() as DashboardRouter;
  router.get('/', host, source, access, (_req, res) => {
    page(res, 'text/html; charset=utf-8', PAGE);
  });
  router.get('/dashboard/app.js', host, source, access, (_req, res) => {
    page(res, 'text/javascript; charset=utf-8', assets.script);
  });
  router.get('/dashboard/app.css', host, source, access, (_req, res) => {
    page(res, 'text/css; charset=utf-8', assets.style);
  });
  router.get('/dashboard/state', host, source, access, (async (_req, res) => {
    const snapshot = await view.snapshot();
    res.setHeader('Cache-Control', 'no-store');
    res.json(dashboardState(snapshot, [...feed]));
  }) satisfies RequestHandler);

  router.get('/dashboard/events', host, source, access, (async (req, res) => {
    if (openStreams >= maxStreams) {
      res.setHeader('Retry-After', String(RETRY_AFTER_SECONDS));
      throw new FerryError('FERRY_ERR_TOO_MANY_STREAMS', { details: { limit: maxStreams } });
    }
    openStreams += 1;
    res.once('close', () => {
      openStreams -= 1;
    });
    // Subscribe before reading the snapshot and replay what arrived meanwhile: a change is then
    // either in the snapshot or after it, never lost between the two. The page applies changes
    // by id, so one that is in both is harmless.
    const early: DashboardChange[] = [];
    let deliver = (change: DashboardChange): void => {
      early.push(change);
    };
    const unsubscribe = view.subscribe((change: RegistryChange) => {
      const shown = dashboardChange(change);
      if (shown) deliver(shown);
    });
    res.once('close', unsubscribe);
    let snapshot;
    try {
      snapshot = await view.snapshot();
    } catch (err) {
      unsubscribe();
      throw err;
    }
    if (req.destroyed || res.writableEnded) return;
    const stream = new EventStream(res, streamOptions);
    streams.add(stream);
    res.once('close', () => streams.delete(stream));
    stream.send('snapshot', dashboardState(snapshot, [...feed]));
    for (const change of early.splice(0)) stream.send(change.kind, change.data);
    deliver = (change) => stream.send(change.kind, change.data);
  }) satisfies RequestHandler);

  router.close = () => {
    clearInterval(refresh);
    stopFeed();
    for (const stream of streams) stream.end();
    streams.clear();
  };
  return router;
}

function page(res: Response, contentType: string, body: string | Buffer): void {
  res.setHeader('Content-Type', contentType);
  res.setHeader('Cache-Control', 'no-store');
  // Stricter than the service-wide policy: the page needs its own script, style and stream only.
  res.setHeader('Content-Security-Policy', CSP);
  res.send(body);
}

const CSP = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "img-src 'self' data:",
  "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
].join('; ');
