export type { Proxy, ProxyRoute, ProxySettings, Upstream, UpstreamCounters } from './types.ts';
