import type { Route } from '@ferry/protocol';

/**
 * The host's reverse proxy as a deployment sees it. HAProxy, driven through its runtime API
 * (the admin socket): servers, weights, drain and route maps change live, never by rewriting
 * its configuration and reloading it.
 */

/** One upstream of a route: a container's port published on loopback. */
export interface Upstream {
  /** Stable within the route: the container id's first 12 hex digits. */
  name: string;
  /** `127.0.0.1:<published port>`. */
  address: string;
  /** 0–256 as HAProxy takes it; 0 receives no new requests. */
  weight: number;
}

/** What the proxy counted for one upstream since it was added (HAProxy's `show stat` row). */
export interface UpstreamCounters {
  name: string;
  /** Requests answered, by class. */
  responses: { '1xx': number; '2xx': number; '3xx': number; '4xx': number; '5xx': number; other: number };
  /** Connection and response errors the proxy saw towards this upstream (econ + eresp). */
  errors: number;
  /** Sessions open now (in-flight requests on it). */
  current: number;
  /** Sessions in all. */
  total: number;
}

export interface ProxyRoute {
  service: string;
  route: Route;
  upstreams: Upstream[];
}

/**
 * The proxy for one host. Every method is idempotent and makes HAProxy's live state and the
 * receiver's route table (kept on disk, so a restart of either is reconciled) agree.
 */
export interface Proxy {
  /** Starts HAProxy, or adopts the one already running, and reconciles every route. */
  start(): Promise<void>;
  /**
   * Whether HAProxy answers on its runtime socket; a dead one is restarted and reconciled. Servers
   * taken out of their route long enough ago (`retireMs`) are deleted here.
   */
  check(): Promise<boolean>;
  /**
   * Declares a service's route (a new one, or a changed host/path/tls); throws FERRY_ERR_ROUTE_TAKEN
   * when another service holds the same host and path, FERRY_ERR_ROUTES_FULL when no slot is left.
   */
  setRoute(service: string, route: Route): Promise<void>;
  /** Adds or updates one upstream of a service's route (weight 0 = present but sent nothing new). */
  setUpstream(service: string, upstream: Upstream): Promise<void>;
  /**
   * Stops sending new requests to the upstream and waits until its in-flight ones finished or
   * `timeoutMs` passed, then removes it. Resolves to the number of sessions still open at the end (0 = drained).
   * When `signal` aborts, the wait ends with its reason and the upstream stays in the route at weight 0.
   */
  drain(service: string, name: string, timeoutMs: number, signal?: AbortSignal): Promise<number>;
  /** Removes an upstream at once (a new container that failed never had requests, or is abandoned). */
  removeUpstream(service: string, name: string): Promise<void>;
  /** The route's upstreams' counters, as HAProxy counts them. */
  counters(service: string): Promise<UpstreamCounters[]>;
  /** Removes the route and its upstreams (the service was removed). */
  removeRoute(service: string): Promise<void>;
  /** The routes as the table has them. */
  routes(): Promise<ProxyRoute[]>;
  /** Installs or replaces the certificate (PEM: chain then key) served for `host` on the HTTPS listener. */
  setCertificate(host: string, pem: string): Promise<void>;
  close(): Promise<void>;
}

export interface ProxySettings {
  /** Where HAProxy's config, pid file, sockets, maps, certificates and the route table live (0700). */
  dir: string;
  /** `addr:port` of the HTTP listener, e.g. `0.0.0.0:80` or `127.0.0.1:18080`. */
  http: string;
  /** `addr:port` of the HTTPS listener; none when undefined. */
  https?: string | undefined;
  /** Directory of operator-provided `<host>.pem` files, installed at start. */
  certificates?: string | undefined;
  /** Route slots (HAProxy backends made at start; routes are mapped to them live). Default 64. */
  slots?: number;
  /** UDP syslog `addr:port` HAProxy logs each request to (HAProxy's httplog format); none by default. */
  log?: string | undefined;
  /** How long a server taken out of a route stays in maintenance before it is deleted (ms). Default RETIRE_MS (30 s). */
  retireMs?: number;
  /** The haproxy binary. Default `haproxy` on PATH. */
  binary?: string;
  /** Told what the proxy could not do by itself and went on without (a certificate it skipped, a failed check). */
  onWarning?: (message: string) => void;
}
