import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import {
  AddressList, MemoryNonceStore, RequestVerifier, TrustStore, canonicalString, clientAddress, computeSignature, fingerprint, parsePublicKey,
  privateKeyPem, publicKeyText, signRequest,
  type NonceStore, type RequestFacts, type SignedFields,
} from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { FerryError, HEADERS, type ErrorCode } from '@ferry/protocol';
import { testKey, trustDocument, type TestKey, type TrustEntry } from '../helpers/keys.ts';

/**
 * The worked example of docs/protocol.md §3.4, value for value. Ed25519 signatures are
 * deterministic, so a fixed key and fixed inputs give one signature: anyone can check an
 * implementation (or `openssl pkeyutl`) against it.
 */
const EXAMPLE = {
  keyId: 'ci-main',
  /** The private key's 32-byte seed: the bytes 0x00, 0x01, … 0x1f. */
  seed: Buffer.from([...Array(32).keys()]),
  /** PKCS#8 DER of an Ed25519 key is this prefix followed by the seed. */
  pkcs8Prefix: '302e020100300506032b657004220420',
  privateKeyPem: [
    '-----BEGIN PRIVATE KEY-----',
    'MC4CAQAwBQYDK2VwBCIEIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f',
    '-----END PRIVATE KEY-----',
    '',
  ].join('\n'),
  publicKeyPem: [
    '-----BEGIN PUBLIC KEY-----',
    'MCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=',
    '-----END PUBLIC KEY-----',
    '',
  ].join('\n'),
  /** Base64 of the raw 32-byte public key, as trust files and grants carry it. */
  publicKey: 'A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=',
  fingerprint: 'SHA256:Vkdap1RjR0wChd9dvyvKtz2mUTWIOem3dIGy6rEHcIw',
  method: 'POST',
  path: '/v1/packages',
  timestamp: '1767225600',
  nonce: 'q3Vv9bT1X0mZKc7hN2rQ8w',
  audience: 'edge-1',
  manifest: '{"schema":"ferry.manifest/v1","deploymentId":"3f8e2c1a-7b4d-4e6f-9a2b-1c5d8e0f4a7b","createdAt":"2026-01-01T00:00:00.000Z","image":{"ref":"registry.example.com/shop/web:1.4.2","id":"sha256:f2e0b4f667978d416cbbe0d09cfe0868e93e92d3fe7ddd18d170c995c1790920","diffIds":["sha256:f0ae7439c9678c67f703718b4b4058578f446ede52b1761b489041b957155f3d","sha256:90d766e186eabbc65d151d4a6de8b31c281bf8b34d783e6e9576ec775aa24f81"]},"package":{"format":"docker-archive","compression":"zstd","size":48213577,"digest":"blake3:afda713857004f77f59f3fd28438907cc975e9fc5407425f78e366a35a216726"},"service":{"name":"web","env":{"PORT":"8080"},"network":"host","health":{"type":"http","url":"http://127.0.0.1:8080/healthz","expectStatus":200}}}',
  digest: 'blake3:7c446e0158ef423130e0400c091d5e6f7c2001ac9a8f31d7c17ae625334a582b',
  canonical: [
    'FERRY-ED25519-V1',
    'POST',
    '/v1/packages',
    '1767225600',
    'q3Vv9bT1X0mZKc7hN2rQ8w',
    'blake3:7c446e0158ef423130e0400c091d5e6f7c2001ac9a8f31d7c17ae625334a582b',
    'ci-main',
    'edge-1',
    '',
  ].join('\n'),
  signature: '791d85dc8123555995d2155837785b7d8352eed51254aa0246c885a65f1660d65085b3784ef0348cb0b5519df0e5042c38be142be565bae16fffedd34f69a606',
  /** The same key and inputs for a PATCH that carries `Upload-Offset: 16777216`. */
  patch: {
    path: '/v1/uploads/3f8e2c1a-7b4d-4e6f-9a2b-1c5d8e0f4a7b',
    offset: 16777216,
    canonical: [
      'FERRY-ED25519-V1',
      'PATCH',
      '/v1/uploads/3f8e2c1a-7b4d-4e6f-9a2b-1c5d8e0f4a7b',
      '1767225600',
      'q3Vv9bT1X0mZKc7hN2rQ8w',
      'blake3:7c446e0158ef423130e0400c091d5e6f7c2001ac9a8f31d7c17ae625334a582b',
      'ci-main',
      'edge-1',
      '16777216',
    ].join('\n'),
    signature: '0f19fe9eb6f7b44516d4147ff5fea85fc4e48b995870e950e7a3caf8338be8bd2ebe03111065a00b7963f0232a18a63521a077b244eb15badca419bd0b98c807',
  },
} as const;

const NOW = Number(EXAMPLE.timestamp);
const ALPHA = testKey('alpha');
const BRAVO = testKey('bravo');
const DIGEST = digestOf('manifest bytes');
const NONCE_A = 'AAAAAAAAAAAAAAAAAAAAAA';
const NONCE_B = 'BBBBBBBBBBBBBBBBBBBBBB';

type Headers = RequestFacts['headers'];

const AUDIENCE = 'edge-1';

/** A trust store holding these keys, each allowed to deploy everything everywhere unless its entry says otherwise. */
function trusting(entries: (TestKey | TrustEntry)[]): TrustStore {
  return new TrustStore({ data: trustDocument(entries) });
}

// startedAt 0: these tests are about the signature; the boot rule has its own below.
function verifier(trust = trusting([ALPHA, BRAVO]), now = NOW): RequestVerifier {
  return new RequestVerifier({ trust, nonces: new MemoryNonceStore(), now: () => now, audience: AUDIENCE, startedAt: 0 });
}

interface Overrides { key?: TestKey; keyId?: string; method?: string; path?: string; now?: number; nonce?: string; digest?: string; audience?: string; offset?: number | string }

function signed(overrides: Overrides = {}): Headers {
  const key = overrides.key ?? ALPHA;
  return signRequest({
    audience: overrides.audience ?? AUDIENCE,
    ...(overrides.offset === undefined ? {} : { offset: overrides.offset }),
    method: overrides.method ?? 'POST',
    path: overrides.path ?? '/v1/packages',
    contentDigest: overrides.digest ?? DIGEST,
    keyId: overrides.keyId ?? key.keyId,
    privateKey: key.privateKey,
    now: overrides.now ?? NOW,
    nonce: overrides.nonce ?? NONCE_A,
  });
}

function facts(headers: Headers, method = 'POST', path = '/v1/packages'): RequestFacts {
  return { method, path, headers };
}

async function refused(promise: Promise<unknown>, code: ErrorCode): Promise<FerryError> {
  let caught: unknown;
  await promise.then(() => assert.fail(`expected ${code}, the request was accepted`), (err: unknown) => { caught = err; });
  assert.ok(caught instanceof FerryError, `expected a FerryError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  assert.equal(caught.status, 401);
  return caught;
}

/**
 * What the shell path of docs/protocol.md does: `openssl pkeyutl -verify -rawin` with the public
 * key's PEM, the canonical string's bytes and the raw 64-byte signature. True when openssl says
 * the signature verifies.
 */
async function opensslVerifies(dir: string, publicKeyPem: string, message: string, signatureHex: string): Promise<boolean> {
  const [pub, msg, sig] = ['pub.pem', 'msg', 'sig'].map((name) => join(dir, name)) as [string, string, string];
  await writeFile(pub, publicKeyPem);
  await writeFile(msg, message);
  await writeFile(sig, Buffer.from(signatureHex, 'hex'));
  try {
    const { stdout } = await promisify(execFile)('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', msg, '-sigfile', sig]);
    return /Signature Verified Successfully/.test(stdout);
  } catch (err) {
    // openssl exits 1 for a signature that does not verify; anything else (no openssl, no -rawin) fails the test.
    const failed = err as { code?: unknown; stdout?: string };
    if (failed.code === 1 && typeof failed.stdout === 'string' && /Signature Verification Failure/.test(failed.stdout)) return false;
    throw err;
  }
}

describe('worked example of docs/protocol.md', () => {
  const privateKey = createPrivateKey(EXAMPLE.privateKeyPem);
  const fields: SignedFields = {
    method: EXAMPLE.method, path: EXAMPLE.path, timestamp: EXAMPLE.timestamp, nonce: EXAMPLE.nonce, contentDigest: EXAMPLE.digest, keyId: EXAMPLE.keyId,
    audience: EXAMPLE.audience, offset: '',
  };
  const patchFields: SignedFields = { ...fields, method: 'PATCH', path: EXAMPLE.patch.path, offset: String(EXAMPLE.patch.offset) };
  const exampleOptions = {
    method: 'POST', path: EXAMPLE.path, contentDigest: EXAMPLE.digest, keyId: EXAMPLE.keyId, privateKey, audience: EXAMPLE.audience, now: NOW, nonce: EXAMPLE.nonce,
  };
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-vector-')); });
  after(async () => { if (dir) await rm(dir, { recursive: true, force: true }); });

  it('builds its key from the seed: the PKCS#8 PEM is the fixed DER prefix and the 32 seed bytes', () => {
    const der = Buffer.concat([Buffer.from(EXAMPLE.pkcs8Prefix, 'hex'), EXAMPLE.seed]);
    assert.equal(EXAMPLE.privateKeyPem, `-----BEGIN PRIVATE KEY-----\n${der.toString('base64')}\n-----END PRIVATE KEY-----\n`);
    assert.equal(privateKeyPem(privateKey), EXAMPLE.privateKeyPem, 'what Node (and ferry key new) writes for that key');
    assert.equal(createPublicKey(privateKey).export({ format: 'pem', type: 'spki' }).toString(), EXAMPLE.publicKeyPem);
    assert.equal(publicKeyText(privateKey), EXAMPLE.publicKey);
    assert.equal(fingerprint(EXAMPLE.publicKey), EXAMPLE.fingerprint);
    assert.equal(publicKeyText(parsePublicKey(EXAMPLE.publicKeyPem, 'example')), EXAMPLE.publicKey, 'the SPKI PEM names the same key');
  });

  it('digests the manifest bytes', () => {
    assert.equal(Buffer.byteLength(EXAMPLE.manifest), 720);
    assert.equal(digestOf(EXAMPLE.manifest), EXAMPLE.digest);
  });

  it('builds the canonical string verbatim: nine lines, the last (no offset) empty', () => {
    const canonical = canonicalString(fields);
    assert.equal(canonical, EXAMPLE.canonical);
    assert.equal(canonical.split('\n').length, 9);
    assert.ok(canonical.endsWith('\nedge-1\n'), 'ends with the LF that starts the empty offset line');
    assert.equal(canonicalString(patchFields), EXAMPLE.patch.canonical);
    assert.ok(EXAMPLE.patch.canonical.endsWith('\nedge-1\n16777216'), 'the offset is line 9, no trailing newline');
  });

  it('gives the documented signatures: 128 lowercase hex characters', () => {
    assert.equal(computeSignature(privateKey, fields), EXAMPLE.signature);
    assert.match(EXAMPLE.signature, /^[0-9a-f]{128}$/);
    assert.deepEqual(
      signRequest(exampleOptions),
      {
        [HEADERS.keyId]: EXAMPLE.keyId,
        [HEADERS.timestamp]: EXAMPLE.timestamp,
        [HEADERS.nonce]: EXAMPLE.nonce,
        [HEADERS.contentDigest]: EXAMPLE.digest,
        [HEADERS.audience]: EXAMPLE.audience,
        [HEADERS.signature]: EXAMPLE.signature,
      },
    );
    assert.equal(computeSignature(privateKey, patchFields), EXAMPLE.patch.signature);
    const patch = signRequest({ ...exampleOptions, method: 'PATCH', path: EXAMPLE.patch.path, offset: EXAMPLE.patch.offset });
    assert.equal(patch[HEADERS.signature], EXAMPLE.patch.signature);
    assert.equal(patch[HEADERS.uploadOffset], undefined, 'the offset is signed, not returned as a header');
  });

  it('upper-cases the method', () => {
    assert.equal(computeSignature(privateKey, { ...fields, method: 'post' }), EXAMPLE.signature);
  });

  it('openssl pkeyutl -verify accepts both signatures with the public key PEM, and refuses one with a bit flipped', async () => {
    assert.equal(await opensslVerifies(dir, EXAMPLE.publicKeyPem, EXAMPLE.canonical, EXAMPLE.signature), true, 'POST');
    assert.equal(await opensslVerifies(dir, EXAMPLE.publicKeyPem, EXAMPLE.patch.canonical, EXAMPLE.patch.signature), true, 'PATCH with offset');
    const flipped = Buffer.from(EXAMPLE.signature, 'hex');
    flipped[0] = (flipped[0] ?? 0) ^ 0x01;
    assert.equal(await opensslVerifies(dir, EXAMPLE.publicKeyPem, EXAMPLE.canonical, flipped.toString('hex')), false, 'a flipped bit');
    assert.equal(await opensslVerifies(dir, EXAMPLE.publicKeyPem, EXAMPLE.patch.canonical, EXAMPLE.signature), false, 'the POST signature over the PATCH string');
  });

  it('is what the document shows', () => {
    const doc = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
    assert.ok(doc.includes(`\n${EXAMPLE.manifest}\n`), 'manifest line');
    assert.ok(doc.includes(`\`\`\`\n${EXAMPLE.canonical}\n\`\`\``), 'canonical string as a code block, its empty last line included');
    const pemBody = EXAMPLE.privateKeyPem.split('\n')[1] ?? '';
    assert.ok(doc.includes(pemBody) || doc.includes(EXAMPLE.seed.toString('hex')), 'the example private key (its PEM or its seed)');
    for (const value of [
      EXAMPLE.keyId, EXAMPLE.timestamp, EXAMPLE.nonce, EXAMPLE.digest, EXAMPLE.audience, EXAMPLE.signature, EXAMPLE.patch.path, EXAMPLE.patch.signature,
    ]) {
      assert.ok(doc.includes(value), value);
    }
  });

  it('is accepted by a receiver whose trust file holds the public key', async () => {
    const trust = new TrustStore({ data: { schema: 'ferry.trust/v1', keys: [{ id: EXAMPLE.keyId, publicKey: EXAMPLE.publicKey, role: 'deploy' }] } });
    const verified = await verifier(trust).verify(facts(signRequest(exampleOptions)));
    assert.equal(verified.keyId, EXAMPLE.keyId);
    assert.equal(verified.contentDigest, EXAMPLE.digest);
    assert.equal(verified.timestamp, NOW);
    assert.deepEqual(verified.scopes.map(({ scope, validity }) => [scope.keyId, scope.role, scope.fingerprint, validity]), [[EXAMPLE.keyId, 'deploy', EXAMPLE.fingerprint, 'valid']]);
  });
});

describe('signRequest', () => {
  it('draws a fresh nonce of at least 128 bits and uses the clock by default', () => {
    const before = Math.floor(Date.now() / 1000);
    const a = signRequest({ method: 'POST', path: '/v1/packages', contentDigest: DIGEST, keyId: 'alpha', privateKey: ALPHA.privateKey, audience: AUDIENCE });
    const b = signRequest({ method: 'POST', path: '/v1/packages', contentDigest: DIGEST, keyId: 'alpha', privateKey: ALPHA.privateKey, audience: AUDIENCE });
    assert.notEqual(a[HEADERS.nonce], b[HEADERS.nonce]);
    assert.match(a[HEADERS.nonce] ?? '', /^[A-Za-z0-9_-]{22,128}$/);
    const ts = Number(a[HEADERS.timestamp]);
    assert.ok(ts >= before && ts <= Math.floor(Date.now() / 1000));
    assert.match(a[HEADERS.signature] ?? '', /^[0-9a-f]{128}$/);
  });
});

describe('RequestVerifier', () => {
  it('accepts what signRequest produced', async () => {
    const verified = await verifier().verify(facts(signed()));
    assert.equal(verified.keyId, 'alpha');
    assert.equal(verified.contentDigest, DIGEST);
    assert.equal(verified.timestamp, NOW);
    assert.deepEqual(verified.scopes.map(({ scope, validity }) => [scope.keyId, scope.role, validity]), [['alpha', 'deploy', 'valid']]);
  });

  describe('refuses a request whose signed facts were changed', () => {
    const cases: [string, Headers, string?, string?, Headers?][] = [
      ['method', signed(), 'PUT'],
      ['path', signed(), 'POST', '/v1/packages/x'],
      ['query added', signed(), 'POST', '/v1/packages?dryRun=1'],
      ['query changed', signed({ path: '/v1/packages?a=1' }), 'POST', '/v1/packages?a=2'],
      ['timestamp', { ...signed(), [HEADERS.timestamp]: String(NOW - 1) }],
      ['nonce', { ...signed(), [HEADERS.nonce]: NONCE_B }],
      ['content digest', { ...signed(), [HEADERS.contentDigest]: digestOf('other manifest bytes') }],
      ['key id', { ...signed(), [HEADERS.keyId]: 'bravo' }],
      ['audience header changed to this host', signed({ audience: 'edge-2' }), undefined, undefined, { [HEADERS.audience]: AUDIENCE }],
      ['offset added', signed(), undefined, undefined, { [HEADERS.uploadOffset]: '0' }],
      ['offset changed', signed({ offset: 1024 }), undefined, undefined, { [HEADERS.uploadOffset]: '1025' }],
      ['offset removed', signed({ offset: 1024 })],
      ['offset written differently', signed({ offset: 1024 }), undefined, undefined, { [HEADERS.uploadOffset]: '01024' }],
    ];
    for (const [name, headers, method, path, extra] of cases) {
      it(name, async () => {
        await refused(verifier().verify(facts({ ...headers, ...extra }, method, path)), 'FERRY_ERR_BAD_SIGNATURE');
      });
    }

    it('key id, even when both ids name the same public key', async () => {
      const v = verifier(trusting([ALPHA, { ...ALPHA, keyId: 'alias' }]));
      await refused(v.verify(facts({ ...signed(), [HEADERS.keyId]: 'alias' })), 'FERRY_ERR_BAD_SIGNATURE');
    });

    it('signed by another key pair under the same key id', async () => {
      const impostor = testKey('alpha');
      await refused(verifier().verify(facts(signed({ key: impostor }))), 'FERRY_ERR_BAD_SIGNATURE');
    });
  });

  it('refuses a signature with one bit flipped', async () => {
    const headers = signed();
    const signature = Buffer.from(headers[HEADERS.signature] as string, 'hex');
    assert.equal(signature.length, 64);
    for (const bit of [0, 7, 100, 255, 256, 511]) {
      const flipped = Buffer.from(signature);
      flipped[bit >> 3] = (flipped[bit >> 3] ?? 0) ^ (1 << (bit & 7));
      await refused(verifier().verify(facts({ ...headers, [HEADERS.signature]: flipped.toString('hex') })), 'FERRY_ERR_BAD_SIGNATURE');
    }
  });

  describe('refuses a malformed signature', () => {
    const good = signed()[HEADERS.signature] as string;
    const cases: [string, string, ErrorCode][] = [
      ['empty', '', 'FERRY_ERR_AUTH_MISSING'],
      ['upper-case hex of the right value', good.toUpperCase(), 'FERRY_ERR_BAD_SIGNATURE'],
      ['one character short', good.slice(0, 127), 'FERRY_ERR_BAD_SIGNATURE'],
      ['one character long', `${good}0`, 'FERRY_ERR_BAD_SIGNATURE'],
      ['twice as long', good + good, 'FERRY_ERR_BAD_SIGNATURE'],
      ['64 hex characters (the old HMAC length)', good.slice(0, 64), 'FERRY_ERR_BAD_SIGNATURE'],
      ['not hex', 'z'.repeat(128), 'FERRY_ERR_BAD_SIGNATURE'],
      ['base64 of the right bytes', Buffer.from(good, 'hex').toString('base64'), 'FERRY_ERR_BAD_SIGNATURE'],
    ];
    for (const [name, signature, code] of cases) {
      it(name, async () => {
        await refused(verifier().verify(facts({ ...signed(), [HEADERS.signature]: signature })), code);
      });
    }
  });

  describe('refuses a request that lacks a header', () => {
    for (const name of [HEADERS.keyId, HEADERS.timestamp, HEADERS.nonce, HEADERS.contentDigest, HEADERS.audience, HEADERS.signature]) {
      it(`${name} absent`, async () => {
        const headers = signed();
        delete headers[name];
        await refused(verifier().verify(facts(headers)), 'FERRY_ERR_AUTH_MISSING');
      });
      it(`${name} empty`, async () => {
        await refused(verifier().verify(facts({ ...signed(), [name]: '' })), 'FERRY_ERR_AUTH_MISSING');
      });
      it(`${name} repeated (array value)`, async () => {
        const headers = signed();
        const value = headers[name] as string;
        await refused(verifier().verify(facts({ ...headers, [name]: [value, value] })), 'FERRY_ERR_AUTH_MISSING');
      });
      it(`${name} repeated (joined by Node)`, async () => {
        const headers = signed();
        const value = headers[name] as string;
        await refused(verifier().verify(facts({ ...headers, [name]: `${value}, ${value}` })), 'FERRY_ERR_AUTH_MISSING');
      });
    }
  });

  describe('refuses malformed header values before looking at the key', () => {
    const cases: [string, string, string][] = [
      ['timestamp with a fraction', HEADERS.timestamp, `${NOW}.5`],
      ['negative timestamp', HEADERS.timestamp, `-${NOW}`],
      ['timestamp in milliseconds beyond 12 digits', HEADERS.timestamp, `${NOW}000`],
      ['nonce of 21 characters', HEADERS.nonce, 'A'.repeat(21)],
      ['nonce of 129 characters', HEADERS.nonce, 'A'.repeat(129)],
      ['nonce with "+"', HEADERS.nonce, 'AAAAAAAAAAAAAAAAAAAAA+'],
      ['digest without prefix', HEADERS.contentDigest, DIGEST.slice('blake3:'.length)],
      ['digest in upper case', HEADERS.contentDigest, DIGEST.toUpperCase()],
      ['sha256 digest', HEADERS.contentDigest, `sha256:${'0'.repeat(64)}`],
    ];
    for (const [name, header, value] of cases) {
      it(name, async () => {
        await refused(verifier().verify(facts({ ...signed(), [header]: value, [HEADERS.keyId]: 'nobody' })), 'FERRY_ERR_AUTH_MISSING');
      });
    }

    it('accepts nonces of 22 and 128 characters', async () => {
      const v = verifier();
      await v.verify(facts(signed({ nonce: 'a'.repeat(22) })));
      await v.verify(facts(signed({ nonce: 'b'.repeat(128) })));
    });
  });

  it('refuses an unknown key id without naming it', async () => {
    const err = await refused(verifier().verify(facts(signed({ keyId: 'charlie' }))), 'FERRY_ERR_UNKNOWN_KEY');
    assert.equal(err.details, undefined);
    assert.ok(!err.message.includes('charlie'), err.message);
    assert.ok(!JSON.stringify(err).includes('charlie'));
  });

  describe('timestamp window of ±300 s', () => {
    for (const offset of [-301, 301, -3600, 3600]) {
      it(`refuses a timestamp ${offset} s from the clock`, async () => {
        const err = await refused(verifier().verify(facts(signed({ now: NOW + offset }))), 'FERRY_ERR_STALE_TIMESTAMP');
        assert.deepEqual(err.details, { skewSeconds: offset, windowSeconds: 300 });
      });
    }
    for (const offset of [-300, -299, 0, 299, 300]) {
      it(`accepts a timestamp ${offset} s from the clock`, async () => {
        await verifier().verify(facts(signed({ now: NOW + offset })));
      });
    }
  });

  describe('replay', () => {
    it('refuses the same request twice', async () => {
      const v = verifier();
      const headers = signed();
      await v.verify(facts(headers));
      await refused(v.verify(facts(headers)), 'FERRY_ERR_REPLAY');
    });

    it('refuses a reused nonce even in an otherwise different request', async () => {
      const v = verifier();
      await v.verify(facts(signed()));
      await refused(v.verify(facts(signed({ digest: digestOf('another manifest'), now: NOW - 5 }))), 'FERRY_ERR_REPLAY');
    });

    it('keeps nonces apart per key id', async () => {
      const v = verifier();
      await v.verify(facts(signed({ key: ALPHA })));
      await v.verify(facts(signed({ key: BRAVO })));
    });

    it('does not spend a nonce on a refused request', async () => {
      const v = verifier();
      await refused(v.verify(facts({ ...signed(), [HEADERS.signature]: '0'.repeat(128) })), 'FERRY_ERR_BAD_SIGNATURE');
      await refused(v.verify(facts(signed({ now: NOW - 400 }))), 'FERRY_ERR_STALE_TIMESTAMP');
      await v.verify(facts(signed()));
    });

    it('remembers a nonce for 2 × window + 1 s', async () => {
      const remembered: [string, number][] = [];
      const v = new RequestVerifier({
        trust: trusting([ALPHA]),
        nonces: { remember: (nonce, ttl) => { remembered.push([nonce, ttl]); return Promise.resolve(true); } },
        now: () => NOW,
        audience: AUDIENCE,
        startedAt: 0,
      });
      await v.verify(facts(signed()));
      assert.deepEqual(remembered, [[`alpha:${NONCE_A}`, 601]]);
    });
  });

  it('accepts both keys of a trust file during a rotation, each only with its own key pair', async () => {
    const old = testKey('old');
    const next = testKey('new');
    const v = verifier(trusting([{ key: old, notAfter: '2099-01-01T00:00:00Z' }, next]));
    await v.verify(facts(signed({ key: old, nonce: NONCE_A })));
    await v.verify(facts(signed({ key: next, nonce: NONCE_B })));
    await refused(v.verify(facts(signed({ key: next, keyId: 'old', nonce: 'C'.repeat(22) }))), 'FERRY_ERR_BAD_SIGNATURE');
  });
});

describe('RequestVerifier: audience, offset, boot rule and key expiry', () => {
  it('refuses a request signed for another host, naming the host it is', async () => {
    const err = await refused(verifier().verify(facts(signed({ audience: 'edge-2' }))), 'FERRY_ERR_WRONG_AUDIENCE');
    assert.deepEqual(err.details, { expected: AUDIENCE });
  });

  it('accepts a signed offset, given as a number or a string, when the header carries it', async () => {
    const v = verifier();
    await v.verify(facts({ ...signed({ offset: 1024, nonce: NONCE_A }), [HEADERS.uploadOffset]: '1024' }));
    await v.verify(facts({ ...signed({ offset: '0', nonce: NONCE_B }), [HEADERS.uploadOffset]: '0' }));
  });

  it('refuses a repeated Upload-Offset header', async () => {
    await refused(verifier().verify(facts({ ...signed({ offset: 1 }), [HEADERS.uploadOffset]: '1, 1' })), 'FERRY_ERR_AUTH_MISSING');
  });

  const startedAt = NOW + 1;
  it('with nonces in memory, refuses a request signed before the receiver started', async () => {
    const v = new RequestVerifier({ trust: trusting([ALPHA]), nonces: new MemoryNonceStore(), now: () => NOW + 1, audience: AUDIENCE, startedAt });
    const err = await refused(v.verify(facts(signed())), 'FERRY_ERR_REPLAY');
    assert.deepEqual(err.details, { reason: 'before-boot' });
    await v.verify(facts(signed({ now: NOW + 1, nonce: NONCE_B })));
  });

  it('with a persistent store, lets the store decide for requests signed before the start', async () => {
    const store: NonceStore = { persistent: true, remember: () => Promise.resolve(true) };
    const v = new RequestVerifier({ trust: trusting([ALPHA]), nonces: store, now: () => NOW + 1, audience: AUDIENCE, startedAt });
    await v.verify(facts(signed()));
  });

  it('refuses a trust entry after its notAfter, on the receiver clock, and only once the signature is right', async () => {
    const old = testKey('old');
    const next = testKey('new');
    const trust = trusting([{ key: old, notAfter: '2026-01-01T00:00:10Z' }, next]);
    const at = (now: number): RequestVerifier => new RequestVerifier({ trust, nonces: new MemoryNonceStore(), now: () => now, audience: AUDIENCE, startedAt: 0 });
    await at(NOW + 10).verify(facts(signed({ key: old, now: NOW + 10 })));
    const err = await refused(at(NOW + 11).verify(facts(signed({ key: old, now: NOW + 11 }))), 'FERRY_ERR_GRANT_EXPIRED');
    assert.deepEqual(err.details, { notAfter: '2026-01-01T00:00:10.000Z', graceSeconds: 0 });
    await refused(at(NOW + 11).verify(facts(signed({ key: next, keyId: 'old', now: NOW + 11 }))), 'FERRY_ERR_BAD_SIGNATURE');
    await at(NOW + 11).verify(facts(signed({ key: next, now: NOW + 11 })));
  });
});

describe('trust files', () => {
  it('read an expiry with a zone, and describe keys by id, role and fingerprint only', () => {
    const old = testKey('old');
    const store = trusting([{ key: old, notAfter: '2026-12-01T01:00:00+01:00' }, BRAVO]);
    assert.deepEqual(store.describe(), [
      { keyId: 'old', role: 'deploy', fingerprint: fingerprint(old.publicKey), notAfter: '2026-12-01T00:00:00.000Z' },
      { keyId: 'bravo', role: 'deploy', fingerprint: fingerprint(BRAVO.publicKey), notAfter: null },
    ]);
    const described = JSON.stringify(store.describe());
    assert.ok(!described.includes(old.publicKey) && !described.includes(privateKeyPem(old.privateKey).split('\n')[1] ?? ''));
  });

  for (const bad of ['2026-12-01', '2026-12-01T00:00:00', 'tomorrow', '']) {
    it(`refuse notAfter=${bad || '(empty)'}`, () => {
      assert.throws(() => new TrustStore({ data: { ...trustDocument([ALPHA]), keys: [{ ...trustDocument([ALPHA]).keys[0], notAfter: bad }] } }), (err: unknown) => {
        assert.ok(err instanceof FerryError);
        assert.equal(err.code, 'FERRY_ERR_CONFIG');
        assert.match(err.message, /keys\.0\.notAfter: an ISO 8601 date-time with a zone/);
        return true;
      });
    });
  }

  const entry = (fields: Record<string, unknown>): unknown => ({ schema: 'ferry.trust/v1', keys: [{ id: 'ci', publicKey: ALPHA.publicKey, role: 'deploy', ...fields }] });
  const alphaPem = privateKeyPem(ALPHA.privateKey);
  const cases: [string, unknown, RegExp][] = [
    ['a bad key id', entry({ id: 'bad id' }), /keys\.0\.id/],
    ['an unknown role', entry({ role: 'root' }), /keys\.0\.role/],
    ['a public key of 31 bytes', entry({ publicKey: Buffer.alloc(31, 1).toString('base64') }), /not an Ed25519 public key/],
    ['an RSA public key', entry({ publicKey: testRsaPublicKeyPem() }), /an Ed25519 key is required/],
    ['a bad host selector', entry({ hosts: ['env=prod,,x'] }), /keys\[0\]|keys\.0|selector/i],
    ['another schema', { schema: 'ferry.trust/v2', keys: [] }, /schema/],
    ['an unknown field', { schema: 'ferry.trust/v1', keys: [], secrets: [] }, /secrets|unrecognized/i],
  ];
  for (const [name, data, message] of cases) {
    it(`refuse ${name}`, () => {
      assert.throws(() => new TrustStore({ data }), (err: unknown) => {
        assert.ok(err instanceof FerryError);
        assert.equal(err.code, 'FERRY_ERR_CONFIG');
        assert.match(err.message, message);
        return true;
      });
    });
  }

  // A private key pasted where a public key belongs would put a secret in a file that is meant to
  // hold none (and that operators copy around): it is refused, and not echoed.
  it('refuse a private key in place of a public key, without showing it', () => {
    assert.throws(() => new TrustStore({ data: entry({ publicKey: alphaPem }) }), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.code, 'FERRY_ERR_CONFIG');
      assert.ok(!err.message.includes(alphaPem.split('\n')[1] ?? ''), err.message);
      return true;
    });
  });
});

function testRsaPublicKeyPem(): string {
  return generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'pem', type: 'spki' }).toString();
}

describe('AddressList and clientAddress', () => {
  const list = AddressList.parse('127.0.0.0/8, 192.0.2.7, fd00::/8, ::1');

  for (const [address, expected] of [
    ['127.0.0.1', true], ['::ffff:127.0.0.1', true], ['192.0.2.7', true], ['192.0.2.8', false], ['::ffff:192.0.2.8', false],
    ['fd12:3456::1', true], ['::1', true], ['fe80::1', false], ['10.0.0.1', false], ['not-an-ip', false], ['', false],
  ] as const) {
    it(`${address || '(empty)'} ${expected ? 'is' : 'is not'} in the list`, () => assert.equal(list.has(address), expected));
  }

  it('refuses bad entries, naming each', () => {
    assert.throws(() => AddressList.parse('10.0.0.0/33, example.com, 10.0.0.0/8/1, fd00::/129, 10.0.0.1'), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.code, 'FERRY_ERR_CONFIG');
      for (const entry of ['10.0.0.0/33', 'example.com', '10.0.0.0/8/1', 'fd00::/129']) assert.ok(err.message.includes(`"${entry}"`), err.message);
      assert.ok(!err.message.includes('"10.0.0.1"'));
      return true;
    });
  });

  const proxies = AddressList.parse('10.0.0.0/8');
  it('ignores X-Forwarded-For from a peer that is not a trusted proxy', () => {
    assert.equal(clientAddress('192.0.2.50', '127.0.0.1', proxies), '192.0.2.50');
    assert.equal(clientAddress('10.0.0.2', '127.0.0.1', undefined), '10.0.0.2');
  });
  it('takes the first untrusted hop from the right when the peer is a trusted proxy', () => {
    assert.equal(clientAddress('10.0.0.2', '127.0.0.1', proxies), '127.0.0.1');
    assert.equal(clientAddress('::ffff:10.0.0.2', '203.0.113.9, 192.0.2.7, 10.0.0.3', proxies), '192.0.2.7');
    assert.equal(clientAddress('10.0.0.2', ['203.0.113.9', '10.0.0.3'], proxies), '203.0.113.9');
    assert.equal(clientAddress('10.0.0.2', undefined, proxies), '10.0.0.2');
  });
});

describe('MemoryNonceStore', () => {
  it('refuses a nonce until its time to live has passed', async () => {
    let now = 1_000_000;
    const store = new MemoryNonceStore(() => now);
    assert.equal(await store.remember('n', 10), true);
    assert.equal(await store.remember('n', 10), false);
    assert.equal(await store.remember('m', 10), true);
    now += 9_999;
    assert.equal(await store.remember('n', 10), false);
    now += 1;
    assert.equal(await store.remember('n', 10), true);
    assert.equal(await store.remember('n', 10), false);
  });

  it('forgets expired nonces', async () => {
    let now = 0;
    const store = new MemoryNonceStore(() => now);
    for (let i = 0; i < 100; i++) await store.remember(`n${i}`, 1);
    assert.equal(store.size, 100);
    now = 5_000;
    await store.remember('fresh', 1);
    assert.equal(store.size, 1);
  });
});

describe('constant-time comparisons (row 9)', () => {
  // A secret or token compared with === leaks, through timing, how much of it matched.
  // timingSafeEqual (or comparing fixed-size digests of both sides with it) is the only way allowed.
  // Signatures are not on the list since they are Ed25519: public values, checked by verify(), which
  // no comparison can stand in for (an HMAC tag was secret-derived and compared).
  it('no source file compares a secret, token or password with === or !==', () => {
    const root = new URL('../../', import.meta.url).pathname;
    const files: string[] = [];
    const walk = (dir: string): void => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        if (entry.name === 'node_modules') continue;
        const path = join(dir, entry.name);
        if (entry.isDirectory()) walk(path);
        else if (entry.name.endsWith('.ts')) files.push(path);
      }
    };
    for (const dir of ['libs', 'services']) walk(join(root, dir));
    assert.ok(files.length > 10);
    const comparison = /\b\w*(?:secret|token|password)\w*\s*[!=]==(?!\s*(?:undefined|null)\b)|[!=]==\s*\w*(?:secret|token|password)\w*\b/i;
    const offenders = files.flatMap((file) => readFileSync(file, 'utf8').split('\n')
      .map((line, i) => [`${file.slice(root.length)}:${i + 1}`, line] as const)
      // `typeof doc.token !== 'string'` compares a type name, not the value.
      .map(([where, line]) => [where, line.replace(/typeof\s+[\w.?]+\s*[!=]==\s*'\w+'/g, '')] as const)
      .filter(([, line]) => comparison.test(line) && !line.trim().startsWith('//') && !line.trim().startsWith('*')));
    assert.deepEqual(offenders, []);
  });
});
