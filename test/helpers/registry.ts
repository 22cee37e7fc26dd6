import type { KeyObject } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { generateKeyPair, hostKeyId, publicKeyText, signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';

/** A JSON answer from a signed call. */
export interface Answer {
  status: number;
  body: Record<string, unknown>;
}

/** Who signs: the key and the audience (the called service's FERRY_HOST_ID). A TestKey spreads into one. */
export interface Signer {
  keyId: string;
  privateKey: KeyObject;
  audience: string;
}

/** One signed JSON request to a Ferry service, as its clients make it. */
export async function signedCall(base: string, signer: Signer, method: string, path: string, body?: unknown): Promise<Answer> {
  const text = body === undefined ? '' : JSON.stringify(body);
  const headers: Record<string, string> = signRequest({ method, path, contentDigest: digestOf(text), keyId: signer.keyId, privateKey: signer.privateKey, audience: signer.audience });
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

/** `POST /v1/join-tokens` with an admin key; answers the token. */
export async function joinToken(base: string, admin: Signer, host: string, extra: { labels?: Record<string, string>; replace?: boolean; ttlSeconds?: number } = {}): Promise<string> {
  const answer = await signedCall(base, admin, 'POST', '/v1/join-tokens', { host, ...extra });
  if (answer.status !== 201 || typeof answer.body.token !== 'string') throw new Error(`join token for ${host}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body.token;
}

/**
 * `POST /v1/enroll`: `registration` and the public half of `key`, with `token`, signed by `key`
 * itself as a receiver does at its first registration.
 */
export async function enroll(base: string, audience: string, token: string, key: KeyObject, registration: Record<string, unknown>): Promise<Answer> {
  return signedCall(base, { keyId: hostKeyId(String(registration.id)), privateKey: key, audience }, 'POST', '/v1/enroll', {
    token, publicKey: publicKeyText(key), registration,
  });
}

/**
 * A host enrolled through a join token an admin asked for, registered with `registration`
 * (default: hostRegistration(id, labels)); answers the signer of its host key.
 */
export async function enrolledHost(base: string, admin: Signer, id: string, labels: Record<string, string> = {}, registration = hostRegistration(id, labels)): Promise<Signer> {
  const token = await joinToken(base, admin, id);
  const { privateKey } = generateKeyPair();
  const answer = await enroll(base, admin.audience, token, privateKey, registration);
  if (answer.status !== 200) throw new Error(`enrollment of ${id}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return { keyId: hostKeyId(id), privateKey, audience: admin.audience };
}
