/**
 * The receiver's front door on real sockets and real receiver processes: refusals happen from the
 * headers alone, before any body byte; a signed request cannot be altered, replayed (in its window,
 * to another host, after a restart, with Redis or without), nor used with a retired key; every
 * refusal reaches the metrics hook; no key, signature or deployment env value is ever logged; what
 * a receiver holds lets nobody deploy elsewhere; and grants are held to their services, hosts,
 * time window and revocations through real pushes.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes, type KeyObject } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  AddressList, MemoryNonceStore, RequestVerifier, TrustStore, checkIdentity, documentHeader, fingerprint, hostKeyId, issueRevocations, newChallenge,
  parsePublicKey, privateKeyPem, publicKeyText, signRequest, writeTrustFile, type SignedDocument,
} from '@ferry/auth';
import { createBaseApp, finishApp, listen } from '@ferry/http';
import { digestOf } from '@ferry/integrity';
import { createLogger } from '@ferry/log';
import { LABELS, type ErrorCode } from '@ferry/protocol';
import { requireAllowedSource, requireSignature } from '@ferry/http';
import { buildTestImage, freePort, runFerry, startReceiverProcess, startWatchedReceiver, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { lines, probe, rawRequest, signed, type RawAnswer } from '../helpers/raw-http.ts';
import { searchMemory } from '../helpers/process-memory.ts';
import { RedisServer } from '../helpers/servers.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { grantFor, keyEnv, testKey, trustDocument, trustFile, type TestKey } from '../helpers/keys.ts';
import type { EventWatcher } from '../helpers/events.ts';
import { Redis } from 'ioredis';
import type { NatsConnection } from 'nats';

const run = randomBytes(4).toString('hex');
const key = testKey('auth-test');
const otherKey = testKey('other');
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
  return signRequest({ method: 'POST', path: '/v1/packages', contentDigest: digestOf('{}'), audience, keyId: key.keyId, privateKey: key.privateKey, ...overrides });
}

/** The forms in which a private key could be found written down: its PEM's body and its 32-byte seed. */
function privateForms(privateKey: KeyObject): string[] {
  const seed = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32);
  return [privateKeyPem(privateKey).split('\n')[1] ?? '', seed.toString('base64'), seed.toString('base64url'), seed.toString('hex')];
}

/** The code of the error `ferry push --json` reported, if it printed one. */
function pushError(result: RunResult): string | undefined {
  try {
    return (JSON.parse(result.stdout) as { error?: { code?: string } }).error?.code;
  } catch {
    return undefined;
  }
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

/**
 * The current unix second, once it has just begun: a timestamp 301 s ahead of it is still 301 s
 * ahead when the receiver looks at it, unless the request takes most of a second to get there.
 */
async function freshSecond(): Promise<number> {
  await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
  return Math.floor(Date.now() / 1000);
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
    DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile([key, otherKey]), FERRY_HOST_ID: hostId,
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
      ['non-hex signature', withSignature('g'.repeat(128)), 'FERRY_ERR_BAD_SIGNATURE'],
      ['upper-case hex', withSignature(signature.toUpperCase()), 'FERRY_ERR_BAD_SIGNATURE'],
      ['127 characters', withSignature(signature.slice(0, 127)), 'FERRY_ERR_BAD_SIGNATURE'],
      ['129 characters', withSignature(`${signature}0`), 'FERRY_ERR_BAD_SIGNATURE'],
      ['64 characters (an HMAC\'s length)', withSignature(signature.slice(0, 64)), 'FERRY_ERR_BAD_SIGNATURE'],
      ['signed by another key pair under the same key id', uploadHeaders(hostId, { privateKey: testKey(key.keyId).privateKey }), 'FERRY_ERR_BAD_SIGNATURE'],
      ['signed by another trusted key under this key id', uploadHeaders(hostId, { privateKey: otherKey.privateKey }), 'FERRY_ERR_BAD_SIGNATURE'],
      ['an unknown key id', uploadHeaders(hostId, { keyId: `nobody-${run}` }), 'FERRY_ERR_UNKNOWN_KEY'],
    ];
    assert.match(signature, /^[0-9a-f]{128}$/);
    for (const [label, headers, expected] of cases) {
      // A gigabyte is declared; none of it is ever sent, and the answer still comes.
      const answer = await rawRequest(receiver.url, { head: uploadHead(headers), body: manifestPart, waitForContinue: true });
      assertRefusedBeforeBody(answer, 401, expected, label);
      // A caller probing for key names learns nothing: the answer does not repeat the id it sent.
      assert.ok(!answer.body.includes(`nobody-${run}`), `${label}: ${answer.body}`);
    }
  });

  test('row 2: one bit flipped in the signature or in any signed field (method, path, offset, host, digest…) → 401', async () => {
    const base = uploadHeaders(hostId, { offset: 1024 });
    const signature = base['x-ferry-signature'] ?? '';
    const cases: [string, Record<string, string>, { method?: string; path?: string; extra?: string[] }][] = [
      ['signature, first bit', { ...base, 'x-ferry-signature': flipBit(signature, 0) }, {}],
      ['signature, last character', { ...base, 'x-ferry-signature': signature.slice(0, 127) + (signature.endsWith('0') ? '1' : '0') }, {}],
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
    for (const skew of [-301, 301, -86_400]) {
      const now = await freshSecond();
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
    const retiredKey = testKey('retired');
    const newKey = { ...key, keyId: 'new' };
    const oldKey = { ...otherKey, keyId: 'old' };
    const rotating = await startReceiverProcess({
      ...env, FERRY_HOST_ID: `rot-${run}`,
      FERRY_TRUST_FILE: trustFile([newKey, { key: oldKey, notAfter: '2099-01-01T00:00:00Z' }, { key: retiredKey, notAfter: '2020-01-01T00:00:00Z' }]),
    });
    try {
      const audience = `rot-${run}`;
      assert.equal((await probe(rotating.url, signed(newKey, audience))).status, 404, 'the new key');
      assert.equal((await probe(rotating.url, signed(oldKey, audience))).status, 404, 'the old key in its overlap');
      const retired = await probe(rotating.url, signed(retiredKey, audience));
      assert.equal(retired.status, 401);
      assert.equal(retired.code, 'FERRY_ERR_GRANT_EXPIRED');
      assert.deepEqual(retired.details, { notAfter: '2020-01-01T00:00:00.000Z', graceSeconds: 0 });
      const unknown = await probe(rotating.url, signed(key, audience));
      assert.equal(unknown.status, 401);
      assert.equal(unknown.code, 'FERRY_ERR_UNKNOWN_KEY');
      assert.equal(unknown.details, undefined, 'the unknown key id is not named');
      const listening = rotating.logs.find((entry) => entry.msg === 'receiver listening');
      assert.deepEqual(listening?.trust, [
        { keyId: 'new', role: 'deploy', fingerprint: fingerprint(key.publicKey), notAfter: null },
        { keyId: 'old', role: 'deploy', fingerprint: fingerprint(otherKey.publicKey), notAfter: '2099-01-01T00:00:00.000Z' },
        { keyId: 'retired', role: 'deploy', fingerprint: fingerprint(retiredKey.publicKey), notAfter: '2020-01-01T00:00:00.000Z' },
      ]);
    } finally {
      await rotating.stop();
    }
  });

  test('GET /v1/identity needs no key and proves the host (the audience to sign for) with its host key; /healthz names it too', async () => {
    const challenge = newChallenge();
    const answer = await fetch(`${receiver.url}/v1/identity?challenge=${challenge}`);
    assert.equal(answer.status, 200);
    const identity = checkIdentity(((await answer.json()) as { identity: unknown }).identity, challenge);
    assert.equal(identity.host, hostId);
    const hostKey = createPrivateKey(await readFile(join(receiver.dataDir, 'host.key'), 'utf8'));
    assert.equal(identity.publicKey, publicKeyText(hostKey), 'signed with the key in its data directory');
    const health = await fetch(`${receiver.url}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { host: string }).host, hostId);
  });
});

describe('nonces in Redis survive a restart; Redis down degrades to memory and the receiver keeps working', { timeout: 120_000 }, () => {
  const base = { DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(key) };

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
      // This Redis came back empty (it keeps nothing on disk): the nonce accepted while it was away
      // is written to it on recovery. Looked at directly, since the receiver also refuses everything
      // signed before the loss it noticed, which would hide whether Redis knows the nonce.
      const direct = new Redis(redis.url, { maxRetriesPerRequest: 1 });
      try {
        const nonceKey = `ferry:nonce:${hostId}:${key.keyId}:${duringOutage['x-ferry-nonce'] ?? ''}`;
        while ((await direct.exists(nonceKey)) === 0) await new Promise((r) => setTimeout(r, 50));
      } finally {
        direct.disconnect();
      }
      receiver = await restart(receiver, env);
      await logged(receiver, /Redis answers/);
      assert.equal((await probe(receiver.url, duringOutage)).code, 'FERRY_ERR_REPLAY');
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
    const verifier = new RequestVerifier({ trust: new TrustStore({ data: trustDocument([key]) }), nonces: new MemoryNonceStore(), audience, startedAt: 0 });
    const app = createBaseApp(createLogger({ level: 'silent' }));
    // Only IPv6 loopback is allowed: the same server refuses IPv4 loopback by source.
    const hooks = { allow: AddressList.parse('::1'), onReject: (code: ErrorCode) => { rejected.push(code); } };
    app.use(requireAllowedSource(hooks));
    app.use('/v1', requireSignature(verifier, hooks));
    const server = await listen(finishApp(app), '::', 0);
    const port = new URL(server.url).port;
    const v6 = `http://[::1]:${port}`;
    try {
      const answers = [
        await probe(v6, signed(key, audience, { now: await freshSecond() - 301 })),
        await probe(v6, signed(key, audience, { now: await freshSecond() + 301 })),
        await probe(v6, { ...signed(key, audience), 'x-ferry-signature': '0'.repeat(128) }),
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
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_NATS_URL: s.natsUrl,
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
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), FERRY_NATS_URL: s.natsUrl }).finally(() => proxy.close());
    assert.equal(pushed.code, 0, pushed.stderr + pushed.stdout);
    assert.equal((JSON.parse(pushed.stdout) as { deployment: { state: string } }).deployment.state, 'COMPLETED');
    const signatures = [...proxy.sent().matchAll(/x-ferry-signature: ([0-9a-f]{128})/gi)].map((m) => m[1] ?? '');
    assert.ok(signatures.length >= 1, 'the proxy saw the signed upload');

    // Refusals log too: a replay of a probe and a signature by the wrong key pair.
    const probeHeaders = signed(key, hostId);
    await probe(receiver.url, probeHeaders);
    assert.equal((await probe(receiver.url, probeHeaders)).code, 'FERRY_ERR_REPLAY');
    const forged = signed({ keyId: key.keyId, privateKey: otherKey.privateKey }, hostId);
    assert.equal((await probe(receiver.url, forged)).code, 'FERRY_ERR_BAD_SIGNATURE');
    signatures.push(probeHeaders['x-ferry-signature'] ?? '', forged['x-ferry-signature'] ?? '');

    const everything = [...receiver.logs.map((entry) => JSON.stringify(entry)), ...pushed.stdout.split('\n'), ...pushed.stderr.split('\n')];
    assert.ok(receiver.logs.some((entry) => entry.code === 'FERRY_ERR_REPLAY'), 'the receiver logged the refusals');
    const hostKey = createPrivateKey(await readFile(join(receiver.dataDir, 'host.key'), 'utf8'));
    for (const [what, secret] of [
      ...privateForms(key.privateKey).map((form) => ['the signing key', form] as const),
      ...privateForms(otherKey.privateKey).map((form) => ['the other key', form] as const),
      ...privateForms(hostKey).map((form) => ['the receiver\'s host key', form] as const),
      ['env value', envSecret] as const,
      ...signatures.map((sig) => ['signature', sig] as const),
    ]) {
      const leaks = everything.filter((line) => line.includes(secret));
      assert.deepEqual(leaks, [], `${what} appears in a log line`);
    }
  });
});

/** Every regular file under `dir`, with its bytes. */
async function filesUnder(dir: string): Promise<{ path: string; bytes: Buffer }[]> {
  const found: { path: string; bytes: Buffer }[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...await filesUnder(path));
    else if (entry.isFile()) found.push({ path, bytes: await readFile(path) });
  }
  return found;
}

/** A process and its descendants, by pid, as /proc lists them. */
async function processTree(pid: number): Promise<number[]> {
  const pids = [pid];
  for (const task of await readdir(`/proc/${pid}/task`).catch(() => [])) {
    const children = await readFile(`/proc/${pid}/task/${task}/children`, 'utf8').catch(() => '');
    for (const child of children.split(' ').filter(Boolean)) pids.push(...await processTree(Number(child)));
  }
  return pids;
}

/** True when `bytes` is a private key on its own (PEM, or PKCS#8 DER) or holds a PEM private key block. */
function isOrHoldsPrivateKey(bytes: Buffer): boolean {
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(bytes.toString('latin1'))) return true;
  try {
    createPrivateKey({ key: bytes, format: 'der', type: 'pkcs8' });
    return true;
  } catch {
    return false;
  }
}

describe('row 33: what a receiver holds lets nobody deploy to another host, nor to itself', { timeout: 300_000 }, () => {
  const s = stack();
  const ci = testKey(`ci-${run}`);
  const hostA = `own-a-${run}`;
  const hostB = `own-b-${run}`;
  const repo = `ferry-own-${run}`;
  const service = `own-${run}`;
  const target = dockerodeFor(s.targetDockerHost);
  const trustA = trustFile(ci);
  const trustB = trustFile(ci);
  let a: ReceiverProcess;
  let b: ReceiverProcess;

  before(async () => {
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `own-${run}`);
    a = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustA, FERRY_HOST_ID: hostA, FERRY_NATS_URL: s.natsUrl });
    b = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustB, FERRY_HOST_ID: hostB });
  });

  after(async () => {
    await a?.stop();
    await b?.stop();
    await removeService(target, service);
    await removeImages(target, [`${repo}:1`]);
    await removeImages(dockerodeFor(s.buildDockerHost), [`${repo}:1`]);
  });

  test('A deploys with the CI key; then everything A holds (data dir, trust file, environment) holds no private key but its host key, and that key deploys nowhere', async () => {
    // A has done real work, so its data directory holds what a receiver in service holds.
    const pushed = await runFerry(['push', `${repo}:1`, '--to', a.url, '--name', service, '--network', 'none', '--json'], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(ci) });
    assert.equal(pushed.code, 0, pushed.stderr + pushed.stdout);
    const deployedByA = (JSON.parse(pushed.stdout) as { deploymentId: string }).deploymentId;

    // Everything A holds on disk and in its environment, read as an attacker on A would.
    const files = [...await filesUnder(a.dataDir), { path: trustA, bytes: await readFile(trustA) }];
    assert.ok(a.child.pid !== undefined);
    const environments = await Promise.all((await processTree(a.child.pid)).map(async (pid) => ({ path: `/proc/${pid}/environ`, bytes: await readFile(`/proc/${pid}/environ`) })));
    assert.ok(environments.some((env) => env.bytes.toString('utf8').includes(`FERRY_HOST_ID=${hostA}`)), 'the receiver\'s environment was read');
    const held = [...files, ...environments];
    assert.ok(files.some((f) => f.path.startsWith(join(a.dataDir, 'journal'))), `A's data directory holds its journal: ${files.map((f) => f.path).join(', ')}`);

    const hostKeyFile = join(a.dataDir, 'host.key');
    assert.deepEqual(held.filter((f) => isOrHoldsPrivateKey(f.bytes)).map((f) => f.path), [hostKeyFile], 'no private key but the host key');
    assert.equal((await stat(hostKeyFile)).mode & 0o777, 0o600);
    const ciForms = privateForms(ci.privateKey);
    for (const { path, bytes } of held) {
      const text = bytes.toString('latin1');
      assert.ok(!ciForms.some((form) => text.includes(form)), `${path} holds the CI key's private part`);
    }
    // The trust file holds public keys only, each a valid one.
    const trust = JSON.parse(await readFile(trustA, 'utf8')) as { keys: { id: string; publicKey: string }[] };
    for (const entry of trust.keys) assert.equal(publicKeyText(parsePublicKey(entry.publicKey, entry.id)), entry.publicKey);
    assert.deepEqual(trust.keys.map((k) => k.id), [ci.keyId]);

    // The attacker's best credential: A's host key, under A's host key id.
    const stolen = { keyId: hostKeyId(hostA), privateKey: createPrivateKey(await readFile(hostKeyFile, 'utf8')) };
    assert.equal((await probe(b.url, signed(ci, hostB))).status, 404, 'B lets the CI key in');
    const read = await probe(b.url, signed(stolen, hostB));
    assert.equal(read.code, 'FERRY_ERR_UNKNOWN_KEY');
    const deploy = await rawRequest(b.url, { head: uploadHead(uploadHeaders(hostB, stolen)), body: manifestPart, waitForContinue: true });
    assertRefusedBeforeBody(deploy, 401, 'FERRY_ERR_UNKNOWN_KEY', 'upload to B signed with A\'s host key');
    assert.ok(!deploy.body.includes(stolen.keyId), deploy.body);
    const session = await rawRequest(b.url, {
      head: [
        'POST /v1/uploads HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: application/json', 'Content-Length: 2', 'Expect: 100-continue',
        ...lines(uploadHeaders(hostB, { ...stolen, path: '/v1/uploads' })),
      ],
      body: Buffer.from('{}'), waitForContinue: true,
    });
    assertRefusedBeforeBody(session, 401, 'FERRY_ERR_UNKNOWN_KEY', 'resumable upload session on B signed with A\'s host key');
    // Under the CI key's id, A's host key is simply the wrong key.
    assert.equal((await probe(b.url, signed({ keyId: ci.keyId, privateKey: stolen.privateKey }, hostB))).code, 'FERRY_ERR_BAD_SIGNATURE');
    // Nor does A's own key deploy to A: the host key is not in A's trust file.
    const self = await rawRequest(a.url, { head: uploadHead(uploadHeaders(hostA, stolen)), body: manifestPart, waitForContinue: true });
    assertRefusedBeforeBody(self, 401, 'FERRY_ERR_UNKNOWN_KEY', 'upload to A signed with its own host key');

    // And as the CLI would use it.
    const forged = await runFerry(['push', `${repo}:1`, '--to', b.url, '--name', service, '--network', 'none', '--json'], {
      DOCKER_HOST: s.buildDockerHost, FERRY_KEY_ID: stolen.keyId, FERRY_KEY_FILE: hostKeyFile,
    });
    assert.notEqual(forged.code, 0, forged.stdout);
    assert.equal(pushError(forged), 'FERRY_ERR_UNKNOWN_KEY', forged.stderr + forged.stdout);
    assert.equal((await target.getContainer(service).inspect()).Config.Labels[LABELS.deploymentId], deployedByA, 'the service is still what A deployed');
  });
});

/** A private key's forms as bytes in memory: its raw seed, and its written forms as one-byte and as two-byte (UTF-16) strings. */
function privateNeedles(privateKey: KeyObject): Buffer[] {
  const seed = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32);
  return [seed, ...privateForms(privateKey).flatMap((form) => [Buffer.from(form, 'latin1'), Buffer.from(form, 'utf16le')])];
}

describe('row 33: a receiver\'s process memory holds no signer\'s private key', { timeout: 300_000 }, () => {
  const s = stack();
  const admin = testKey(`mem-admin-${run}`);
  const deployer = testKey(`mem-deploy-${run}`);
  const ci = testKey(`mem-ci-${run}`);
  const hostId = `mem-${run}`;
  const repo = `ferry-mem-${run}`;
  const services = [`mem-${run}-direct`, `mem-${run}-granted`];
  const target = dockerodeFor(s.targetDockerHost);
  let receiver: ReceiverProcess;

  before(async () => {
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `mem-${run}`);
    // The admin key is trusted to grant; the deploy key deploys on its own; the CI key only by the admin's grant.
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }, deployer]), FERRY_HOST_ID: hostId,
    });
  });

  after(async () => {
    await receiver?.stop();
    for (const service of services) await removeService(target, service);
    await removeImages(target, [`${repo}:1`]);
    await removeImages(dockerodeFor(s.buildDockerHost), [`${repo}:1`]);
  });

  test('after deployments by a trusted key and by a key with an admin\'s grant, its memory holds its host key and none of the three signers\' private keys', async () => {
    const grant = grantFor(ci, admin, { role: 'deploy', services: [services[1] ?? ''], hosts: ['*'], notAfter: new Date(Date.now() + 3600_000) });
    const deployments: string[] = [];
    for (const [service, env] of [[services[0], keyEnv(deployer)], [services[1], keyEnv(ci, grant)]] as const) {
      const pushed = await runFerry(['push', `${repo}:1`, '--to', receiver.url, '--name', service ?? '', '--network', 'none', '--json'], { DOCKER_HOST: s.buildDockerHost, ...env });
      assert.equal(pushed.code, 0, pushed.stderr + pushed.stdout);
      deployments.push((JSON.parse(pushed.stdout) as { deploymentId: string }).deploymentId);
    }

    // Found, so the search reaches both heaps: the host key's seed, which OpenSSL holds for the
    // receiver's key object, and the deployment ids its journal keeps as JavaScript strings.
    const hostKey = createPrivateKey(await readFile(join(receiver.dataDir, 'host.key'), 'utf8'));
    const controls = [hostKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32), ...deployments.map((id) => Buffer.from(id, 'latin1'))];
    const signers = { admin, deployer, ci };
    const secrets = Object.entries(signers).flatMap(([name, k]) => privateNeedles(k.privateKey).map((needle, form) => ({ name, form, needle })));
    assert.ok(receiver.child.pid !== undefined);
    for (const pid of await processTree(receiver.child.pid)) {
      const { found, bytesRead, mappings } = await searchMemory(pid, [...controls, ...secrets.map((secret) => secret.needle)]);
      if (pid === receiver.child.pid) {
        assert.deepEqual(found.slice(0, controls.length), [true, true, true], `the host key's seed and the deployment ids are found in ${bytesRead} bytes of ${mappings} mappings`);
      }
      const leaked = secrets.filter((_, i) => found[controls.length + i]).map(({ name, form }) => `${name} (form ${form})`);
      assert.deepEqual(leaked, [], `process ${pid} holds a signer's private key`);
    }
  });
});

describe('rows 33 and 34: grants on real receivers, through real pushes', { timeout: 600_000 }, () => {
  const s = stack();
  const admin = testKey(`admin-${run}`);
  const ci = testKey(`ci-${run}`);
  const prodHost = `prod-${run}`;
  const devHost = `dev-${run}`;
  const repo = `ferry-grant-${run}`;
  const web = `web-${run}`;
  const db = `db-${run}`;
  const target = dockerodeFor(s.targetDockerHost);
  const prodTrust = trustFile([{ key: admin, role: 'admin' }]);
  // Whole seconds: the receiver counts grant times in seconds, and reports them so.
  const minutes = (n: number): Date => new Date(Math.floor(Date.now() / 1000 + n * 60) * 1000);
  let prod: ReceiverProcess;
  let watcher: EventWatcher;
  let nc: NatsConnection;
  let dev: ReceiverProcess;

  before(async () => {
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `grant-${run}`);
    ({ receiver: prod, watcher, nc } = await startWatchedReceiver(prodHost, prodTrust, { FERRY_LABELS: 'env=prod,role=web' }));
    dev = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }]), FERRY_HOST_ID: devHost, FERRY_LABELS: 'env=dev',
    });
  });

  after(async () => {
    await prod?.stop();
    await dev?.stop();
    await nc?.drain();
    await removeService(target, web);
    await removeService(target, db);
    await removeImages(target, [`${repo}:1`]);
    await removeImages(dockerodeFor(s.buildDockerHost), [`${repo}:1`]);
  });

  const push = (url: string, service: string, signer: TestKey, grant: SignedDocument): Promise<RunResult> =>
    runFerry(['push', `${repo}:1`, '--to', url, '--name', service, '--network', 'none', '--json'], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(signer, grant) });

  const webOnProd = (request: { notAfter?: Date; graceSeconds?: number } = {}): SignedDocument =>
    grantFor(ci, admin, { role: 'deploy', services: ['web-*'], hosts: ['env=prod'], notAfter: request.notAfter ?? minutes(60), graceSeconds: request.graceSeconds ?? 0 });

  test('a grant a minute past its notAfter, inside its grace, deploys, and the receiver publishes ferry.grant.grace', async () => {
    const grant = webOnProd({ notAfter: minutes(-1), graceSeconds: 3600 });
    const result = await push(prod.url, web, ci, grant);
    assert.equal(result.code, 0, result.stderr + result.stdout);
    const summary = JSON.parse(result.stdout) as { deploymentId: string; deployment: { state: string } };
    assert.equal(summary.deployment.state, 'COMPLETED');
    const warning = await watcher.until(summary.deploymentId, 'grant.grace');
    const payload = JSON.parse(Buffer.from(grant.payload, 'base64').toString('utf8')) as { id: string; notAfter: string };
    assert.equal(warning.data.keyId, ci.keyId);
    assert.equal(warning.data.grant, payload.id);
    assert.equal(warning.data.notAfter, payload.notAfter);
    assert.equal(warning.data.graceSeconds, 3600);
    assert.equal((await target.getContainer(web).inspect()).State.Running, true);
  });

  test('past its grace → the push fails with FERRY_ERR_GRANT_EXPIRED and the running service is untouched', async () => {
    const running = await target.getContainer(web).inspect();
    const result = await push(prod.url, web, ci, webOnProd({ notAfter: minutes(-120), graceSeconds: 3600 }));
    assert.notEqual(result.code, 0, result.stdout);
    assert.equal(pushError(result), 'FERRY_ERR_GRANT_EXPIRED', result.stderr + result.stdout);
    assert.equal((await target.getContainer(web).inspect()).Id, running.Id);
  });

  test('a web-*/env=prod grant cannot push db (FERRY_ERR_NOT_GRANTED), nor push web to a receiver labelled env=dev', async () => {
    const grant = webOnProd();
    const refused = await push(prod.url, db, ci, grant);
    assert.notEqual(refused.code, 0, refused.stdout);
    assert.equal(pushError(refused), 'FERRY_ERR_NOT_GRANTED', refused.stderr + refused.stdout);
    await assert.rejects(target.getContainer(db).inspect(), (err: { statusCode?: number }) => err.statusCode === 404, 'nothing runs as db');

    const elsewhere = await push(dev.url, web, ci, grant);
    assert.notEqual(elsewhere.code, 0, elsewhere.stdout);
    assert.equal(pushError(elsewhere), 'FERRY_ERR_NOT_GRANTED', elsewhere.stderr + elsewhere.stdout);
    // The same grant is good where it was meant for: prod lets it in.
    assert.equal((await probe(prod.url, signed(ci, prodHost, { grant: documentHeader(grant) }))).status, 404);
  });

  test('a key revoked in the trust file of a running receiver is refused, also by ferry push', async () => {
    const revokee = testKey(`revokee-${run}`);
    const grant = grantFor(revokee, admin, { role: 'deploy', services: ['web-*'], hosts: ['env=prod'], notAfter: minutes(60) });
    assert.equal((await probe(prod.url, signed(revokee, prodHost, { grant: documentHeader(grant) }))).status, 404, 'accepted before the revocation');
    await writeTrustFile(prodTrust, trustDocument([{ key: admin, role: 'admin' }], { revocations: [issueRevocations({ keys: [revokee.keyId] }, admin)] }));
    // The receiver looks at its trust file again at most once a second: poll until it has.
    for (;;) {
      const answer = await probe(prod.url, signed(revokee, prodHost, { grant: documentHeader(grant) }));
      if (answer.code === 'FERRY_ERR_KEY_REVOKED') break;
      assert.equal(answer.status, 404, `before the revocation is seen: ${answer.code ?? ''}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const result = await push(prod.url, web, revokee, grant);
    assert.notEqual(result.code, 0, result.stdout);
    assert.equal(pushError(result), 'FERRY_ERR_KEY_REVOKED', result.stderr + result.stdout);
    // The revocation names one key: the CI key's grant still works on the same receiver.
    assert.equal((await probe(prod.url, signed(ci, prodHost, { grant: documentHeader(webOnProd()) }))).status, 404);
  });
});
