/**
 * The Ed25519 signing of deploy/ferry-push.sh — its `canonical()` and `ed25519_sign()`, run from
 * the script's own text with bash and openssl — against `signRequest` of @ferry/auth: Ed25519 is
 * deterministic, so both must give the same 128 hex digits for the same key and request. Also the
 * worked example of docs/protocol.md §3.4: its PEM key, signed by the script, gives the documented
 * signatures. And the env digests the script records at the registry (`env_digests()`, HKDF and
 * HMAC-SHA256 from openssl dgst and bash) against `envDigests`: the same digest for each value.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { envDigests, generateKeyPair, privateKeyPem, signRequest } from '@ferry/auth';
import { ROOT, capture } from '../helpers/ferry.ts';

const DIGEST = 'blake3:7c446e0158ef423130e0400c091d5e6f7c2001ac9a8f31d7c17ae625334a582b';
let dir: string;

/** The function NAME as written in deploy/ferry-push.sh, from its first line to the closing brace. */
async function shellFunction(name: string): Promise<string> {
  const text = await readFile(join(ROOT, 'deploy/ferry-push.sh'), 'utf8');
  const match = new RegExp(`^${name}\\(\\) \\{\\n(?:.*\\n)*?\\}\\n`, 'm').exec(text);
  assert.ok(match, `no ${name}() in deploy/ferry-push.sh`);
  return match[0];
}

interface Request { method: string; path: string; now: number; nonce: string; contentDigest: string; keyId: string; audience: string; offset?: number }

/** The script's signature of `request` with the PEM key in `keyFile`. */
async function shellSignature(keyFile: string, request: Request): Promise<string> {
  const script = [
    await shellFunction('canonical'), await shellFunction('ed25519_sign'),
    'canonical "$@" > "$MSG"', 'ed25519_sign "$KEY_FILE" "$MSG"',
  ].join('\n');
  const args = [request.method, request.path, String(request.now), request.nonce, request.contentDigest, request.keyId, request.audience, ...(request.offset === undefined ? [] : [String(request.offset)])];
  const result = await capture('bash', ['-c', script, '-', ...args], {
    PATH: process.env.PATH, KEY_FILE: keyFile, MSG: join(dir, `msg-${randomBytes(4).toString('hex')}`),
  });
  assert.equal(result.code, 0, result.stderr);
  return result.stdout;
}

async function keyFile(privateKey: KeyObject): Promise<string> {
  const file = join(dir, `key-${randomBytes(4).toString('hex')}.pem`);
  await writeFile(file, privateKeyPem(privateKey), { mode: 0o600 });
  return file;
}

describe('the Ed25519 signing of the shell fallback', () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-shell-sign-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('gives signRequest\'s signature for one-shot, resumable, query-string and odd-looking requests', async () => {
    const { privateKey } = generateKeyPair();
    const file = await keyFile(privateKey);
    const now = Math.floor(Date.now() / 1000);
    const requests: Request[] = [
      { method: 'POST', path: '/v1/packages', now, nonce: randomBytes(16).toString('hex'), contentDigest: DIGEST, keyId: 'ci-main', audience: 'edge-1' },
      { method: 'PATCH', path: '/v1/uploads/0123456789abcdef0123456789abcdef', now, nonce: randomBytes(16).toString('base64url'), contentDigest: DIGEST, keyId: 'ci.main_2', audience: 'edge-1', offset: 16777216 },
      { method: 'PATCH', path: '/v1/uploads/0123456789abcdef0123456789abcdef', now, nonce: randomBytes(16).toString('hex'), contentDigest: DIGEST, keyId: 'k', audience: 'h', offset: 0 },
      { method: 'GET', path: '/v1/deployments?service=web&limit=5%20', now: 1, nonce: 'A'.repeat(22), contentDigest: DIGEST, keyId: 'x'.repeat(128), audience: 'host.with.dots-and_underscores' },
      { method: 'POST', path: '/prefix/v1/uploads/abc/deploy', now: 999_999_999_999, nonce: `-${'_'.repeat(127)}`, contentDigest: DIGEST, keyId: '0', audience: '9' },
    ];
    for (const request of requests) {
      const expected = signRequest({ ...request, privateKey })['x-ferry-signature'];
      assert.equal(await shellSignature(file, request), expected, `${request.method} ${request.path}`);
    }
  });

  test('signs with a key openssl made as node:crypto does with the same key', async () => {
    const file = join(dir, 'openssl.pem');
    const made = await capture('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', file]);
    assert.equal(made.code, 0, made.stderr);
    const privateKey = createPrivateKey(await readFile(file, 'utf8'));
    const request: Request = { method: 'POST', path: '/v1/uploads', now: 1767225600, nonce: 'q3Vv9bT1X0mZKc7hN2rQ8w', contentDigest: DIGEST, keyId: 'shell', audience: 'edge-1' };
    assert.equal(await shellSignature(file, request), signRequest({ ...request, privateKey })['x-ferry-signature']);
  });

  test('docs/protocol.md §3.4: the example key signs the example requests to the documented signatures', async () => {
    const doc = await readFile(join(ROOT, 'docs/protocol.md'), 'utf8');
    const example = doc.slice(doc.indexOf('### 3.4 Worked example'), doc.indexOf('### 3.5'));
    const pem = /-----BEGIN PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+-----END PRIVATE KEY-----\n/.exec(example)?.[0];
    assert.ok(pem, 'the worked example shows its private key');
    const file = join(dir, 'example.pem');
    await writeFile(file, pem, { mode: 0o600 });
    const base = { now: 1767225600, nonce: 'q3Vv9bT1X0mZKc7hN2rQ8w', contentDigest: DIGEST, keyId: 'ci-main', audience: 'edge-1' };
    const oneShot = await shellSignature(file, { ...base, method: 'POST', path: '/v1/packages' });
    const part = await shellSignature(file, { ...base, method: 'PATCH', path: '/v1/uploads/3f8e2c1a-7b4d-4e6f-9a2b-1c5d8e0f4a7b', offset: 16777216 });
    assert.equal(oneShot, '791d85dc8123555995d2155837785b7d8352eed51254aa0246c885a65f1660d65085b3784ef0348cb0b5519df0e5042c38be142be565bae16fffedd34f69a606');
    assert.equal(part, '0f19fe9eb6f7b44516d4147ff5fea85fc4e48b995870e950e7a3caf8338be8bd2ebe03111065a00b7963f0232a18a63521a077b244eb15badca419bd0b98c807');
    for (const signature of [oneShot, part]) assert.ok(example.includes(signature), `§3.4 shows ${signature}`);
  });

  test('env_digests() records each env value as envDigests does, for keys node:crypto and openssl made', async () => {
    const opensslFile = join(dir, 'digest-openssl.pem');
    const made = await capture('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', opensslFile]);
    assert.equal(made.code, 0, made.stderr);
    const nodeFile = await keyFile(generateKeyPair().privateKey);
    const env = { A: 'hello', EMPTY: '', EQ: 'x=y z', QUOTE: 'say "hi" \\ back', UNICODE: 'zürich ✓', LONG: 'v'.repeat(10_000) };
    const script = [
      await shellFunction('unhex'), await shellFunction('hex'), 'fail() { echo "$*" >&2; exit 1; }',
      await shellFunction('hmac_sha256'), await shellFunction('env_digests'),
      'ENVS=("$@")', 'env_digests', 'printf \'{%s}\' "$DIGESTS_JSON"',
    ].join('\n');
    for (const file of [opensslFile, nodeFile]) {
      const result = await capture('bash', ['-c', script, '-', ...Object.entries(env).map(([k, v]) => `${k}=${v}`)], { PATH: process.env.PATH, KEY_FILE: file });
      assert.equal(result.code, 0, result.stderr);
      assert.deepEqual(JSON.parse(result.stdout), envDigests(env, createPrivateKey(await readFile(file, 'utf8'))));
    }
  });
});
