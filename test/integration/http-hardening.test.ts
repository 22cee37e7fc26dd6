/**
 * What a receiver does with requests no honest client sends, on real sockets against real receiver
 * processes: malformed framing (row 6), sources outside the allowlist and forged X-Forwarded-For
 * (row 7), oversized heads and clients that trickle (row 8), and HTTPS with a private CA.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { digestOf } from '@ferry/integrity';
import { ResumableClient } from '@ferry/sender';
import { buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { lines, parseAnswer, probe, rawRequest, signed, type RawAnswer } from '../helpers/raw-http.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { testKey, trustFile, keyEnv } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const key = testKey('hardening');
const GIGABYTE = 1024 ** 3;
const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function baseEnv(hostId: string): Record<string, string> {
  return { DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId };
}

/** A 400 for bad framing: the Ferry error body, and the server closed the connection. */
function assertBadRequest(answer: RawAnswer, label: string): void {
  assert.equal(answer.status, 400, `${label}: ${answer.body}`);
  assert.equal(answer.code, 'FERRY_ERR_BAD_REQUEST', label);
  assert.equal(answer.headers.connection, 'close', label);
}

describe('row 6: duplicate and malformed framing → 400 and the connection closed', { timeout: 60_000 }, () => {
  const hostId = `frame-${run}`;
  let receiver: ReceiverProcess;
  before(async () => { receiver = await startReceiverProcess(baseEnv(hostId)); });
  after(async () => receiver?.stop());

  // Node's own parser refuses these; the receiver's answer is still a Ferry error body.
  test('duplicate, signed, hex, negative or non-numeric Content-Length, and Content-Length with Transfer-Encoding', async () => {
    const cases: [string, string[]][] = [
      ['two equal Content-Length', ['Content-Length: 3', 'Content-Length: 3']],
      ['two different Content-Length', ['Content-Length: 3', 'Content-Length: 4']],
      ['a Content-Length list', ['Content-Length: 3, 3']],
      ['negative', ['Content-Length: -3']],
      ['signed', ['Content-Length: +3']],
      ['hex', ['Content-Length: 0x3']],
      ['not a number', ['Content-Length: three']],
      ['beyond 2^64', ['Content-Length: 99999999999999999999999']],
      ['Content-Length then Transfer-Encoding', ['Content-Length: 3', 'Transfer-Encoding: chunked']],
      ['Transfer-Encoding then Content-Length', ['Transfer-Encoding: chunked', 'Content-Length: 3']],
      ['two Transfer-Encoding', ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked']],
    ];
    for (const [label, framing] of cases) {
      const headers = signed(key, hostId, { method: 'POST', path: '/v1/packages' });
      const answer = await rawRequest(receiver.url, { head: ['POST /v1/packages HTTP/1.1', 'Host: 127.0.0.1', ...framing, ...lines(headers)], body: Buffer.from('abc') });
      assertBadRequest(answer, label);
    }
  });

  // Node lets these through (it joins repeated headers into one value); the receiver refuses them
  // before authentication and before asking for the body.
  test('repeated auth, offset, Host or Content-Type headers and a non-chunked transfer coding: refused before a body byte', async () => {
    const headers = signed(key, hostId, { method: 'POST', path: '/v1/packages', offset: 0 });
    const twice = (name: string): string => `${name}: ${headers[name.toLowerCase()] ?? ''}`;
    const cases: [string, string[]][] = [
      ['X-Ferry-Nonce twice', [twice('X-Ferry-Nonce')]],
      ['X-Ferry-Signature twice', [twice('X-Ferry-Signature')]],
      ['X-Ferry-Key-Id twice', [twice('X-Ferry-Key-Id')]],
      ['X-Ferry-Timestamp twice', [twice('X-Ferry-Timestamp')]],
      ['X-Ferry-Content-Digest twice', [twice('X-Ferry-Content-Digest')]],
      ['X-Ferry-Audience twice, the second for another host', ['X-Ferry-Audience: elsewhere']],
      ['Upload-Offset twice', ['Upload-Offset: 0', 'Upload-Offset: 0']],
      ['Host twice', ['Host: elsewhere']],
      ['Content-Type twice', ['Content-Type: text/plain']],
    ];
    for (const [label, extra] of cases) {
      const head = [
        'POST /v1/packages HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: multipart/form-data; boundary=x', `Content-Length: ${GIGABYTE}`,
        'Expect: 100-continue', ...lines(headers), ...extra,
      ];
      const answer = await rawRequest(receiver.url, { head, body: Buffer.from('--x\r\n'), waitForContinue: true });
      assertBadRequest(answer, label);
      assert.equal(answer.bodyBytesSent, 0, `${label}: refused before the body`);
    }
    const gzip = await rawRequest(receiver.url, {
      head: ['POST /v1/packages HTTP/1.1', 'Host: 127.0.0.1', 'Transfer-Encoding: gzip', 'Expect: 100-continue', ...lines(headers)],
      body: Buffer.from('abc'), waitForContinue: true,
    });
    assertBadRequest(gzip, 'Transfer-Encoding: gzip');
    assert.equal(gzip.bodyBytesSent, 0);
  });

  test('the receiver still serves after all that', async () => {
    assert.equal((await fetch(`${receiver.url}/healthz`)).status, 200);
    assert.equal((await probe(receiver.url, signed(key, hostId))).status, 404);
  });
});

describe('row 7: source allowlist, X-Forwarded-For only from trusted proxies', { timeout: 60_000 }, () => {
  const started: ReceiverProcess[] = [];
  after(async () => { for (const r of started) await r.stop(); });
  const start = async (hostId: string, extra: Record<string, string>): Promise<ReceiverProcess> => {
    const receiver = await startReceiverProcess({ ...baseEnv(hostId), ...extra });
    started.push(receiver);
    return receiver;
  };

  test('a client outside the allowlist gets 403 before anything else; /healthz stays open', async () => {
    const hostId = `allow-${run}`;
    const receiver = await start(hostId, { FERRY_ALLOW_CIDRS: '10.0.0.0/8, fd00::/8' });
    const answer = await probe(receiver.url, signed(key, hostId));
    assert.equal(answer.status, 403);
    assert.equal(answer.code, 'FERRY_ERR_FORBIDDEN_SOURCE');
    // No signature at all and a gigabyte declared: still the source is what is refused, and no byte is read.
    const raw = await rawRequest(receiver.url, {
      head: ['POST /v1/packages HTTP/1.1', 'Host: 127.0.0.1', `Content-Length: ${GIGABYTE}`, 'Expect: 100-continue'], body: Buffer.from('x'), waitForContinue: true,
    });
    assert.equal(raw.status, 403);
    assert.equal(raw.code, 'FERRY_ERR_FORBIDDEN_SOURCE');
    assert.equal(raw.bodyBytesSent, 0);
    assert.equal(raw.headers.connection, 'close');
    const forged = await probe(receiver.url, signed(key, hostId), { 'X-Forwarded-For': '10.1.2.3' });
    assert.equal(forged.code, 'FERRY_ERR_FORBIDDEN_SOURCE', 'X-Forwarded-For from an untrusted peer is ignored');
    assert.equal((await fetch(`${receiver.url}/healthz`)).status, 200);
  });

  test('behind a trusted proxy, the client is the first untrusted address from the right of X-Forwarded-For', async () => {
    const hostId = `proxy-${run}`;
    const receiver = await start(hostId, { FERRY_ALLOW_CIDRS: '192.0.2.0/24', FERRY_TRUSTED_PROXIES: '127.0.0.1, 198.51.100.0/24' });
    const cases: [string | undefined, number][] = [
      [undefined, 403],
      ['192.0.2.10', 404],
      ['203.0.113.5', 403],
      ['192.0.2.10, 198.51.100.7', 404],
      ['192.0.2.10, 203.0.113.5', 403],
      ['not-an-address', 403],
    ];
    for (const [forwardedFor, status] of cases) {
      const answer = await probe(receiver.url, signed(key, hostId), forwardedFor === undefined ? {} : { 'X-Forwarded-For': forwardedFor });
      assert.equal(answer.status, status, `X-Forwarded-For: ${forwardedFor ?? '(none)'} → ${answer.code ?? ''}`);
    }
  });

  test('IPv6, and IPv4 peers of a dual-stack listener (::ffff:127.0.0.1) matched by IPv4 ranges', async () => {
    const hostId = `dual-${run}`;
    const receiver = await start(hostId, { FERRY_LISTEN: '[::]:0', FERRY_ALLOW_CIDRS: '127.0.0.0/8' });
    const port = new URL(receiver.url).port;
    assert.equal((await probe(`http://127.0.0.1:${port}`, signed(key, hostId))).status, 404, 'IPv4 loopback, seen as ::ffff:127.0.0.1');
    assert.equal((await probe(`http://[::1]:${port}`, signed(key, hostId))).code, 'FERRY_ERR_FORBIDDEN_SOURCE', '::1 is not in 127.0.0.0/8');

    const v6 = `dual6-${run}`;
    const only6 = await start(v6, { FERRY_LISTEN: '[::]:0', FERRY_ALLOW_CIDRS: '::1' });
    const port6 = new URL(only6.url).port;
    assert.equal((await probe(`http://[::1]:${port6}`, signed(key, v6))).status, 404);
    assert.equal((await probe(`http://127.0.0.1:${port6}`, signed(key, v6))).code, 'FERRY_ERR_FORBIDDEN_SOURCE');
  });
});

describe('row 8: oversized heads → 431; slow heads and trickling bodies are cut off, and others are still served', { timeout: 90_000 }, () => {
  const hostId = `slow-${run}`;
  let receiver: ReceiverProcess;
  before(async () => {
    receiver = await startReceiverProcess({
      ...baseEnv(hostId), FERRY_HEADERS_TIMEOUT_MS: '1000', FERRY_MIN_BODY_RATE: '1024', FERRY_BODY_RATE_WINDOW_MS: '500',
    });
  });
  after(async () => receiver?.stop());

  test('a request head over 16 KiB → 431 FERRY_ERR_HEADERS_TOO_LARGE, connection closed; 12 KiB is fine', async () => {
    const big = await rawRequest(receiver.url, { head: ['GET /healthz HTTP/1.1', 'Host: 127.0.0.1', `X-Pad: ${'a'.repeat(20 * 1024)}`] });
    assert.equal(big.status, 431);
    assert.equal(big.code, 'FERRY_ERR_HEADERS_TOO_LARGE');
    assert.equal(big.headers.connection, 'close');
    const fine = await rawRequest(receiver.url, { head: ['GET /healthz HTTP/1.1', 'Host: 127.0.0.1', `X-Pad: ${'a'.repeat(12 * 1024)}`, 'Connection: close'] });
    assert.equal(fine.status, 200);
  });

  test('a head sent a byte at a time past the headers timeout → 408, connection closed', async () => {
    const { port } = new URL(receiver.url);
    const answer = await new Promise<RawAnswer>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1');
      let received = '';
      let timer: NodeJS.Timeout | undefined;
      socket.on('connect', () => {
        socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ');
        timer = setInterval(() => { if (socket.writable) socket.write('a'); }, 200);
      });
      socket.setEncoding('utf8').on('data', (chunk: string) => { received += chunk; });
      socket.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err); });
      socket.on('close', () => { clearInterval(timer); resolve(parseAnswer(received)); });
    });
    assert.equal(answer.status, 408, answer.body);
    assert.equal(answer.code, 'FERRY_ERR_REQUEST_TIMEOUT');
  });

  test('an authenticated upload whose body trickles is cut off, its spool file removed, and the receiver serves others meanwhile', async () => {
    const size = 100_000;
    const manifest = JSON.stringify({
      schema: 'ferry.manifest/v1', deploymentId: randomUUID(), createdAt: new Date().toISOString(),
      image: { ref: `ferry-slow-${run}:1`, id: `sha256:${'a'.repeat(64)}`, diffIds: [`sha256:${'b'.repeat(64)}`] },
      package: { format: 'docker-archive', compression: 'none', size, digest: digestOf(Buffer.alloc(size)) },
      service: { name: `slow-${run}`, env: {}, network: 'none' },
    });
    const prefix = Buffer.from(
      `--x\r\nContent-Disposition: form-data; name="manifest"\r\nContent-Type: application/json\r\n\r\n${manifest}\r\n`
      + '--x\r\nContent-Disposition: form-data; name="package"; filename="package"\r\nContent-Type: application/octet-stream\r\n\r\n',
    );
    const headers = signed(key, hostId, { method: 'POST', path: '/v1/packages', digest: digestOf(manifest) });
    const ingest = join(receiver.dataDir, 'ingest');
    const { port } = new URL(receiver.url);
    let sent = 0;
    const spooling = new Promise<void>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1');
      let timer: NodeJS.Timeout | undefined;
      let received = '';
      socket.on('connect', () => {
        socket.write(`${[
          'POST /v1/packages HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: multipart/form-data; boundary=x',
          `Content-Length: ${prefix.length + size + 8}`, 'Expect: 100-continue', ...lines(headers),
        ].join('\r\n')}\r\n\r\n`);
      });
      socket.setEncoding('latin1').on('data', (chunk: string) => {
        received += chunk;
        if (!received.startsWith('HTTP/1.1 100') || timer) return;
        // The manifest and a first slice of the package arrive at once; then a byte every 200 ms.
        socket.write(Buffer.concat([prefix, Buffer.alloc(4096)]));
        sent += prefix.length + 4096;
        timer = setInterval(() => { if (socket.writable) { socket.write(Buffer.alloc(1)); sent += 1; } }, 200);
      });
      socket.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err); });
      socket.on('close', () => {
        clearInterval(timer);
        assert.ok(!received.includes('HTTP/1.1 2'), `no success answer: ${received}`);
        resolve();
      });
    });

    // While the slow upload holds its spool file, other requests are served.
    while ((await readdir(ingest)).length === 0) await pause(20);
    assert.equal((await fetch(`${receiver.url}/healthz`)).status, 200);
    assert.equal((await probe(receiver.url, signed(key, hostId))).status, 404);

    await spooling;
    assert.ok(sent < prefix.length + size, 'the connection was closed before the body was complete');
    while ((await readdir(ingest)).length > 0) await pause(20);
    assert.ok(receiver.logs.some((entry) => entry.msg === 'request body too slow: connection closed'));
    assert.equal((await fetch(`${receiver.url}/healthz`)).status, 200, 'still serving');
  });

  test('a resumable PATCH whose body trickles is cut off too, and the upload survives it', async () => {
    const size = 100_000;
    const part = Buffer.alloc(size, 7);
    const manifest = JSON.stringify({
      schema: 'ferry.manifest/v1', deploymentId: randomUUID(), createdAt: new Date().toISOString(),
      image: { ref: `ferry-slow-${run}:2`, id: `sha256:${'c'.repeat(64)}`, diffIds: [`sha256:${'d'.repeat(64)}`] },
      package: { format: 'docker-archive', compression: 'none', size, digest: digestOf(part) },
      service: { name: `slowpatch-${run}`, env: {}, network: 'none' },
    });
    const client = new ResumableClient({ url: receiver.url, credentials: key, audience: hostId });
    const { uploadId, offset } = await client.create(manifest);
    assert.equal(offset, 0);
    const path = `/v1/uploads/${uploadId}`;
    const headers = signed(key, hostId, { method: 'PATCH', path, digest: digestOf(part), offset: 0 });
    const { port } = new URL(receiver.url);
    let sent = 0;
    await new Promise<void>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1');
      let timer: NodeJS.Timeout | undefined;
      socket.on('connect', () => {
        socket.write(`${[
          `PATCH ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Content-Type: application/offset+octet-stream', `Content-Length: ${size}`,
          'Upload-Offset: 0', ...lines(headers),
        ].join('\r\n')}\r\n\r\n`);
        socket.write(part.subarray(0, 4096));
        sent = 4096;
        timer = setInterval(() => { if (socket.writable) { socket.write(part.subarray(sent, sent + 1)); sent += 1; } }, 200);
      });
      socket.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err); });
      socket.on('close', () => { clearInterval(timer); resolve(); });
    });
    assert.ok(sent < size, 'the connection was closed before the part was complete');
    // The receiver's log line may trail the closed socket; waiting for it (a hang fails by timeout) proves the cause.
    const cuts = (): number => receiver.logs.filter((entry) => entry.msg === 'request body too slow: connection closed').length;
    while (cuts() < 2) await pause(20);
    // The upload survives the cut: it still answers with an offset no further than what arrived.
    const position = await client.head(uploadId);
    assert.ok(position.offset <= sent, `offset ${position.offset} after ${sent} bytes sent`);
  });

  test('a body sent at full speed is not cut off by the rate check', async () => {
    const body = Buffer.from('--x\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n{}\r\n--x--\r\n');
    const headers = signed(key, hostId, { method: 'POST', path: '/v1/packages', digest: digestOf('{}') });
    const answer = await rawRequest(receiver.url, {
      head: [
        'POST /v1/packages HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: multipart/form-data; boundary=x', `Content-Length: ${body.length}`,
        'Expect: 100-continue', 'Connection: close', ...lines(headers),
      ],
      body, waitForContinue: true,
    });
    assert.equal(answer.bodyBytesSent, body.length);
    assert.equal(answer.code, 'FERRY_ERR_BAD_MANIFEST', 'answered by the route, not cut off');
  });
});

describe('HTTPS with FERRY_TLS_CERT / FERRY_TLS_KEY and a private CA', { timeout: 300_000 }, () => {
  const s = stack();
  const hostId = `tls-${run}`;
  const repo = `ferry-tls-${run}`;
  const service = `tls-${run}`;
  const target = dockerodeFor(s.targetDockerHost);
  let dir: string;
  let ca: Buffer;
  let receiver: ReceiverProcess;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fx-tls-'));
    await promisify(execFile)('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ]);
    ca = await readFile(join(dir, 'cert.pem'));
    receiver = await startReceiverProcess({
      ...baseEnv(hostId), FERRY_TLS_CERT: join(dir, 'cert.pem'), FERRY_TLS_KEY: join(dir, 'key.pem'), FERRY_NATS_URL: s.natsUrl,
    });
  });

  after(async () => {
    await receiver?.stop();
    await removeService(target, service);
    await removeImages(target, [`${repo}:1`]);
    await removeImages(dockerodeFor(s.buildDockerHost), [`${repo}:1`]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const get = (path: string, options: { ca?: Buffer; headers?: Record<string, string> }): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const { port } = new URL(receiver.url);
      const req = httpsRequest({ host: '127.0.0.1', port, path, headers: options.headers, ...(options.ca ? { ca: options.ca } : {}) }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (c: string) => { body += c; }).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.end();
    });

  test('the receiver speaks HTTPS only: trusted with the CA, refused without it, and plain HTTP gets no answer', async () => {
    assert.match(receiver.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const health = await get('/healthz', { ca });
    assert.equal(health.status, 200);
    assert.equal((JSON.parse(health.body) as { host: string }).host, hostId);
    assert.equal((await get('/v1/auth-probe', { ca, headers: signed(key, hostId) })).status, 404, 'a signed request over TLS passes');
    await assert.rejects(get('/healthz', {}), (err: NodeJS.ErrnoException) => /SELF_SIGNED|UNABLE_TO_VERIFY/.test(err.code ?? ''));
    await assert.rejects(fetch(`${receiver.url.replace('https:', 'http:')}/healthz`));
  });

  test('ferry push over HTTPS, trusting the CA through NODE_EXTRA_CA_CERTS, deploys', async () => {
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `tls-${run}`);
    const port = await freePort();
    const result = await runFerry([
      'push', `${repo}:1`, '--to', receiver.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
      '--health', `http://127.0.0.1:${port}/healthz`, '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), NODE_EXTRA_CA_CERTS: join(dir, 'cert.pem') });
    assert.equal(result.code, 0, result.stderr + result.stdout);
    assert.equal((JSON.parse(result.stdout) as { deployment: { state: string } }).deployment.state, 'COMPLETED');
    const untrusted = await runFerry(['push', `${repo}:1`, '--to', receiver.url, '--name', service, '--json'], {
      DOCKER_HOST: s.buildDockerHost, ...keyEnv(key),
    });
    assert.equal(untrusted.code, 3, 'without the CA the receiver is unreachable');
  });
});
