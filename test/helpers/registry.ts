import { setTimeout as sleep } from 'node:timers/promises';
import { signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';

/** A JSON answer from a signed call. */
export interface Answer {
  status: number;
  body: Record<string, unknown>;
}

/** Who signs: the key and the audience (the called service's FERRY_HOST_ID). */
export interface Signer {
  keyId: string;
  secret: string;
  audience: string;
}

/** One signed JSON request to a Ferry service, as its clients make it. */
export async function signedCall(base: string, signer: Signer, method: string, path: string, body?: unknown): Promise<Answer> {
  const text = body === undefined ? '' : JSON.stringify(body);
  const headers: Record<string, string> = signRequest({ method, path, contentDigest: digestOf(text), ...signer });
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${base}${path}`, { method, headers, ...(method === 'GET' ? {} : { body: text }) });
  return { status: response.status, body: await response.json() as Record<string, unknown> };
}

/** Polls `check` until it gives a value; a condition that never comes fails by the suite's timeout. */
export async function until<T>(check: () => T | undefined | Promise<T | undefined>, intervalMs = 100): Promise<T> {
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    await sleep(intervalMs);
  }
}

/** A host registration body (`POST /v1/hosts`) for a receiver that is never dialled. */
export function hostRegistration(id: string, labels: Record<string, string> = {}): Record<string, unknown> {
  return { id, url: `http://127.0.0.1:1/${id}`, labels, capabilities: [], version: '0.1.0', engine: { version: '28', storageDriver: 'overlay2', imageStore: 'legacy' } };
}
