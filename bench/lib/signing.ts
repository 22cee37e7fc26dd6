import { performance } from 'node:perf_hooks';
import {
  MemoryNonceStore, RequestVerifier, TRUST_SCHEMA, TrustStore, documentHeader, generateKeyPair, issueGrant, publicKeyText, signRequest,
} from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { STREAM_PART_BYTES } from '@ferry/protocol';

/** Part size of a spooled resumable upload (README: parts of 32 MiB). */
const RESUMABLE_PART_BYTES = 32 * 1024 ** 2;

/** What signing and checking one request costs, measured on this machine in this run. */
export interface SigningCost {
  iterations: number;
  /** Sender side: Ed25519 signature of the canonical string. */
  signMs: number;
  /** Receiver side: headers, presented grant (checked once, then cached), signature, nonce. */
  verifyMs: number;
}

/**
 * Signs and verifies `iterations` requests as a push does: with a grant presented in
 * X-Ferry-Grant, through the receiver's own RequestVerifier and an in-memory nonce store.
 */
export async function measureSigningCost(iterations = 2000): Promise<SigningCost> {
  const admin = { keyId: 'bench-admin', privateKey: generateKeyPair().privateKey };
  const ci = generateKeyPair().privateKey;
  const grant = documentHeader(issueGrant({ keyId: 'bench-ci', publicKey: ci, role: 'deploy', services: ['web-*'], hosts: ['env=bench'] }, admin));
  const trust = new TrustStore({ data: { schema: TRUST_SCHEMA, keys: [{ id: admin.keyId, publicKey: publicKeyText(admin.privateKey), role: 'admin', services: ['*'], hosts: ['*'], graceSeconds: 0 }] } });
  const verifier = new RequestVerifier({ trust, nonces: new MemoryNonceStore(), audience: 'bench-host', subject: { id: 'bench-host', labels: { env: 'bench' } }, startedAt: 0 });
  const digest = digestOf('part');
  let signMs = 0;
  let verifyMs = 0;
  // The first few hundred run before the JIT has compiled the path, as they would in a process
  // that just started; a push makes hundreds, so the steady state is what it pays.
  const warmup = Math.min(500, iterations);
  for (let i = -warmup; i < iterations; i++) {
    const path = `/v1/streams/3f8e2c1a-7b4d-4e6f-9a2b-1c5d8e0f4a7b`;
    const t0 = performance.now();
    const headers = signRequest({ method: 'PATCH', path, contentDigest: digest, keyId: 'bench-ci', privateKey: ci, audience: 'bench-host', grant, offset: (i + warmup) * STREAM_PART_BYTES });
    const t1 = performance.now();
    await verifier.verify({ method: 'PATCH', path, headers: { ...headers, 'upload-offset': String((i + warmup) * STREAM_PART_BYTES) } });
    const t2 = performance.now();
    if (i < 0) continue;
    signMs += t1 - t0;
    verifyMs += t2 - t1;
  }
  return { iterations, signMs: signMs / iterations, verifyMs: verifyMs / iterations };
}

/**
 * The signed requests one `ferry push` made, from its result: layer negotiation, then a stream
 * (open, a part per 2 MiB, seal), a resumable upload (create, a part per 32 MiB, deploy) or a
 * one-shot upload. The identity probe is not signed by the sender, only by the receiver's key.
 */
export function signedRequestsOf(result: { streamed?: boolean; bytes?: { package?: number } }): number {
  const size = result.bytes?.package ?? 0;
  if (result.streamed === true) return 1 + 1 + Math.ceil(size / STREAM_PART_BYTES) + 1;
  if (size >= 64 * 1024 ** 2) return 1 + 1 + Math.ceil(size / RESUMABLE_PART_BYTES) + 1;
  return 1 + 1;
}
