import type { Logger } from '@ferry/log';
import { createHaproxyProxy, type Proxy, type ProxySettings } from '@ferry/proxy';
import type { Check } from './readiness.ts';

/** How often a receiver makes sure its HAProxy answers (a dead one is started again and reconciled). */
export const PROXY_CHECK_INTERVAL_MS = 5_000;

export interface ProxyKeeper {
  proxy: Proxy;
  /** Readiness: the last periodic check's verdict (never starts anything itself). */
  check: Check;
  close(): Promise<void>;
}

/**
 * The host's proxy for the receiver's lifetime: started (or adopted) before the receiver serves,
 * checked on an interval, and left running at close — it keeps serving the routes while the
 * receiver restarts, and the next receiver adopts it.
 */
export async function startProxy(settings: ProxySettings, log: Logger, intervalMs = PROXY_CHECK_INTERVAL_MS): Promise<ProxyKeeper> {
  const proxy = createHaproxyProxy({ ...settings, onWarning: (message) => log.warn({ proxyDir: settings.dir }, message) });
  await proxy.start();
  log.info({ http: settings.http, https: settings.https ?? null, dir: settings.dir }, 'proxy running');
  let state: { up: boolean; since: string } = { up: true, since: new Date().toISOString() };
  let running: Promise<void> | undefined;
  const tick = (): void => {
    // One check at a time: a slow restart is not overlapped by the next tick.
    running ??= proxy.check().then((up) => {
      if (up !== state.up) {
        state = { up, since: new Date().toISOString() };
        if (up) log.info('proxy answers again; its routes were reconciled');
        else log.error('proxy does not answer and could not be started again');
      }
    }).finally(() => { running = undefined; });
  };
  const timer = setInterval(tick, intervalMs);
  timer.unref();
  return {
    proxy,
    check: () => Promise.resolve(state.up ? { status: 'up', since: state.since } : { status: 'down', reason: 'FERRY_ERR_PROXY_UNAVAILABLE', since: state.since }),
    close: async () => {
      clearInterval(timer);
      await running;
      await proxy.close();
    },
  };
}
