import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  AddressList, KeyRing, MemoryNonceStore, RequestVerifier, canonicalString, clientAddress, computeSignature, signRequest,
  type NonceStore, type RequestFacts, type SignedFields,
} from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { FerryError, HEADERS, type ErrorCode } from '@ferry/protocol';

// The worked example of docs/protocol.md §3.4, value for value.
const EXAMPLE = {
  keyId: 'ci-main',
  secret: 'example-secret-DO-NOT-USE-0123456789',
  method: 'POST',
  path: '/v1/packages',
  timestamp: '1767225600',
  nonce: 'q3Vv9bT1X0mZKc7hN2rQ8w',
  audience: 'edge-1',
  manifest: '{"schema":"ferry.manifest/v1","deploymentId":"3f8e2c1a-7b4d-4e6f-9a2b-1c5d8e0f4a7b","createdAt":"2026-01-01T00:00:00.000Z","image":{"ref":"registry.example.com/shop/web:1.4.2","id":"sha256:f2e0b4f667978d416cbbe0d09cfe0868e93e92d3fe7ddd18d170c995c1790920","diffIds":["sha256:f0ae7439c9678c67f703718b4b4058578f446ede52b1761b489041b957155f3d","sha256:90d766e186eabbc65d151d4a6de8b31c281bf8b34d783e6e9576ec775aa24f81"]},"package":{"format":"docker-archive","compression":"zstd","size":48213577,"digest":"blake3:afda713857004f77f59f3fd28438907cc975e9fc5407425f78e366a35a216726"},"service":{"name":"web","env":{"PORT":"8080"},"network":"host","health":{"type":"http","url":"http://127.0.0.1:8080/healthz","expectStatus":200}}}',
  digest: 'blake3:7c446e0158ef423130e0400c091d5e6f7c2001ac9a8f31d7c17ae625334a582b',
  canonical: [
    'FERRY-HMAC-SHA256-V1',
    'POST',
    '/v1/packages',
    '1767225600',
    'q3Vv9bT1X0mZKc7hN2rQ8w',
    'blake3:7c446e0158ef423130e0400c091d5e6f7c2001ac9a8f31d7c17ae625334a582b',
    'ci-main',
    'edge-1',
    '',
  ].join('\n'),
  signature: '7ef66b2c97e997a49b7490fe09936b7c1674c180460ecf82212be5df03eb18bf',
} as const;

const NOW = Number(EXAMPLE.timestamp);
const SECRET_A = 'alpha-secret-0123456789abcdef';
const SECRET_B = 'bravo-secret-0123456789abcdef';
const DIGEST = digestOf('manifest bytes');
const NONCE_A = 'AAAAAAAAAAAAAAAAAAAAAA';
const NONCE_B = 'BBBBBBBBBBBBBBBBBBBBBB';

type Headers = RequestFacts['headers'];

const AUDIENCE = 'edge-1';

// startedAt 0: these tests are about the signature; the boot rule has its own below.
function verifier(keys = new KeyRing([['alpha', SECRET_A], ['bravo', SECRET_B]]), now = NOW): RequestVerifier {
  return new RequestVerifier({ keys, nonces: new MemoryNonceStore(), now: () => now, audience: AUDIENCE, startedAt: 0 });
}

interface Overrides { keyId?: string; secret?: string; method?: string; path?: string; now?: number; nonce?: string; digest?: string; audience?: string; offset?: number | string }

function signed(overrides: Overrides = {}): Headers {
  return signRequest({
    audience: overrides.audience ?? AUDIENCE,
    ...(overrides.offset === undefined ? {} : { offset: overrides.offset }),
    method: overrides.method ?? 'POST',
    path: overrides.path ?? '/v1/packages',
    contentDigest: overrides.digest ?? DIGEST,
    keyId: overrides.keyId ?? 'alpha',
    secret: overrides.secret ?? SECRET_A,
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

describe('worked example of docs/protocol.md', () => {
  const fields: SignedFields = {
    method: EXAMPLE.method, path: EXAMPLE.path, timestamp: EXAMPLE.timestamp, nonce: EXAMPLE.nonce, contentDigest: EXAMPLE.digest, keyId: EXAMPLE.keyId,
    audience: EXAMPLE.audience, offset: '',
  };
  const exampleOptions = {
    method: 'POST', path: EXAMPLE.path, contentDigest: EXAMPLE.digest, keyId: EXAMPLE.keyId, secret: EXAMPLE.secret, audience: EXAMPLE.audience, now: NOW, nonce: EXAMPLE.nonce,
  };

  it('digests the manifest bytes', () => {
    assert.equal(Buffer.byteLength(EXAMPLE.manifest), 720);
    assert.equal(digestOf(EXAMPLE.manifest), EXAMPLE.digest);
  });

  it('builds the canonical string verbatim: nine lines, the last (no offset) empty', () => {
    const canonical = canonicalString(fields);
    assert.equal(canonical, EXAMPLE.canonical);
    assert.equal(canonical.split('\n').length, 9);
    assert.ok(canonical.endsWith('\nedge-1\n'), 'ends with the LF that starts the empty offset line');
  });

  it('gives the documented signature', () => {
    assert.equal(computeSignature(EXAMPLE.secret, fields), EXAMPLE.signature);
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
  });

  it('upper-cases the method', () => {
    assert.equal(computeSignature(EXAMPLE.secret, { ...fields, method: 'post' }), EXAMPLE.signature);
  });

  it('is what the document shows', () => {
    const doc = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
    assert.ok(doc.includes(`\n${EXAMPLE.manifest}\n`), 'manifest line');
    assert.ok(doc.includes(`\`\`\`\n${EXAMPLE.canonical}\n\`\`\``), 'canonical string as a code block, its empty last line included');
    for (const value of [EXAMPLE.keyId, EXAMPLE.secret, EXAMPLE.timestamp, EXAMPLE.nonce, EXAMPLE.digest, EXAMPLE.audience, EXAMPLE.signature]) {
      assert.ok(doc.includes(value), value);
    }
  });

  it('is accepted by a receiver holding the key', async () => {
    const v = verifier(KeyRing.parse(`${EXAMPLE.keyId}:${EXAMPLE.secret}`));
    const headers = signRequest(exampleOptions);
    assert.deepEqual(await v.verify(facts(headers)), { keyId: EXAMPLE.keyId, contentDigest: EXAMPLE.digest, timestamp: NOW });
  });
});

describe('signRequest', () => {
  it('draws a fresh nonce of at least 128 bits and uses the clock by default', () => {
    const before = Math.floor(Date.now() / 1000);
    const a = signRequest({ method: 'POST', path: '/v1/packages', contentDigest: DIGEST, keyId: 'alpha', secret: SECRET_A, audience: AUDIENCE });
    const b = signRequest({ method: 'POST', path: '/v1/packages', contentDigest: DIGEST, keyId: 'alpha', secret: SECRET_A, audience: AUDIENCE });
    assert.notEqual(a[HEADERS.nonce], b[HEADERS.nonce]);
    assert.match(a[HEADERS.nonce] ?? '', /^[A-Za-z0-9_-]{22,128}$/);
    const ts = Number(a[HEADERS.timestamp]);
    assert.ok(ts >= before && ts <= Math.floor(Date.now() / 1000));
    assert.match(a[HEADERS.signature] ?? '', /^[0-9a-f]{64}$/);
  });
});

describe('RequestVerifier', () => {
  it('accepts what signRequest produced', async () => {
    const verified = await verifier().verify(facts(signed()));
    assert.deepEqual(verified, { keyId: 'alpha', contentDigest: DIGEST, timestamp: NOW });
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

    it('key id, even when both keys share a secret', async () => {
      const v = verifier(new KeyRing([['alpha', SECRET_A], ['alias', SECRET_A]]));
      await refused(v.verify(facts({ ...signed(), [HEADERS.keyId]: 'alias' })), 'FERRY_ERR_BAD_SIGNATURE');
    });

    it('secret', async () => {
      await refused(verifier().verify(facts(signed({ secret: SECRET_B }))), 'FERRY_ERR_BAD_SIGNATURE');
    });
  });

  it('refuses a signature with one bit flipped', async () => {
    const headers = signed();
    const signature = Buffer.from(headers[HEADERS.signature] as string, 'hex');
    for (const bit of [0, 7, 100, 255]) {
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
      ['one character short', good.slice(0, 63), 'FERRY_ERR_BAD_SIGNATURE'],
      ['one character long', `${good}0`, 'FERRY_ERR_BAD_SIGNATURE'],
      ['twice as long', good + good, 'FERRY_ERR_BAD_SIGNATURE'],
      ['not hex', 'z'.repeat(64), 'FERRY_ERR_BAD_SIGNATURE'],
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

  it('refuses an unknown key id, naming it', async () => {
    const err = await refused(verifier().verify(facts(signed({ keyId: 'charlie' }))), 'FERRY_ERR_UNKNOWN_KEY');
    assert.deepEqual(err.details, { keyId: 'charlie' });
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
      await v.verify(facts(signed({ keyId: 'alpha', secret: SECRET_A })));
      await v.verify(facts(signed({ keyId: 'bravo', secret: SECRET_B })));
    });

    it('does not spend a nonce on a refused request', async () => {
      const v = verifier();
      await refused(v.verify(facts({ ...signed(), [HEADERS.signature]: '0'.repeat(64) })), 'FERRY_ERR_BAD_SIGNATURE');
      await refused(v.verify(facts(signed({ now: NOW - 400 }))), 'FERRY_ERR_STALE_TIMESTAMP');
      await v.verify(facts(signed()));
    });

    it('remembers a nonce for 2 × window + 1 s', async () => {
      const remembered: [string, number][] = [];
      const v = new RequestVerifier({
        keys: new KeyRing([['alpha', SECRET_A]]),
        nonces: { remember: (nonce, ttl) => { remembered.push([nonce, ttl]); return Promise.resolve(true); } },
        now: () => NOW,
        audience: AUDIENCE,
        startedAt: 0,
      });
      await v.verify(facts(signed()));
      assert.deepEqual(remembered, [[`alpha:${NONCE_A}`, 601]]);
    });
  });

  it('accepts every key of a ring during a rotation', async () => {
    const v = verifier(KeyRing.parse(`old:${SECRET_A}, new:${SECRET_B}`));
    await v.verify(facts(signed({ keyId: 'old', secret: SECRET_A, nonce: NONCE_A })));
    await v.verify(facts(signed({ keyId: 'new', secret: SECRET_B, nonce: NONCE_B })));
    await refused(v.verify(facts(signed({ keyId: 'old', secret: SECRET_B, nonce: 'C'.repeat(22) }))), 'FERRY_ERR_BAD_SIGNATURE');
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
    const v = new RequestVerifier({ keys: new KeyRing([['alpha', SECRET_A]]), nonces: new MemoryNonceStore(), now: () => NOW + 1, audience: AUDIENCE, startedAt });
    const err = await refused(v.verify(facts(signed())), 'FERRY_ERR_REPLAY');
    assert.deepEqual(err.details, { reason: 'before-boot' });
    await v.verify(facts(signed({ now: NOW + 1, nonce: NONCE_B })));
  });

  it('with a persistent store, lets the store decide for requests signed before the start', async () => {
    const store: NonceStore = { persistent: true, remember: () => Promise.resolve(true) };
    const v = new RequestVerifier({ keys: new KeyRing([['alpha', SECRET_A]]), nonces: store, now: () => NOW + 1, audience: AUDIENCE, startedAt });
    await v.verify(facts(signed()));
  });

  it('refuses a key after its notAfter, on the receiver clock, and only once the signature is right', async () => {
    const ring = KeyRing.parse(`old:${SECRET_A}:notAfter=2026-01-01T00:00:10Z,new:${SECRET_B}`);
    const at = (now: number): RequestVerifier => new RequestVerifier({ keys: ring, nonces: new MemoryNonceStore(), now: () => now, audience: AUDIENCE, startedAt: 0 });
    await at(NOW + 10).verify(facts(signed({ keyId: 'old', secret: SECRET_A, now: NOW + 10 })));
    const err = await refused(at(NOW + 11).verify(facts(signed({ keyId: 'old', secret: SECRET_A, now: NOW + 11 }))), 'FERRY_ERR_KEY_EXPIRED');
    assert.deepEqual(err.details, { keyId: 'old', notAfter: '2026-01-01T00:00:10.000Z' });
    await refused(at(NOW + 11).verify(facts(signed({ keyId: 'old', secret: SECRET_B, now: NOW + 11 }))), 'FERRY_ERR_BAD_SIGNATURE');
    await at(NOW + 11).verify(facts(signed({ keyId: 'new', secret: SECRET_B, now: NOW + 11 })));
  });
});

describe('KeyRing notAfter', () => {
  it('parses an expiry with a zone and describes keys without their secrets', () => {
    const ring = KeyRing.parse(`old:${SECRET_A}:notAfter=2026-12-01T01:00:00+01:00, new:${SECRET_B}`);
    assert.equal(ring.secretFor('old'), SECRET_A);
    assert.equal(ring.lookup('old')?.notAfter, Date.parse('2026-12-01T00:00:00Z') / 1000);
    assert.deepEqual(ring.describe(), [{ id: 'old', notAfter: '2026-12-01T00:00:00.000Z' }, { id: 'new', notAfter: null }]);
    assert.ok(!JSON.stringify(ring.describe()).includes(SECRET_A));
  });

  for (const bad of ['2026-12-01', '2026-12-01T00:00:00', 'tomorrow', '']) {
    it(`refuses notAfter=${bad || '(empty)'} without showing the secret`, () => {
      assert.throws(() => KeyRing.parse(`old:${SECRET_A}:notAfter=${bad}`), (err: unknown) => {
        assert.ok(err instanceof FerryError);
        assert.match(err.message, /entry 1: notAfter must be an ISO 8601 date-time with a zone/);
        assert.ok(!err.message.includes(SECRET_A));
        return true;
      });
    });
  }
});

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

describe('KeyRing.parse', () => {
  it('reads several keys, trimming blanks', () => {
    const ring = KeyRing.parse(` a:${SECRET_A} ,b.2:${SECRET_B},`);
    assert.deepEqual(ring.ids, ['a', 'b.2']);
    assert.equal(ring.secretFor('a'), SECRET_A);
    assert.equal(ring.secretFor('b.2'), SECRET_B);
    assert.equal(ring.secretFor('c'), undefined);
  });

  it('keeps everything after the first colon as the secret', () => {
    assert.equal(KeyRing.parse(`a:${SECRET_A}:x`).secretFor('a'), `${SECRET_A}:x`);
  });

  const secrets = ['short-secret', SECRET_A, SECRET_B, 'c-secret-0123456789'];
  const cases: [string, string, RegExp][] = [
    ['a short secret', 'ci:short-secret', /entry 1: secret must be at least 16 characters/],
    ['a duplicate id', `ci:${SECRET_A},ci:${SECRET_B}`, /entry 2: the key id of an earlier entry appears again/],
    ['a bad id', `bad id:${SECRET_A}`, /entry 1: key id must match/],
    ['an id too long', `${'k'.repeat(65)}:${SECRET_A}`, /entry 1: key id must match/],
    ['an empty id', `:${SECRET_A}`, /entry 1: key id must match/],
    ['several problems', `ok:${SECRET_A},bad/id:${SECRET_B},ci:short-secret,ok:c-secret-0123456789`, /entry 2.*entry 3: secret.*entry 4/],
    ['nothing', '', /no keys given/],
    ['only separators', ' , ,', /no keys given/],
  ];
  for (const [name, spec, message] of cases) {
    it(`refuses ${name} without showing a secret`, () => {
      assert.throws(() => KeyRing.parse(spec), (err: unknown) => {
        assert.ok(err instanceof FerryError);
        assert.equal(err.code, 'FERRY_ERR_CONFIG');
        assert.match(err.message, message);
        for (const secret of secrets) assert.ok(!err.message.includes(secret), `message shows a secret: ${err.message}`);
        return true;
      });
    });
  }

  // An entry without a colon is most likely a secret pasted without its key id: it must not be
  // echoed back as if it were an id.
  it('refuses an entry without a colon without showing it', () => {
    const bare = SECRET_A.replace(/-/g, '');
    assert.throws(() => KeyRing.parse(`ok:${SECRET_B},${bare}`), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.code, 'FERRY_ERR_CONFIG');
      assert.match(err.message, /entry 2/);
      assert.ok(!err.message.includes(bare), err.message);
      assert.ok(!err.message.includes(SECRET_B), err.message);
      return true;
    });
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
  // A secret, signature or token compared with === leaks, through timing, how much of it matched.
  // timingSafeEqual (or comparing fixed-size digests of both sides with it) is the only way allowed.
  it('no source file compares a secret, signature or token with === or !==', () => {
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
    const comparison = /\b\w*(?:secret|signature|token|password)\w*\s*[!=]==(?!\s*(?:undefined|null)\b)|[!=]==\s*\w*(?:secret|signature|token|password)\w*\b/i;
    const offenders = files.flatMap((file) => readFileSync(file, 'utf8').split('\n')
      .map((line, i) => [`${file.slice(root.length)}:${i + 1}`, line] as const)
      .filter(([, line]) => comparison.test(line) && !line.trim().startsWith('//') && !line.trim().startsWith('*')));
    assert.deepEqual(offenders, []);
  });
});
