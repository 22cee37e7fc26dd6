import { SignedClient, type ClientCredentials } from '@ferry/auth';
import { FerryError, PATHS } from '@ferry/protocol';
import type { CorrectionTarget, Corrector } from './registry.ts';

const TIMEOUT_MS = 30_000;

/**
 * Drift correction by the drifted host itself: a signed `POST {url}/v1/services/:service/reconcile`
 * to the URL of the host's own record, after the host proved its enrolled key (`GET /v1/identity`
 * with the fingerprint pinned) and named itself as the host the registry means. The request
 * carries no body: a host can only start again what it was last deployed with, so the registry's
 * key needs no more than a read grant, and nothing in a desired record reaches anyone.
 */
export function receiverCorrector(credentials: ClientCredentials, options: { fetch?: typeof fetch; timeoutMs?: number } = {}): Corrector {
  return async (target: CorrectionTarget, service: string) => {
    const common = { url: target.url, credentials, peer: 'receiver', unreachable: 'FERRY_ERR_RECEIVER_UNREACHABLE' as const, timeoutMs: options.timeoutMs ?? TIMEOUT_MS, ...(options.fetch ? { fetch: options.fetch } : {}) };
    const proven = await new SignedClient({ ...common, hostKey: target.hostKey }).audience();
    if (proven !== target.host) {
      throw new FerryError('FERRY_ERR_HOST_KEY_MISMATCH', { message: `${target.url} proved the key enrolled for ${target.host} but names itself ${proven}`, details: { host: target.host, presented: proven } });
    }
    const client = new SignedClient({ ...common, audience: target.host });
    return await client.request('POST', `${PATHS.services}/${encodeURIComponent(service)}/reconcile`);
  };
}
