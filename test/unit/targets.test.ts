import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MemoryNonceStore, RequestVerifier, TrustStore } from '@ferry/auth';
import { matchesSelector, parseSelector, type FerryError } from '@ferry/protocol';
import { backoffMs as backoffOf } from '@ferry/receiver';
import { resolveTargets } from '@ferry/sender';
import { testKey, trustDocument } from '../helpers/keys.ts';

const credentials = testKey('ci');

interface Call {
  url: URL;
  method: string;
  headers: Record<string, string>;
}

/** A registry's answers, seen through fetch: /healthz names it, /v1/hosts answers `hosts`. */
function fakeRegistry(hosts: { id: string; url: string; labels: Record<string, string> }[]): { fetch: typeof fetch; calls: Call[] } {
  const calls: Call[] = [];
  const fake = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(input instanceof Request ? input.url : input);
    calls.push({ url, method: init?.method ?? 'GET', headers: { ...(init?.headers as Record<string, string> | undefined) } });
    if (url.pathname === '/healthz') return Promise.resolve(Response.json({ status: 'ok', host: 'registry', version: '0.1.0' }));
    const selector = parseSelector(url.searchParams.get('selector') ?? '');
    const matching = hosts.filter((h) => matchesSelector(selector, h.labels));
    return Promise.resolve(Response.json({ hosts: matching.map((h) => ({ ...h, status: 'online' })) }));
  };
  return { fetch: fake, calls };
}

const FLEET = [
  { id: 'web-2', url: 'http://10.0.0.2:7701', labels: { env: 'prod', role: 'web' } },
  { id: 'web-1', url: 'http://10.0.0.1:7701', labels: { env: 'prod', role: 'web' } },
  { id: 'db-1', url: 'http://10.0.0.3:7701', labels: { env: 'prod', role: 'db' } },
];

describe('resolveTargets', () => {
  test('plain URLs pass through in order, once each, without asking anyone', async () => {
    const registry = fakeRegistry(FLEET);
    const targets = await resolveTargets(['http://a:7701', 'http://b:7701', 'http://a:7701'], { credentials, fetch: registry.fetch });
    assert.deepEqual(targets, [{ url: 'http://a:7701' }, { url: 'http://b:7701' }]);
    assert.equal(registry.calls.length, 0);
  });

  test('a selector becomes the matching online hosts, asked with a request the registry can verify', async () => {
    const registry = fakeRegistry(FLEET);
    // The registry's verifier is up before the request is signed, as a running registry would be:
    // built after, it could take a request signed in the previous second for one from before it started.
    const verifier = new RequestVerifier({ trust: new TrustStore({ data: trustDocument([credentials]) }), nonces: new MemoryNonceStore(), audience: 'registry' });
    const targets = await resolveTargets(['selector:env=prod,role=web', 'http://10.0.0.1:7701'], {
      registryUrl: 'http://registry.test:7702', credentials, fetch: registry.fetch,
    });
    assert.deepEqual(targets, [{ url: 'http://10.0.0.1:7701', host: 'web-1' }, { url: 'http://10.0.0.2:7701', host: 'web-2' }]);
    const ask = registry.calls.find((c) => c.url.pathname === '/v1/hosts');
    assert.ok(ask);
    assert.equal(ask.url.searchParams.get('selector'), 'env=prod,role=web');
    assert.equal(ask.url.searchParams.get('status'), 'online');
    const verified = await verifier.verify({ method: 'GET', path: `${ask.url.pathname}${ask.url.search}`, headers: ask.headers });
    assert.equal(verified.keyId, 'ci');
  });

  test('a selector without FERRY_REGISTRY_URL is a configuration error naming the variable', async () => {
    await assert.rejects(resolveTargets(['selector:env=prod'], { credentials }), (err: FerryError) => {
      assert.equal(err.code, 'FERRY_ERR_CONFIG');
      assert.match(err.message, /FERRY_REGISTRY_URL/);
      return true;
    });
  });

  test('a selector no online host matches is FERRY_ERR_NO_MATCHING_HOSTS', async () => {
    const registry = fakeRegistry(FLEET);
    await assert.rejects(resolveTargets(['selector:env=staging'], { registryUrl: 'http://registry.test:7702', credentials, fetch: registry.fetch }), (err: FerryError) => {
      assert.equal(err.code, 'FERRY_ERR_NO_MATCHING_HOSTS');
      assert.deepEqual(err.details, { selector: 'env=staging' });
      return true;
    });
  });

  test('a selector with != asks the registry for it as typed and gets the hosts it matches', async () => {
    const registry = fakeRegistry(FLEET);
    const targets = await resolveTargets(['selector:env=prod,role!=db'], { registryUrl: 'http://registry.test:7702', credentials, fetch: registry.fetch });
    assert.deepEqual(targets.map((t) => t.host), ['web-1', 'web-2']);
    assert.equal(registry.calls.find((c) => c.url.pathname === '/v1/hosts')?.url.searchParams.get('selector'), 'env=prod,role!=db');
  });

  test('a malformed selector is a usage error naming the grammar, before the registry is asked', async () => {
    const registry = fakeRegistry(FLEET);
    for (const bad of ['selector:', 'selector:env', 'selector:=prod', 'selector:env=prod,,role=web', 'selector:env==', 'selector:__proto__=x', 'selector:env=a\nb']) {
      await assert.rejects(resolveTargets([bad], { registryUrl: 'http://registry.test:7702', credentials, fetch: registry.fetch }), (err: FerryError) => {
        assert.equal(err.code, 'FERRY_ERR_USAGE', bad);
        assert.match(err.message, /KEY!=VALUE/);
        return true;
      });
    }
    assert.equal(registry.calls.length, 0);
  });

  test('a registry that cannot be reached is FERRY_ERR_REGISTRY_UNREACHABLE', async () => {
    const refused = (() => Promise.reject(new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } }))) as typeof fetch;
    await assert.rejects(resolveTargets(['selector:env=prod'], { registryUrl: 'http://registry.test:7702', credentials, fetch: refused }), (err: FerryError) => {
      assert.equal(err.code, 'FERRY_ERR_REGISTRY_UNREACHABLE');
      assert.match(err.message, /ECONNREFUSED/);
      return true;
    });
  });
});

describe('registration backoff', () => {
  test('grows from 1 s by doubling, stays under 30 s, and is jittered', () => {
    assert.equal(backoffOf(1, () => 1), 1000);
    assert.equal(backoffOf(3, () => 1), 4000);
    assert.equal(backoffOf(30, () => 1), 30_000);
    assert.equal(backoffOf(30, () => 0.5), 15_000);
    assert.equal(backoffOf(1, () => 0), 100);
  });
});
