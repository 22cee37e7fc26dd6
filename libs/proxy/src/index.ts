export type { Proxy, ProxyRoute, ProxySettings, Upstream, UpstreamCounters } from './types.ts';
export { createHaproxyProxy, DEFAULT_SLOTS, MAX_SLOTS } from './haproxy.ts';
export { UPSTREAM_NAME_PATTERN } from './names.ts';
export { proxyPaths } from './config.ts';
export { haproxyPids, killHaproxy } from './process.ts';
