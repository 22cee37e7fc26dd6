import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RequestVerifier, TrustStore, signRequest, type NonceStore } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { isFerryError } from '@ferry/protocol';
import { testKey, trustDocument } from '../helpers/keys.ts';

const NOW = 1_800_000_000;

describe('a nonce store that lost its data', () => {
  it('is not trusted for what was signed before the loss, and is again afterwards', async () => {
    const key = testKey('ci');
    const seen = new Set<string>();
    // A Redis-backed store that found, at NOW + 1, that its data was gone.
    const store: NonceStore = {
      persistent: true,
      notBefore: () => NOW + 1,
      remember: (nonce) => Promise.resolve(seen.has(nonce) ? false : (seen.add(nonce), true)),
    };
    const verifier = new RequestVerifier({ trust: new TrustStore({ data: trustDocument([key]) }), nonces: store, audience: 'edge-1', now: () => NOW + 2, startedAt: NOW - 100 });
    const request = (at: number) => ({
      method: 'GET', path: '/v1/deployments',
      headers: signRequest({ method: 'GET', path: '/v1/deployments', contentDigest: digestOf(''), keyId: key.keyId, privateKey: key.privateKey, audience: 'edge-1', now: at }),
    });
    // Captured before the loss: its nonce may have been forgotten, so it is refused.
    await assert.rejects(verifier.verify(request(NOW)), (err) => isFerryError(err, 'FERRY_ERR_REPLAY') && err.details?.reason === 'store-lost');
    const fresh = request(NOW + 1);
    await verifier.verify(fresh);
    await assert.rejects(verifier.verify(fresh), (err) => isFerryError(err, 'FERRY_ERR_REPLAY'));
  });
});
