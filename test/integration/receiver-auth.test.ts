/**
 * The receiver's front door on real sockets and real receiver processes: refusals happen from the
 * headers alone, before any body byte; a signed request cannot be altered, replayed (in its window,
 * to another host, after a restart, with Redis or without), nor used with a retired key; every
 * refusal reaches the metrics hook; and no secret, signature or deployment env value is ever logged.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { AddressList, KeyRing, MemoryNonceStore, RequestVerifier, signRequest } from '@ferry/auth';
import { createBaseApp, finishApp, listen } from '@ferry/http';
import { digestOf } from '@ferry/integrity';
import { createLogger } from '@ferry/log';
import type { ErrorCode } from '@ferry/protocol';
import { requireAllowedSource, requireSignature } from '@ferry/http';
import { buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { lines, probe, rawRequest, signed, type RawAnswer } from '../helpers/raw-http.ts';
import { RedisServer } from '../helpers/servers.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const key = { keyId: 'auth-test', secret: randomBytes(24).toString('base64url') };
const otherSecret = randomBytes(24).toString('base64url');
const manifestPart = Buffer.from('--x\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n{}\r\n--x--\r\n');
const GIGABYTE = 1024 ** 3;

/** A signed one-shot upload head that declares `declared` body bytes and waits for 100 Continue. */
function uploadHead(headers: Record<string, string>, options: { method?: string; path?: string; declared?: number; extra?: string[] } = {}): string[] {
  return [
    `${options.method ?? 'POST'} ${options.path ?? '/v1/packages'} HTTP/1.1`, 'Host: 127.0.0.1', 'Content-Type: multipart/form-data; boundary=x',
    `Content-Length: ${options.declared ?? GIGABYTE}`, 'Expect: 100-continue', ...lines(headers), ...(options.extra ?? []),
  ];
}

function uploadHeaders(audience: string, overrides: Partial<Parameters<typeof signRequest>[0]> = {}): Record<string, string> {
  return signRequest({ method: 'POST', path: '/v1/packages', contentDigest: digestOf('{}'), audience, ...key, ...overrides });
}

/** Refused before the body: the right status and code, no body byte sent, the connection closed. */
function assertRefusedBeforeBody(answer: RawAnswer, status: number, code: string, label: string): void {
  assert.equal(answer.status, status, `${label}: ${answer.body}`);
  assert.equal(answer.code, code, label);
  assert.equal(answer.bodyBytesSent, 0, `${label}: refused before the body`);
  assert.equal(answer.headers.connection, 'close', label);
}

/**
 * One bit of one character flipped, staying in the field's alphabet (hex, base64url, host id):
 * a nonce's "-" flipped to "," would be refused as malformed before the signature is checked.
 */
const flipBit = (text: string, index: number): string => {
  const original = text[index] ?? '';
  const flipped = String.fromCharCode(original.charCodeAt(0) ^ 0x01);
  const alphabet = /[0-9a-f]/.test(original) ? /^[0-9a-f]$/ : /^[A-Za-z0-9]$/;
  return text.slice(0, index) + (alphabet.test(flipped) ? flipped : original === '0' ? '1' : '0') + text.slice(index + 1);
};

async function restart(receiver: ReceiverProcess, env: Record<string, string>): Promise<ReceiverProcess> {
  await receiver.stop();
  return startReceiverProcess(env);
}

/** Waits for a log line; a line that never comes fails by the suite's timeout. */
async function logged(receiver: ReceiverProcess, msg: RegExp, from = 0): Promise<void> {
  while (!receiver.logs.slice(from).some((entry) => typeof entry.msg === 'string' && msg.test(entry.msg))) {
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('receiver authentication on real sockets', { timeout: 120_000 }, () => {
  const hostId = `auth-${run}`;
  const env = {
    DOCKER_HOST: stack().targetDockerHost, FERRY_KEYS: `${key.keyId}:${key.secret},other:${otherSecret}`, FERRY_HOST_ID: hostId,
  };
  let receiver: ReceiverProcess;
  before(async () => { receiver = await startReceiverProcess(env); });
  after(async () => receiver?.stop());

  test('row 1: no, empty, non-hex or wrong-length signature → 401 before a body byte is sent', async () => {
    const good = uploadHeaders(hostId);
    const signature = good['x-ferry-signature'] ?? '';
    const withSignature = (value: string | undefined): Record<string, string> => {
      const headers = { ...good };
      delete headers['x-ferry-signature'];
      return value === undefined ? headers : { ...headers, 'X-Ferry-Signature': value };
    };
    const cases: [string, Record<string, string>, string][] = [
      ['no auth headers at all', {}, 'FERRY_ERR_AUTH_MISSING'],
      ['no signature', withSignature(undefined), 'FERRY_ERR_AUTH_MISSING'],
      ['empty signature', withSignature(''), 'FERRY_ERR_AUTH_MISSING'],
      ['non-hex signature', withSignature('g'.repeat(64)), 'FERRY_ERR_BAD_SIGNATURE'],
      ['upper-case hex', withSignature(signature.toUpperCase()), 'FERRY_ERR_BAD_SIGNATURE'],
      ['63 characters', withSignature(signature.slice(0, 63)), 'FERRY_ERR_BAD_SIGNATURE'],
      ['65 characters', withSignature(`${signature}0`), 'FERRY_ERR_BAD_SIGNATURE'],
      ['a signature under another secret', uploadHeaders(hostId, { secret: randomBytes(24).toString('base64url') }), 'FERRY_ERR_BAD_SIGNATURE'],
      ['an unknown key id', uploadHeaders(hostId, { keyId: 'nobody' }), 'FERRY_ERR_UNKNOWN_KEY'],
    ];
    for (const [label, headers, expected] of cases) {
      // A gigabyte is declared; none of it is ever sent, and the answer still comes.
      const answer = await rawRequest(receiver.url, { head: uploadHead(headers), body: manifestPart, waitForContinue: true });
      assertRefusedBeforeBody(answer, 401, expected, label);
    }
  });

  test('row 2: one bit flipped in the signature or in any signed field (method, path, offset, host, digest…) → 401', async () => {
    const base = uploadHeaders(hostId, { offset: 1024 });
    const signature = base['x-ferry-signature'] ?? '';
    const cases: [string, Record<string, string>, { method?: string; path?: string; extra?: string[] }][] = [
      ['signature, first bit', { ...base, 'x-ferry-signature': flipBit(signature, 0) }, {}],
      ['signature, last character', { ...base, 'x-ferry-signature': signature.slice(0, 63) + (signature.endsWith('0') ? '1' : '0') }, {}],
      ['method (POST → PUT)', base, { method: 'PUT' }],
      ['path', base, { path: '/v1/packagea' }],
      ['path, query added', base, { path: '/v1/packages?x=1' }],
      ['offset (1024 → 1025)', base, { extra: ['Upload-Offset: 1025'] }],
      ['offset missing', base, {}],
      ['host (audience header)', { ...base, 'x-ferry-audience': flipBit(hostId, 1) }, { extra: ['Upload-Offset: 1024'] }],
      ['content digest', { ...base, 'x-ferry-content-digest': flipBit(base['x-ferry-content-digest'] ?? '', 20) }, { extra: ['Upload-Offset: 1024'] }],
      ['timestamp', { ...base, 'x-ferry-timestamp': String(Number(base['x-ferry-timestamp']) ^ 1) }, { extra: ['Upload-Offset: 1024'] }],
      ['nonce', { ...base, 'x-ferry-nonce': flipBit(base['x-ferry-nonce'] ?? '', 3) }, { extra: ['Upload-Offset: 1024'] }],
    ];
    for (const [label, headers, options] of cases) {
      const answer = await rawRequest(receiver.url, { head: uploadHead(headers, options), body: manifestPart, waitForContinue: true });
      assertRefusedBeforeBody(answer, 401, 'FERRY_ERR_BAD_SIGNATURE', label);
    }
    // The unaltered request passes the same checks (and is then refused by the route, not by auth).
    const intact = await rawRequest(receiver.url, { head: uploadHead(base, { extra: ['Upload-Offset: 1024', 'Connection: close'], declared: manifestPart.length }), body: manifestPart, waitForContinue: true });
    assert.equal(intact.bodyBytesSent, manifestPart.length, 'the intact request was asked for its body');
    assert.notEqual(intact.status, 401, intact.body);
  });

  test('row 3: a timestamp 301 s off either way → 401 FERRY_ERR_STALE_TIMESTAMP before the body', async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const skew of [-301, 301, -86_400]) {
      const answer = await rawRequest(receiver.url, { head: uploadHead(uploadHeaders(hostId, { now: now + skew })), body: manifestPart, waitForContinue: true });
      assertRefusedBeforeBody(answer, 401, 'FERRY_ERR_STALE_TIMESTAMP', `skew ${skew}`);
    }
  });

  test('row 4: the same signed request sent twice within the window: the second is refused as a replay', async () => {
    const headers = uploadHeaders(hostId);
    const first = await rawRequest(receiver.url, { head: uploadHead(headers, { declared: manifestPart.length, extra: ['Connection: close'] }), body: manifestPart, waitForContinue: true });
    assert.equal(first.bodyBytesSent, manifestPart.length, 'the first one was let in');
    assert.notEqual(first.status, 401);
    const second = await rawRequest(receiver.url, { head: uploadHead(headers, { declared: manifestPart.length, extra: ['Connection: close'] }), body: manifestPart, waitForContinue: true });
    assertRefusedBeforeBody(second, 401, 'FERRY_ERR_REPLAY', 'replay');
  });

  test('row 4: a request accepted by one host is refused by another (audience)', async () => {
    const otherHost = `auth-other-${run}`;
    const other = await startReceiverProcess({ ...env, FERRY_HOST_ID: otherHost });
    try {
      const headers = signed(key, hostId);
      assert.equal((await probe(receiver.url, headers)).status, 404, 'accepted by the host it was signed for');
      const replayed = await probe(other.url, headers);
      assert.equal(replayed.status, 401);
      assert.equal(replayed.code, 'FERRY_ERR_WRONG_AUDIENCE');
      assert.deepEqual(replayed.details, { expected: otherHost });
      const misaddressed = await probe(receiver.url, signed(key, otherHost));
      assert.equal(misaddressed.code, 'FERRY_ERR_WRONG_AUDIENCE');
      assert.equal((await probe(other.url, signed(key, otherHost))).status, 404);
    } finally {
      await other.stop();
    }
  });

  test('row 4: after a restart with nonces in memory, anything signed before the start is refused', async () => {
    const accepted = signed(key, hostId);
    const neverSent = signed(key, hostId);
    assert.equal((await probe(receiver.url, accepted)).status, 404);
    receiver = await restart(receiver, env);
    for (const [label, headers] of [['replayed', accepted], ['signed before, never sent', neverSent]] as const) {
      const answer = await probe(receiver.url, headers);
      assert.equal(answer.status, 401, label);
      assert.equal(answer.code, 'FERRY_ERR_REPLAY', label);
      assert.deepEqual(answer.details, { reason: 'before-boot' }, label);
    }
    assert.equal((await probe(receiver.url, signed(key, hostId))).status, 404, 'a request signed now passes');
  });

  test('row 5: during a rotation the old key works until its notAfter, then it is refused; an unknown key id → 401', async () => {
    const rotating = await startReceiverProcess({
      ...env, FERRY_HOST_ID: `rot-${run}`,
      FERRY_KEYS: `new:${key.secret},old:${otherSecret}:notAfter=2099-01-01T00:00:00Z,retired:${otherSecret}x:notAfter=2020-01-01T00:00:00Z`,
    });
    try {
      const audience = `rot-${run}`;
      assert.equal((await probe(rotating.url, signed({ keyId: 'new', secret: key.secret }, audience))).status, 404, 'the new key');
      assert.equal((await probe(rotating.url, signed({ keyId: 'old', secret: otherSecret }, audience))).status, 404, 'the old key in its overlap');
      const retired = await probe(rotating.url, signed({ keyId: 'retired', secret: `${otherSecret}x` }, audience));
      assert.equal(retired.status, 401);
      assert.equal(retired.code, 'FERRY_ERR_KEY_EXPIRED');
      assert.deepEqual(retired.details, { keyId: 'retired', notAfter: '2020-01-01T00:00:00.000Z' });
      const unknown = await probe(rotating.url, signed({ keyId: 'auth-test', secret: key.secret }, audience));
      assert.equal(unknown.status, 401);
      assert.equal(unknown.code, 'FERRY_ERR_UNKNOWN_KEY');
      const listening = rotating.logs.find((entry) => entry.msg === 'receiver listening');
      assert.deepEqual(listening?.keyRing, [
        { id: 'new', notAfter: null }, { id: 'old', notAfter: '2099-01-01T00:00:00.000Z' }, { id: 'retired', notAfter: '2020-01-01T00:00:00.000Z' },
      ]);
    } finally {
      await rotating.stop();
    }
  });

  test('GET /healthz needs no key and names the host (the audience to sign for)', async () => {
    const answer = await fetch(`${receiver.url}/healthz`);
    assert.equal(answer.status, 200);
    assert.equal(((await answer.json()) as { host: string }).host, hostId);
  });
});

describe('nonces in Redis survive a restart; Redis down degrades to memory and the receiver keeps working', { timeout: 120_000 }, () => {
  const base = { DOCKER_HOST: stack().targetDockerHost, FERRY_KEYS: `${key.keyId}:${key.secret}` };

  test('row 4: with the stack\'s Redis, a request accepted before a restart is refused after it; one signed before but never sent passes', async () => {
    const hostId = `redis-${run}`;
    const env = { ...base, FERRY_HOST_ID: hostId, FERRY_REDIS_URL: stack().redisUrl };
    let receiver = await startReceiverProcess(env);
    try {
      await logged(receiver, /Redis answers/);
      const accepted = signed(key, hostId);
      const neverSent = signed(key, hostId);
      assert.equal((await probe(receiver.url, accepted)).status, 404);
      receiver = await restart(receiver, env);
      await logged(receiver, /Redis answers/);
      const replay = await probe(receiver.url, accepted);
      assert.equal(replay.status, 401);
      assert.equal(replay.code, 'FERRY_ERR_REPLAY');
      assert.equal(replay.details, undefined, 'refused because Redis knew the nonce, not by the boot rule');
      assert.equal((await probe(receiver.url, neverSent)).status, 404, 'Redis persists nonces, so the boot rule is not needed');
    } finally {
      await receiver.stop();
    }
  });

  test('rows 4 and 31: Redis away at start and later: requests still pass, replays are still refused, and nonces reach Redis on recovery', async () => {
    const redis = await RedisServer.create();
    const hostId = `redis-down-${run}`;
    const env = { ...base, FERRY_HOST_ID: hostId, FERRY_REDIS_URL: redis.url };
    const signedBefore = signed(key, hostId);
    let receiver = await startReceiverProcess(env);
    try {
      // Redis is not running yet: the receiver is up anyway, in memory, with the boot rule.
      await logged(receiver, /nonce store degraded/);
      assert.equal((await probe(receiver.url, signed(key, hostId))).status, 404, 'deployable while Redis is down');
      assert.equal((await probe(receiver.url, signedBefore)).details?.reason, 'before-boot');

      const mark = receiver.logs.length;
      await redis.start();
      await logged(receiver, /Redis answers/, mark);
      const first = signed(key, hostId);
      assert.equal((await probe(receiver.url, first)).status, 404);

      const down = receiver.logs.length;
      await redis.stop();
      await logged(receiver, /nonce store degraded/, down);
      assert.equal((await probe(receiver.url, first)).code, 'FERRY_ERR_REPLAY', 'memory still knows what Redis knew');
      const duringOutage = signed(key, hostId);
      assert.equal((await probe(receiver.url, duringOutage)).status, 404, 'still deployable');
      assert.equal((await probe(receiver.url, duringOutage)).code, 'FERRY_ERR_REPLAY');

      const up = receiver.logs.length;
      await redis.start();
      await logged(receiver, /Redis answers/, up);
      receiver = await restart(receiver, env);
      await logged(receiver, /Redis answers/);
      const replay = await probe(receiver.url, duringOutage);
      assert.equal(replay.code, 'FERRY_ERR_REPLAY');
      assert.equal(replay.details, undefined, 'the nonce accepted during the outage was written to Redis on recovery');
    } finally {
      await receiver.stop();
      await redis.dispose();
    }
  });
});

describe('row 3: every auth refusal reaches the onReject hook (the metrics counter)', { timeout: 30_000 }, () => {
  test('401s and 403s each call it once with their code', async () => {
    const rejected: ErrorCode[] = [];
    const audience = `hook-${run}`;
    // startedAt 0: the boot rule is the subject of other tests.
    const verifier = new RequestVerifier({ keys: new KeyRing([[key.keyId, key.secret]]), nonces: new MemoryNonceStore(), audience, startedAt: 0 });
    const app = createBaseApp(createLogger({ level: 'silent' }));
    // Only IPv6 loopback is allowed: the same server refuses IPv4 loopback by source.
    const hooks = { allow: AddressList.parse('::1'), onReject: (code: ErrorCode) => { rejected.push(code); } };
    app.use(requireAllowedSource(hooks));
    app.use('/v1', requireSignature(verifier, hooks));
    const server = await listen(finishApp(app), '::', 0);
    const port = new URL(server.url).port;
    const v6 = `http://[::1]:${port}`;
    try {
      const now = Math.floor(Date.now() / 1000);
      const answers = [
        await probe(v6, signed(key, audience, { now: now - 301 })),
        await probe(v6, signed(key, audience, { now: now + 301 })),
        await probe(v6, { ...signed(key, audience), 'x-ferry-signature': '0'.repeat(64) }),
        await probe(v6, signed(key, 'elsewhere')),
        await probe(v6, {}),
        await probe(`http://127.0.0.1:${port}`, signed(key, audience)),
        await probe(v6, signed(key, audience)),
      ];
      assert.deepEqual(answers.map((a) => a.code), [
        'FERRY_ERR_STALE_TIMESTAMP', 'FERRY_ERR_STALE_TIMESTAMP', 'FERRY_ERR_BAD_SIGNATURE', 'FERRY_ERR_WRONG_AUDIENCE',
        'FERRY_ERR_AUTH_MISSING', 'FERRY_ERR_FORBIDDEN_SOURCE', 'FERRY_ERR_NOT_FOUND',
      ]);
      assert.deepEqual(rejected, answers.slice(0, 6).map((a) => a.code), 'one call per refusal, none for the accepted request');
    } finally {
      await server.close();
    }
  });
});

/** A loopback TCP proxy that keeps a copy of every byte the client sent. */
async function recordingProxy(targetUrl: string): Promise<{ url: string; sent: () => string; close: () => Promise<void> }> {
  const target = new URL(targetUrl);
  const chunks: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    client.on('data', (chunk: Buffer) => { if (chunks.length < 64) chunks.push(Buffer.from(chunk.subarray(0, 4096))); });
    client.pipe(upstream).on('error', () => client.destroy());
    upstream.pipe(client).on('error', () => upstream.destroy());
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    url: `http://127.0.0.1:${address.port}`,
    sent: () => Buffer.concat(chunks).toString('latin1'),
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe('row 9: no key, signature or deployment env value in any log line', { timeout: 300_000 }, () => {
  const s = stack();
  const repo = `ferry-secrets-${run}`;
  const service = `secret-${run}`;
  const hostId = `secrets-${run}`;
  const envSecret = `env-value-${randomBytes(12).toString('hex')}`;
  let receiver: ReceiverProcess;
  const target = dockerodeFor(s.targetDockerHost);

  before(async () => {
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `secret-${run}`);
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_KEYS: `${key.keyId}:${key.secret}`, FERRY_HOST_ID: hostId, FERRY_NATS_URL: s.natsUrl,
      FERRY_LOG_LEVEL: 'trace',
    });
  });

  after(async () => {
    await receiver?.stop();
    await removeService(target, service);
    await removeImages(target, [`${repo}:1`]);
    await removeImages(dockerodeFor(s.buildDockerHost), [`${repo}:1`]);
  });

  test('a deployment with a secret env value, a refused replay and a bad key: the logs of both sides hold none of the secrets', async () => {
    const proxy = await recordingProxy(receiver.url);
    const port = await freePort();
    const pushed = await runFerry([
      'push', `${repo}:1`, '--to', proxy.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`, '--env', `API_TOKEN=${envSecret}`,
      '--health', `http://127.0.0.1:${port}/healthz`, '--json',
    ], { DOCKER_HOST: s.buildDockerHost, FERRY_KEY_ID: key.keyId, FERRY_KEY: key.secret, FERRY_NATS_URL: s.natsUrl }).finally(() => proxy.close());
    assert.equal(pushed.code, 0, pushed.stderr + pushed.stdout);
    assert.equal((JSON.parse(pushed.stdout) as { deployment: { state: string } }).deployment.state, 'COMPLETED');
    const signatures = [...proxy.sent().matchAll(/x-ferry-signature: ([0-9a-f]{64})/gi)].map((m) => m[1] ?? '');
    assert.ok(signatures.length >= 1, 'the proxy saw the signed upload');

    // Refusals log too: a replay of a probe and a wrong secret.
    const probeHeaders = signed(key, hostId);
    await probe(receiver.url, probeHeaders);
    assert.equal((await probe(receiver.url, probeHeaders)).code, 'FERRY_ERR_REPLAY');
    const forged = signed({ keyId: key.keyId, secret: otherSecret }, hostId);
    assert.equal((await probe(receiver.url, forged)).code, 'FERRY_ERR_BAD_SIGNATURE');
    signatures.push(probeHeaders['x-ferry-signature'] ?? '', forged['x-ferry-signature'] ?? '');

    const everything = [...receiver.logs.map((entry) => JSON.stringify(entry)), ...pushed.stdout.split('\n'), ...pushed.stderr.split('\n')];
    assert.ok(receiver.logs.some((entry) => entry.code === 'FERRY_ERR_REPLAY'), 'the receiver logged the refusals');
    for (const [what, secret] of [['key secret', key.secret], ['other secret', otherSecret], ['env value', envSecret], ...signatures.map((sig) => ['signature', sig] as const)] as const) {
      const leaks = everything.filter((line) => line.includes(secret));
      assert.deepEqual(leaks, [], `${what} appears in a log line`);
    }
  });
});
