import { signRequest, type ClientCredentials } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { FerryError, errorFromBody } from '@ferry/protocol';
import type { Corrector } from './registry.ts';
import type { Desired } from './view.ts';

const TIMEOUT_MS = 30_000;

/**
 * The deployment document (ferry.yaml's schema, as JSON) that deploys `desired` again to the one
 * host it drifted on. The request id makes a repeated request the same deployment at the sender.
 */
export function correctionDocument(desired: Desired, service: string, requestId: string): Record<string, unknown> {
  const { name: _name, ...spec } = desired.service;
  return { version: 1, id: requestId, services: { [service]: { ...spec, image: desired.image, targets: [desired.targetUrl] } } };
}

/**
 * Drift correction through the sender service: a signed `POST {senderUrl}/v1/deployments`, with
 * the audience the sender names in `GET /healthz`.
 */
export function senderCorrector(senderUrl: string, credentials: ClientCredentials): Corrector {
  const base = senderUrl.replace(/\/+$/, '');
  const basePath = new URL(base).pathname.replace(/\/+$/, '');
  let audience: string | undefined;
  return async (desired, _host, service, requestId) => {
    audience ??= await senderId(base);
    const body = JSON.stringify(correctionDocument(desired, service, requestId));
    const headers = {
      ...signRequest({ method: 'POST', path: `${basePath}/v1/deployments`, contentDigest: digestOf(body), audience, ...credentials }),
      'content-type': 'application/json',
    };
    const response = await send(`${base}/v1/deployments`, { method: 'POST', headers, body }, senderUrl);
    const answer: unknown = await response.json().catch(() => null);
    if (!response.ok) throw errorFromBody(response.status, answer);
    return answer;
  };
}

async function senderId(base: string): Promise<string> {
  const response = await send(`${base}/healthz`, {}, base);
  const body = await response.json().catch(() => null) as { host?: unknown } | null;
  if (!response.ok || typeof body?.host !== 'string') throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `${base} does not answer like a Ferry sender service` });
  return body.host;
}

async function send(url: string, init: RequestInit, peer: string): Promise<Response> {
  try {
    return await fetch(url, { ...init, signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    throw new FerryError('FERRY_ERR_SENDER_UNREACHABLE', { message: `Cannot reach the sender service at ${peer}: ${cause?.code ?? (err as Error).message}`, cause: err });
  }
}
