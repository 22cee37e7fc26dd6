/**
 * The error table of docs/protocol.md §7, walked against live `ferry receiver` processes on the
 * stack's target engine: every code a receiver answers over HTTP has a recipe here that provokes
 * it, and the answer's status and code must be the ones the table gives. Every other code is
 * listed with the reason no request to a receiver can get it. A row with neither, or a recipe for
 * a code the table lacks, fails the test; so does any answer that differs from the document.
 * Beside the table: the deployments API refuses query parameters it does not take (§11.2), the
 * upload headers come with exactly the answers §10.1 lists, and a refusal may follow
 * `100 Continue` (§3.3).
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { issueRevocations, signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { ERRORS, isErrorCode, type ErrorCode } from '@ferry/protocol';
import { buildTestImage, freePort, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { removeService } from '../helpers/cleanup.ts';
import { healthGate } from '../helpers/health-gate.ts';
import { lines, parseAnswer, rawRequest, type RawAnswer } from '../helpers/raw-http.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { tarHeader } from '../helpers/tar.ts';
import { testKey, trustDocument, type TestKey } from '../helpers/keys.ts';

// ------------------------------------------------------------------------------- the document --

interface Row { status: number; by: string }

/** `| \`CODE\` | status | by | when |` rows of §7, in document order. */
function errorTable(): Map<string, Row> {
  const doc = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
  const section = doc.slice(doc.indexOf('## 7. Error codes'), doc.indexOf('\n## 8.'));
  const rows = new Map<string, Row>();
  for (const m of section.matchAll(/^\| `(FERRY_ERR_[A-Z0-9_]+)` \| (\d{3}) \| ([^|]+) \|/gm)) {
    rows.set(m[1] ?? '', { status: Number(m[2]), by: (m[3] ?? '').trim() });
  }
  return rows;
}

const TABLE = errorTable();

/**
 * Codes no request to a receiver is answered with, each with the reason. Everything else in the
 * table has a recipe below.
 */
const NOT_FROM_A_RECEIVER: Partial<Record<ErrorCode, string>> = {
  FERRY_ERR_HOST_KEY_MISMATCH: 'the sender\'s verdict on a receiver\'s identity answer; the receiver never says it',
  FERRY_ERR_TOO_MANY_STREAMS: 'the registry\'s dashboard only',
  FERRY_ERR_MISDIRECTED_REQUEST: 'the registry\'s dashboard only',
  FERRY_ERR_CONFIG: 'a start-up failure: the process exits, no HTTP answer exists',
  FERRY_ERR_USAGE: 'the CLI\'s command-line check',
  FERRY_ERR_IMAGE_NOT_FOUND: 'sender-side (the image to push is missing); a receiver says it only if an image vanishes between its load and its tag, a race no request can set up',
  FERRY_ERR_INTERNAL: 'a receiver\'s own fault by definition: a request that provokes it is a bug (test/integration/body-length.test.ts asserts none occur)',
  FERRY_ERR_RECEIVER_UNREACHABLE: 'the sender\'s, when it cannot connect',
  FERRY_ERR_RECEIVER_CIRCUIT_OPEN: 'the sender\'s circuit breaker',
  FERRY_ERR_BAD_RESPONSE: 'the client\'s verdict on an answer that is not a Ferry answer',
  FERRY_ERR_EVENTS_UNAVAILABLE: 'the sender\'s and CLI\'s, when NATS cannot be reached; a receiver never fails a request for it',
  FERRY_ERR_BUILD_FAILED: 'ferry build / ferry push --build only',
  FERRY_ERR_IMAGE_TOO_LARGE: 'ferry build / ferry push --build only',
  FERRY_ERR_HOST_UNKNOWN: 'the registry only',
  FERRY_ERR_REBUILD_IN_PROGRESS: 'the registry only',
  FERRY_ERR_JOIN_TOKEN_INVALID: 'the registry only',
  FERRY_ERR_HOST_ENROLLED: 'the registry only',
  FERRY_ERR_LABELS_PINNED: 'the registry only',
  FERRY_ERR_REGISTRY_LIMIT: 'the registry only',
  FERRY_ERR_SENDER_UNREACHABLE: 'a client of the sender service, when it cannot connect',
  FERRY_ERR_REGISTRY_UNREACHABLE: 'the CLI\'s; a receiver retries its registration in the background and answers no request with it',
  FERRY_ERR_NO_MATCHING_HOSTS: 'the sender\'s, resolving a selector at the registry',
  FERRY_ERR_BAD_DEPLOYMENT_FILE: 'the CLI\'s and the sender service\'s (test/integration/sender-service.test.ts)',
  FERRY_ERR_SENDER_INTERRUPTED: 'the sender service\'s (test/integration/sender-service.test.ts)',
  FERRY_ERR_RELEASE_HALTED: 'the sender\'s, when a phase of a release failed (ferry deploy -f)',
  FERRY_ERR_PROXY_COMMAND: 'HAProxy refusing a runtime command the receiver checked first; no request sets it up (libs/proxy; test/integration/proxy.test.ts)',
  FERRY_ERR_ROUTE_TAKEN: 'needs the host\'s proxy and a second routed service (test/integration/proxy.test.ts)',
  FERRY_ERR_ROUTES_FULL: 'needs the host\'s proxy with every slot taken (test/integration/proxy.test.ts)',
  FERRY_ERR_RELEASE_MISMATCH: 'DELETE /v1/services/NAME?release= while another release runs the service (test/integration/three-tier-release.test.ts)',
  FERRY_ERR_BUNDLE_MALFORMED: 'ferry bundle verify|apply, on the host, not over HTTP (test/integration/bundle.test.ts, test/unit/bundle-archive.test.ts)',
  FERRY_ERR_BUNDLE_SIGNATURE: 'ferry bundle verify|apply, on the host (test/integration/bundle.test.ts)',
  FERRY_ERR_BUNDLE_DIGEST: 'ferry bundle verify|apply, on the host (test/integration/bundle.test.ts)',
  FERRY_ERR_BUNDLE_BASE_MISSING: 'ferry bundle apply of a differential bundle, on the host (test/integration/bundle.test.ts)',
  FERRY_ERR_BAD_INVENTORY: 'ferry bundle create --for-inventory with a file that is not an inventory, on the build side (test/integration/bundle.test.ts)',
  FERRY_ERR_DATA_DIR_LOCKED: 'a second process on a receiver\'s data directory, at its start (test/integration/data-dir-lock.test.ts)',
  FERRY_ERR_LICENCE_EXPIRED: 'ferry bundle apply of a bundle whose grant is past its grace, on the host (test/integration/bundle.test.ts)',
  FERRY_ERR_CANARY_FAILED: 'a start-first deployment\'s answer when its canary fails; needs the host\'s proxy (test/integration/canary.test.ts)',
  FERRY_ERR_CANARY_ABORTED: 'a start-first deployment\'s answer when its canary is aborted; needs the host\'s proxy (test/integration/canary.test.ts)',
  FERRY_ERR_OVER_BUDGET: 'the sender\'s, from the hosts\' GET /v1/capacity, before a release builds or sends anything (test/integration/budget.test.ts)',
};

// ---------------------------------------------------------------------------------- fixtures --

const run = randomBytes(4).toString('hex');
const s = stack();
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const repo = `ferry-perr-${run}`;
const hostId = `perr-${run}`;
const EMPTY = digestOf('');
const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const key = testKey(`perr-${run}`);
const admin = testKey(`perr-admin-${run}`);
const reader = testKey(`perr-read-${run}`);
const revoked = testKey(`perr-revoked-${run}`);
const expired = testKey(`perr-expired-${run}`);
const early = testKey(`perr-early-${run}`);
const stranger = testKey(`perr-stranger-${run}`);

const work = await mkdtemp(join(tmpdir(), 'ferry-perr-'));
/** Bind sources the main receiver's policy allows. */
const bindRoot = join(work, 'binds');

/** One trust file for every receiver here: a key for each way a key can be refused. */
function trustFileForAll(): string {
  const doc = trustDocument([
    key,
    { key: admin, role: 'admin' },
    { key: reader, role: 'read' },
    revoked,
    { key: expired, notAfter: '2020-01-01T00:00:00Z' },
    early,
  ], { revocations: [issueRevocations({ keys: [revoked.keyId] }, admin)] });
  const entries = doc.keys as { id: string; notBefore?: string }[];
  const entry = entries.find((e) => e.id === early.keyId);
  if (entry) entry.notBefore = '2999-01-01T00:00:00Z';
  const file = join(work, 'trust.json');
  writeFileSync(file, JSON.stringify(doc), { mode: 0o600 });
  return file;
}

interface Answer {
  status: number;
  code: string | undefined;
  details: Record<string, unknown> | undefined;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown> | undefined;
}

interface Call {
  method: string;
  path: string;
  body?: Buffer | string;
  headers?: Record<string, string>;
  /** The signer (default: the deploy key); `null` sends no signature at all. */
  as?: TestKey | null;
  audience?: string;
  /** The signed content digest; default: the body's. */
  digest?: string;
  /** An `Upload-Offset` header, signed. */
  offset?: string;
  now?: number;
}

/** One signed request, as any client sends it; the answer read whole. */
function call(url: string, c: Call): Promise<Answer> {
  const body = typeof c.body === 'string' ? Buffer.from(c.body) : c.body ?? Buffer.alloc(0);
  const signer = c.as === undefined ? key : c.as;
  const signedHeaders = signer === null ? {} : signRequest({
    method: c.method, path: c.path, contentDigest: c.digest ?? digestOf(body), audience: c.audience ?? hostId, keyId: signer.keyId, privateKey: signer.privateKey,
    ...(c.offset === undefined ? {} : { offset: c.offset }), ...(c.now === undefined ? {} : { now: c.now }),
  });
  const headers: Record<string, string> = {
    ...signedHeaders, 'content-length': String(body.length), ...(c.offset === undefined ? {} : { 'upload-offset': c.offset }), ...c.headers,
  };
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path: c.path, method: c.method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: Record<string, unknown> | undefined;
        try {
          parsed = JSON.parse(text) as Record<string, unknown>;
        } catch {
          parsed = undefined;
        }
        const error = parsed?.error as { code?: string; details?: Record<string, unknown> } | undefined;
        resolve({ status: res.statusCode ?? 0, code: error?.code, details: error?.details, headers: res.headers, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** A signed `GET /v1/auth-probe` (no route: 404 once every check passed). */
const probe = (url: string, c: Partial<Call> = {}): Promise<Answer> => call(url, { method: 'GET', path: '/v1/auth-probe', ...c });

interface ImageFacts { ref: string; id: string; diffIds: string[] }

interface ManifestOptions {
  service: string;
  image?: ImageFacts;
  pkg?: Buffer;
  /** The package's signed size and digest, when they are not `pkg`'s. */
  size?: number;
  digest?: string;
  compression?: 'zstd' | 'gzip' | 'none';
  deploymentId?: string;
  createdAt?: string;
  omittedLayers?: string[];
  /** Service fields beside the name. */
  spec?: Record<string, unknown>;
  /** An opening manifest (streams): no size, no digest. */
  opening?: boolean;
}

const FAKE_IMAGE: ImageFacts = { ref: `${repo}:fake`, id: `sha256:${'a'.repeat(64)}`, diffIds: [`sha256:${'b'.repeat(64)}`] };

function manifest(o: ManifestOptions): string {
  const pkg = o.pkg ?? Buffer.alloc(1024);
  const image = o.image ?? FAKE_IMAGE;
  return JSON.stringify({
    schema: 'ferry.manifest/v1', deploymentId: o.deploymentId ?? randomUUID(), createdAt: o.createdAt ?? new Date().toISOString(),
    image: { ref: image.ref, id: image.id, diffIds: image.diffIds },
    package: {
      format: 'docker-archive', compression: o.compression ?? 'none',
      ...(o.opening ? {} : { size: o.size ?? pkg.length, digest: o.digest ?? digestOf(pkg) }),
      ...(o.omittedLayers ? { omittedLayers: o.omittedLayers } : {}),
    },
    service: { name: o.service, network: 'none', ...o.spec },
  });
}

/** The one-shot body of §5.1. */
function multipart(manifestJson: string, pkg: Buffer): Buffer {
  return Buffer.concat([
    Buffer.from(`--x\r\nContent-Disposition: form-data; name="manifest"\r\nContent-Type: application/json\r\n\r\n${manifestJson}\r\n`
      + '--x\r\nContent-Disposition: form-data; name="package"; filename="package"\r\nContent-Type: application/octet-stream\r\n\r\n'),
    pkg, Buffer.from('\r\n--x--\r\n'),
  ]);
}

/** `POST /v1/packages`: `manifestJson` signed (unless `digest` says otherwise), `pkg` sent. */
function oneShot(url: string, manifestJson: string, pkg: Buffer, extra: Partial<Call> = {}): Promise<Answer> {
  return call(url, {
    method: 'POST', path: '/v1/packages', body: multipart(manifestJson, pkg), digest: digestOf(manifestJson),
    headers: { 'content-type': 'multipart/form-data; boundary=x' }, ...extra,
  });
}

/** `POST /v1/uploads`: a resumable session for `manifestJson`. */
async function createUpload(url: string, manifestJson: string): Promise<string> {
  const created = await call(url, { method: 'POST', path: '/v1/uploads', body: manifestJson, headers: { 'content-type': 'application/json' } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return String(created.body?.uploadId);
}

/** `PATCH /v1/uploads/<id>` with `part` at `offset`, signed for the part's digest unless told otherwise. */
function patch(url: string, uploadId: string, offset: string, part: Buffer, extra: Partial<Call> = {}): Promise<Answer> {
  return call(url, {
    method: 'PATCH', path: `/v1/uploads/${uploadId}`, body: part, offset, headers: { 'content-type': 'application/offset+octet-stream' }, ...extra,
  });
}

/** A tar of hand-made entries, ended by its marker. */
function tar(entries: { name: string; data?: Buffer; size?: number; type?: string }[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0);
    parts.push(tarHeader(e.name, e.size ?? data.length, e.type), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** A test image built on the build engine and its `docker save` archive (uncompressed: compression "none"). */
async function savedImage(variant: string): Promise<ImageFacts & { archive: Buffer }> {
  const ref = `${repo}:${variant}`;
  const id = await buildTestImage(s.buildDockerHost, ref, `${variant}-${run}`);
  const info = await build.getImage(id).inspect();
  return { ref, id, diffIds: info.RootFS.Layers ?? [], archive: await readAll(await build.getImage(id).get()) };
}

const receivers: ReceiverProcess[] = [];
/** What each receiver last wrote to stderr: a crash says why there, not in its log. */
const last = new Map<ReceiverProcess, () => string>();
const services = new Set<string>();

function serviceName(label: string): string {
  const name = `perr-${label}-${run}`;
  services.add(name);
  return name;
}

/**
 * A receiver on the stack's target engine (or `dockerHost`) trusting this file's keys, once a
 * signed request passes: one signed in its first second is refused as "before boot".
 */
async function receiver(env: Record<string, string> = {}, ready = true): Promise<ReceiverProcess> {
  const rx = await startReceiverProcess({
    DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trust, FERRY_HOST_ID: hostId, FERRY_POLICY_BIND_SOURCES: bindRoot, ...env,
  });
  receivers.push(rx);
  let stderr = '';
  rx.child.stderr?.on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-4000); });
  last.set(rx, () => stderr);
  if (ready) for (let i = 0; i < 100 && (await probe(rx.url)).status !== 404; i += 1) await pause(50);
  return rx;
}

async function stopReceiver(rx: ReceiverProcess): Promise<void> {
  await rx.stop();
  receivers.splice(receivers.indexOf(rx), 1);
}

/**
 * A unix socket in front of the target engine that passes everything through, answers every new
 * connection with an engine error (500), or is gone: what a receiver meets when its engine fails.
 */
async function engineProxy(): Promise<{ dockerHost: string; mode(m: 'pass' | 'fail' | 'down'): Promise<void>; close(): Promise<void> }> {
  const upstream = s.targetDockerHost.replace(/^unix:\/\//, '');
  const path = join(work, `engine-${randomBytes(4).toString('hex')}.sock`);
  const sockets = new Set<Socket>();
  let current: 'pass' | 'fail' = 'pass';
  let server: Server | undefined;
  const listen = (): Promise<void> => new Promise((resolve) => {
    server = createServer((client) => {
      sockets.add(client);
      client.on('close', () => sockets.delete(client)).on('error', () => undefined);
      if (current === 'fail') {
        const body = JSON.stringify({ message: 'the engine failed (a test proxy)' });
        client.end(`HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
        return;
      }
      const engine = connect(upstream);
      sockets.add(engine);
      engine.on('close', () => sockets.delete(engine)).on('error', () => client.destroy());
      client.pipe(engine).pipe(client);
      client.on('close', () => engine.destroy());
    });
    server.listen(path, resolve);
  });
  const dropAll = (): void => { for (const socket of sockets) socket.destroy(); };
  const stop = (): Promise<void> => new Promise((resolve) => {
    if (!server?.listening) return resolve();
    server.close(() => resolve());
    dropAll();
  });
  await listen();
  return {
    dockerHost: `unix://${path}`,
    mode: async (m) => {
      dropAll();
      if (m === 'down') return stop();
      current = m;
      if (!server?.listening) await listen();
    },
    close: stop,
  };
}

// -------------------------------------------------------------------------------- the walk --

const trust = trustFileForAll();
let rx: ReceiverProcess;
let app: ImageFacts & { archive: Buffer };
let corrupt: ImageFacts & { archive: Buffer };

/** A one-shot deployment of the test image that completes; answers the manifest it signed. */
async function deployed(service: string, spec: Record<string, unknown> = {}): Promise<string> {
  const manifestJson = manifest({ service, image: app, pkg: app.archive, spec });
  const answer = await oneShot(rx.url, manifestJson, app.archive);
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  assert.equal(answer.body?.state, 'COMPLETED');
  return manifestJson;
}

/** Each provokes its code over HTTP and answers what the receiver said. */
const RECIPES: Partial<Record<ErrorCode, () => Promise<Answer>>> = {
  // §3.3 checks, in their order.
  FERRY_ERR_AUTH_MISSING: async () => {
    const headers = signRequest({ method: 'GET', path: '/v1/auth-probe', contentDigest: EMPTY, audience: hostId, keyId: key.keyId, privateKey: key.privateKey });
    const { 'x-ferry-nonce': _nonce, ...withoutNonce } = headers;
    return call(rx.url, { method: 'GET', path: '/v1/auth-probe', as: null, headers: withoutNonce });
  },
  FERRY_ERR_UNKNOWN_KEY: () => probe(rx.url, { as: stranger }),
  FERRY_ERR_BAD_SIGNATURE: () => {
    const headers = signRequest({ method: 'GET', path: '/v1/auth-probe', contentDigest: EMPTY, audience: hostId, keyId: key.keyId, privateKey: key.privateKey });
    return call(rx.url, { method: 'GET', path: '/v1/auth-probe', as: null, headers: { ...headers, 'x-ferry-signature': 'ab'.repeat(64) } });
  },
  FERRY_ERR_KEY_REVOKED: () => probe(rx.url, { as: revoked }),
  FERRY_ERR_BAD_GRANT: () => probe(rx.url, { as: stranger, headers: { 'x-ferry-grant': 'A'.repeat(9000) } }),
  FERRY_ERR_STALE_TIMESTAMP: () => probe(rx.url, { now: Math.floor(Date.now() / 1000) - 3600 }),
  FERRY_ERR_REPLAY: async () => {
    const headers = signRequest({ method: 'GET', path: '/v1/auth-probe', contentDigest: EMPTY, audience: hostId, keyId: key.keyId, privateKey: key.privateKey });
    const first = await call(rx.url, { method: 'GET', path: '/v1/auth-probe', as: null, headers });
    assert.equal(first.status, 404, 'the first use passes every check');
    return call(rx.url, { method: 'GET', path: '/v1/auth-probe', as: null, headers });
  },
  FERRY_ERR_WRONG_AUDIENCE: () => probe(rx.url, { audience: `elsewhere-${run}` }),
  FERRY_ERR_GRANT_EXPIRED: () => probe(rx.url, { as: expired }),
  FERRY_ERR_GRANT_NOT_YET_VALID: () => probe(rx.url, { as: early }),
  FERRY_ERR_NOT_GRANTED: () => call(rx.url, { method: 'POST', path: `/v1/services/${serviceName('read')}/rollback`, as: reader }),
  FERRY_ERR_NO_CANARY: () => call(rx.url, { method: 'POST', path: `/v1/services/${serviceName('canary')}/canary/promote` }),

  // §3.5, before the signature.
  FERRY_ERR_FORBIDDEN_SOURCE: async () => {
    const walled = await receiver({ FERRY_ALLOW_CIDRS: '10.0.0.0/8' }, false);
    try {
      return await probe(walled.url);
    } finally {
      await stopReceiver(walled);
    }
  },
  FERRY_ERR_HEADERS_TOO_LARGE: async () => {
    const raw = await rawRequest(rx.url, { head: ['GET /healthz HTTP/1.1', 'Host: 127.0.0.1', `X-Pad: ${'a'.repeat(20 * 1024)}`] });
    return { status: raw.status, code: raw.code, details: undefined, headers: raw.headers, body: undefined };
  },
  FERRY_ERR_REQUEST_TIMEOUT: async () => {
    // FERRY_HEADERS_TIMEOUT_MS is 1000 on this receiver: a head that never ends is answered, and closed.
    const { port } = new URL(rx.url);
    const raw = await new Promise<RawAnswer>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1');
      let received = '';
      socket.on('connect', () => socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never-Ends: a'));
      socket.setEncoding('utf8').on('data', (chunk: string) => { received += chunk; });
      socket.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'ECONNRESET') reject(err); });
      socket.on('close', () => resolve(parseAnswer(received)));
    });
    return { status: raw.status, code: raw.code, details: undefined, headers: raw.headers, body: undefined };
  },
  FERRY_ERR_BAD_REQUEST: async () => {
    // A signed header twice, a gigabyte declared: refused before a body byte, whatever the signature.
    const headers = signRequest({ method: 'POST', path: '/v1/packages', contentDigest: EMPTY, audience: hostId, keyId: key.keyId, privateKey: key.privateKey });
    const raw = await rawRequest(rx.url, {
      head: ['POST /v1/packages HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: multipart/form-data; boundary=x', `Content-Length: ${1024 ** 3}`, 'Expect: 100-continue',
        ...lines(headers), `X-Ferry-Nonce: ${headers['x-ferry-nonce'] ?? ''}`],
      body: Buffer.from('--x\r\n'), waitForContinue: true,
    });
    assert.equal(raw.bodyBytesSent, 0, 'refused before the body');
    assert.equal(raw.headers.connection, 'close');
    const { error } = JSON.parse(raw.body) as { error?: { details?: Record<string, unknown> } };
    assert.equal(error?.details?.header, 'x-ferry-nonce', 'the answer names the repeated header');
    return { status: raw.status, code: raw.code, details: error?.details, headers: raw.headers, body: undefined };
  },

  // §4–§5: the manifest and the body.
  FERRY_ERR_BAD_MANIFEST: () => {
    const broken = JSON.stringify({ ...JSON.parse(manifest({ service: serviceName('badmanifest') })) as object, schema: 'ferry.manifest/v0' });
    return call(rx.url, { method: 'POST', path: '/v1/uploads', body: broken, headers: { 'content-type': 'application/json' } });
  },
  FERRY_ERR_MANIFEST_DIGEST_MISMATCH: async () => {
    // Expect: 100-continue passes the headers; the refusal comes after the body, as §3.3 warns.
    const manifestJson = manifest({ service: serviceName('mdigest') });
    const body = multipart(manifestJson, Buffer.alloc(1024));
    const headers = signRequest({ method: 'POST', path: '/v1/packages', contentDigest: digestOf(`${manifestJson} `), audience: hostId, keyId: key.keyId, privateKey: key.privateKey });
    const raw = await rawRequest(rx.url, {
      head: ['POST /v1/packages HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: multipart/form-data; boundary=x', `Content-Length: ${body.length}`,
        'Expect: 100-continue', 'Connection: close', ...lines(headers)],
      body, waitForContinue: true,
    });
    assert.equal(raw.bodyBytesSent, body.length, '100 Continue came first, then the whole body went');
    return { status: raw.status, code: raw.code, details: undefined, headers: raw.headers, body: undefined };
  },
  FERRY_ERR_CHECKSUM_MISMATCH: () => {
    const pkg = Buffer.alloc(1024, 1);
    return oneShot(rx.url, manifest({ service: serviceName('checksum'), pkg, digest: digestOf(Buffer.alloc(1024, 2)) }), pkg);
  },
  FERRY_ERR_SIZE_MISMATCH: () => {
    const pkg = Buffer.alloc(1024, 1);
    return oneShot(rx.url, manifest({ service: serviceName('size'), pkg, size: 2048 }), pkg);
  },
  FERRY_ERR_PAYLOAD_TOO_LARGE: () => oneShot(rx.url, manifest({ service: serviceName('large'), size: 9 * 1024 ** 3 }), Buffer.alloc(1024)),
  FERRY_ERR_UNSUPPORTED_MEDIA_TYPE: () => {
    const manifestJson = manifest({ service: serviceName('media') });
    return oneShot(rx.url, manifestJson, Buffer.alloc(1024), { headers: { 'content-type': 'text/plain' } });
  },
  FERRY_ERR_POLICY_DENIED: () => {
    const manifestJson = manifest({ service: serviceName('policy'), spec: { privileged: true } });
    return call(rx.url, { method: 'POST', path: '/v1/uploads', body: manifestJson, headers: { 'content-type': 'application/json' } });
  },

  // §5.2: what an archive may be.
  FERRY_ERR_BAD_ARCHIVE: () => {
    const pkg = Buffer.alloc(1024);
    return oneShot(rx.url, manifest({ service: serviceName('badarchive'), pkg }), pkg);
  },
  FERRY_ERR_UNSAFE_ARCHIVE: () => {
    const pkg = tar([{ name: '../../etc/cron.d/ferry', data: Buffer.from('* * * * * root id\n') }]);
    return oneShot(rx.url, manifest({ service: serviceName('unsafe'), pkg }), pkg);
  },
  FERRY_ERR_ARCHIVE_TOO_LARGE: () => {
    // A header declaring 4 GiB in a package of a few KiB: over the 1 GiB floor.
    const pkg = Buffer.concat([tarHeader(`${'b'.repeat(64)}/layer.tar`, 4 * 1024 ** 3), Buffer.alloc(4096)]);
    return oneShot(rx.url, manifest({ service: serviceName('bomb'), pkg }), pkg);
  },
  FERRY_ERR_IMAGE_MISMATCH: () => oneShot(rx.url, manifest({
    service: serviceName('mismatch'), image: { ...app, id: `sha256:${'0'.repeat(64)}` }, pkg: app.archive,
  }), app.archive),
  FERRY_ERR_LOAD_FAILED: () => {
    // One byte of the layer only this image has: the tar stays well-formed, the layer's digest does not.
    const bytes = Buffer.from(corrupt.archive);
    const at = bytes.indexOf(`id="variant">corrupt-${run}`);
    assert.ok(at > 0, 'the variant layer is in the archive');
    bytes[at] = 'I'.charCodeAt(0);
    return oneShot(rx.url, manifest({ service: serviceName('loadfail'), image: corrupt, pkg: bytes }), bytes);
  },

  // The deployment itself.
  // This receiver runs no proxy: a service with a route is refused before anything changes.
  FERRY_ERR_PROXY_UNAVAILABLE: () => oneShot(rx.url, manifest({
    service: serviceName('routed'), image: app, pkg: app.archive, spec: { network: 'bridge', route: { host: 'routed.test', port: 8080 } },
  }), app.archive),
  FERRY_ERR_CONTAINER_FAILED: () => oneShot(rx.url, manifest({
    service: serviceName('container'), image: app, pkg: app.archive, spec: { entrypoint: ['/nonexistent'] },
  }), app.archive),
  FERRY_ERR_HEALTHCHECK_FAILED: async () => {
    const port = await freePort();
    return oneShot(rx.url, manifest({
      service: serviceName('health'), image: app, pkg: app.archive,
      spec: { health: { type: 'tcp', host: '127.0.0.1', port, intervalMs: 50, timeoutMs: 200, retries: 2 } },
    }), app.archive);
  },
  FERRY_ERR_UNSTABLE: async () => {
    // Dies a second after it starts and its policy restarts it, while this process answers the
    // port it is checked on: the probe passes, the stability window (5 s here) sees the restart.
    const answering = createServer((socket) => socket.end());
    await new Promise<void>((r) => answering.listen(0, '127.0.0.1', r));
    const steady = await receiver({ FERRY_STABILITY_WINDOW_MS: '5000' });
    try {
      return await oneShot(steady.url, manifest({
        service: serviceName('unstable'), image: app, pkg: app.archive, spec: {
          entrypoint: ['/bin/busybox', 'sh', '-c', 'sleep 1; exit 1'], restart: 'always',
          health: { type: 'tcp', host: '127.0.0.1', port: (answering.address() as { port: number }).port, intervalMs: 50 },
        },
      }), app.archive);
    } finally {
      await stopReceiver(steady);
      await new Promise((r) => answering.close(r));
    }
  },
  FERRY_ERR_DEPLOYMENT_IN_PROGRESS: async () => {
    const service = serviceName('busy');
    const held = await healthGate();
    try {
      const deployment = oneShot(rx.url, manifest({ service, image: app, pkg: app.archive, spec: { health: { type: 'http', url: held.url, intervalMs: 50 } } }), app.archive);
      await held.firstProbe;
      const answer = await call(rx.url, { method: 'POST', path: `/v1/services/${service}/rollback` });
      held.release();
      assert.equal((await deployment).status, 200, 'the held deployment completes once released');
      return answer;
    } finally {
      held.release();
      await held.close();
    }
  },
  FERRY_ERR_DOWNGRADE: async () => {
    const service = serviceName('downgrade');
    await deployed(service);
    const older = new Date(Date.now() - 3_600_000).toISOString();
    return oneShot(rx.url, manifest({ service, image: app, pkg: app.archive, createdAt: older }), app.archive);
  },
  FERRY_ERR_DEPLOYMENT_CONFLICT: async () => {
    const deploymentId = randomUUID();
    const pkg = Buffer.alloc(1024);
    const service = serviceName('conflict');
    const first = await oneShot(rx.url, manifest({ service, pkg, deploymentId }), pkg);
    assert.equal(first.code, 'FERRY_ERR_BAD_ARCHIVE', 'the first deployment under the id is journalled (and fails)');
    return oneShot(rx.url, manifest({ service, pkg, deploymentId, image: { ...FAKE_IMAGE, id: `sha256:${'c'.repeat(64)}` } }), pkg);
  },
  FERRY_ERR_LAYERS_MISSING: () => {
    const pkg = Buffer.alloc(1024);
    const image = { ...FAKE_IMAGE, diffIds: [`sha256:${randomBytes(32).toString('hex')}`, `sha256:${'d'.repeat(64)}`] };
    return oneShot(rx.url, manifest({ service: serviceName('layers'), image, pkg, omittedLayers: [image.diffIds[0] ?? ''] }), pkg);
  },
  FERRY_ERR_DISK_FULL: async () => {
    const full = await receiver({ FERRY_MIN_FREE_BYTES: String(Number.MAX_SAFE_INTEGER) });
    try {
      return await oneShot(full.url, manifest({ service: serviceName('disk') }), Buffer.alloc(1024));
    } finally {
      await stopReceiver(full);
    }
  },
  FERRY_ERR_INTERRUPTED: async () => {
    const dataDir = await mkdtemp(join(work, 'crash-'));
    const service = serviceName('crash');
    const manifestJson = manifest({ service, image: app, pkg: app.archive });
    const doomed = await receiver({ FERRY_DATA_DIR: dataDir, FERRY_TEST_CRASH_AT: 'during-validate' });
    const exited = new Promise((resolve) => doomed.child.once('exit', resolve));
    await oneShot(doomed.url, manifestJson, app.archive).then(() => assert.fail('the receiver should have died'), () => undefined);
    await exited;
    receivers.splice(receivers.indexOf(doomed), 1);
    const again = await receiver({ FERRY_DATA_DIR: dataDir });
    try {
      // The retry of that deployment id gets the outcome the restart journalled.
      return await oneShot(again.url, manifestJson, app.archive);
    } finally {
      await stopReceiver(again);
    }
  },
  FERRY_ERR_ROLLBACK_FAILED: async () => {
    // The kept previous container binds a directory that is gone by the time it is started again.
    const service = serviceName('rbfail');
    const source = join(bindRoot, service);
    await mkdir(source, { recursive: true });
    await deployed(service, { volumes: [`${source}:/data`] });
    await deployed(service);
    await rm(source, { recursive: true, force: true });
    return call(rx.url, { method: 'POST', path: `/v1/services/${service}/rollback` });
  },
  FERRY_ERR_NOTHING_TO_ROLL_BACK: () => call(rx.url, { method: 'POST', path: `/v1/services/${serviceName('nothing')}/rollback` }),
  FERRY_ERR_NOT_RECONCILABLE: () => call(rx.url, { method: 'POST', path: `/v1/services/${serviceName('never')}/reconcile` }),
  FERRY_ERR_RELEASE_NOT_RETAINED: () => call(rx.url, { method: 'POST', path: `/v1/services/${serviceName('unkept')}/rollback?toRelease=rel-20200101T000000Z-0badc0de` }),
  FERRY_ERR_NOT_FOUND: () => probe(rx.url),
  FERRY_ERR_DOCKER: async () => engineFailure('fail'),
  FERRY_ERR_DOCKER_UNAVAILABLE: async () => engineFailure('down'),

  // §8: layer negotiation's signed JSON body.
  FERRY_ERR_BODY_DIGEST_MISMATCH: () => call(rx.url, {
    method: 'POST', path: '/v1/layers', body: JSON.stringify({ diffIds: FAKE_IMAGE.diffIds }), digest: digestOf('{}'), headers: { 'content-type': 'application/json' },
  }),

  // §10: resumable uploads.
  FERRY_ERR_BAD_OFFSET: async () => {
    const id = await createUpload(rx.url, manifest({ service: serviceName('badoffset') }));
    return patch(rx.url, id, '00', Buffer.alloc(0));
  },
  FERRY_ERR_OFFSET_MISMATCH: async () => {
    const id = await createUpload(rx.url, manifest({ service: serviceName('offset') }));
    const answer = await patch(rx.url, id, '512', Buffer.alloc(16));
    assert.equal(answer.headers['upload-offset'], '0', 'the answer says the right offset');
    return answer;
  },
  FERRY_ERR_UPLOAD_BUSY: async () => {
    const id = await createUpload(rx.url, manifest({ service: serviceName('upbusy') }));
    const held = await holdPart(rx.url, id);
    try {
      return await patch(rx.url, id, '0', Buffer.alloc(1024, 7));
    } finally {
      held.destroy();
    }
  },
  FERRY_ERR_UPLOAD_INCOMPLETE: async () => {
    const id = await createUpload(rx.url, manifest({ service: serviceName('incomplete') }));
    return call(rx.url, { method: 'POST', path: `/v1/uploads/${id}/deploy` });
  },
  FERRY_ERR_UPLOAD_CONFLICT: async () => {
    const deploymentId = randomUUID();
    const service = serviceName('upconflict');
    await createUpload(rx.url, manifest({ service, deploymentId }));
    const other = manifest({ service, deploymentId, pkg: Buffer.alloc(2048) });
    return call(rx.url, { method: 'POST', path: '/v1/uploads', body: other, headers: { 'content-type': 'application/json' } });
  },
  FERRY_ERR_UPLOAD_NOT_FOUND: () => patch(rx.url, randomBytes(16).toString('hex'), '0', Buffer.alloc(0)),
  FERRY_ERR_UPLOAD_EXPIRED: async () => {
    const brief = await receiver({ FERRY_UPLOAD_TTL_SECONDS: '1' });
    try {
      const id = await createUpload(brief.url, manifest({ service: serviceName('expired') }));
      // A part in progress keeps the sweeper off the session, so it is expired rather than gone:
      // another PATCH is busy until the deadline, then the upload's 410.
      const held = await holdPart(brief.url, id);
      try {
        let answer = await patch(brief.url, id, '0', Buffer.alloc(0));
        for (let i = 0; i < 400 && answer.code === 'FERRY_ERR_UPLOAD_BUSY'; i += 1) {
          await pause(25);
          answer = await patch(brief.url, id, '0', Buffer.alloc(0));
        }
        assert.equal(answer.headers['upload-offset'], '0', 'an expired upload\'s PATCH answer still says where it stands (§10.1)');
        return answer;
      } finally {
        held.destroy();
      }
    } finally {
      await stopReceiver(brief);
    }
  },
  FERRY_ERR_UPLOAD_INVALIDATED: async () => {
    const id = await createUpload(rx.url, manifest({ service: serviceName('invalid') }));
    const oversized = await patch(rx.url, id, '0', Buffer.alloc(2048));
    assert.equal(oversized.code, 'FERRY_ERR_PAYLOAD_TOO_LARGE', 'a part past Upload-Length invalidates the upload');
    return patch(rx.url, id, '0', Buffer.alloc(0));
  },
  FERRY_ERR_UPLOAD_COMPLETE: async () => {
    const pkg = Buffer.alloc(1024, 9);
    const id = await createUpload(rx.url, manifest({ service: serviceName('complete'), pkg }));
    assert.equal((await patch(rx.url, id, '0', pkg)).status, 204);
    return patch(rx.url, id, '1024', Buffer.alloc(0));
  },

  // §10.6: streams.
  FERRY_ERR_STREAM_UNAVAILABLE: async () => {
    // On a receiver of its own, stopped afterwards with its streams open: they hold loads on the engine.
    const streaming = await receiver();
    try {
      for (let i = 0; ; i += 1) {
        const opening = manifest({ service: serviceName(`stream${i}`), opening: true });
        const answer = await call(streaming.url, { method: 'POST', path: '/v1/streams', body: opening, headers: { 'content-type': 'application/json' } });
        if (answer.status !== 201 || i >= 8) return answer;
      }
    } finally {
      await stopReceiver(streaming);
    }
  },
};

/**
 * A PATCH of 1 KiB at offset 0 whose headers passed and that was asked for its body, of which it
 * sends a tenth: the upload is busy until the socket is destroyed.
 */
async function holdPart(url: string, uploadId: string): Promise<Socket> {
  const part = Buffer.alloc(1024, 7);
  const path = `/v1/uploads/${uploadId}`;
  const headers = signRequest({ method: 'PATCH', path, contentDigest: digestOf(part), audience: hostId, keyId: key.keyId, privateKey: key.privateKey, offset: '0' });
  const { port } = new URL(url);
  const socket = connect(Number(port), '127.0.0.1');
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('close', () => reject(new Error('the receiver closed the held PATCH')));
    socket.write(`${[`PATCH ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Content-Type: application/offset+octet-stream', `Content-Length: ${part.length}`,
      'Upload-Offset: 0', 'Expect: 100-continue', ...lines(headers)].join('\r\n')}\r\n\r\n`);
    socket.on('data', (chunk: Buffer) => { if (chunk.toString('latin1').startsWith('HTTP/1.1 100')) resolve(); });
  });
  socket.write(part.subarray(0, 100));
  return socket;
}

/** A manual rollback on a receiver whose engine answers errors (`fail`) or is gone (`down`). */
async function engineFailure(mode: 'fail' | 'down'): Promise<Answer> {
  const proxy = await engineProxy();
  const behind = await receiver({ DOCKER_HOST: proxy.dockerHost });
  try {
    await proxy.mode(mode);
    return await call(behind.url, { method: 'POST', path: `/v1/services/${serviceName(`engine${mode}`)}/rollback` });
  } finally {
    await stopReceiver(behind);
    await proxy.close();
  }
}

describe('docs/protocol.md §7 against a live receiver', { timeout: 900_000 }, () => {
  before(async () => {
    await mkdir(bindRoot, { recursive: true });
    [app, corrupt] = await Promise.all([savedImage('app'), savedImage('corrupt')]);
    rx = await receiver({ FERRY_HEADERS_TIMEOUT_MS: '1000' });
  });

  after(async () => {
    for (const r of [...receivers]) await r.stop().catch(() => undefined);
    for (const service of services) await removeService(target, service);
    for (const image of [app, corrupt]) {
      if (!image) continue;
      await target.getImage(image.ref).remove({ force: true }).catch(() => undefined);
      await target.getImage(image.id).remove({ force: true }).catch(() => undefined);
      await build.getImage(image.ref).remove({ force: true }).catch(() => undefined);
    }
    await rm(work, { recursive: true, force: true });
  });

  test('every row of the table has a recipe or a reason, and every recipe or reason a row', () => {
    assert.ok(TABLE.size > 50, 'the error table is found');
    for (const code of TABLE.keys()) assert.ok(isErrorCode(code), `${code} is a code of libs/protocol`);
    const neither = [...TABLE.keys()].filter((code) => !(code in RECIPES) && !(code in NOT_FROM_A_RECEIVER));
    assert.deepEqual(neither, [], 'rows with neither a recipe nor a reason');
    const both = Object.keys(RECIPES).filter((code) => code in NOT_FROM_A_RECEIVER);
    assert.deepEqual(both, [], 'codes with both');
    const stale = [...Object.keys(RECIPES), ...Object.keys(NOT_FROM_A_RECEIVER)].filter((code) => !TABLE.has(code));
    assert.deepEqual(stale, [], 'recipes or reasons for codes the table does not have');
    for (const code of Object.keys(RECIPES)) assert.match(TABLE.get(code)?.by ?? '', /R/, `${code} has a recipe, so the table says a receiver answers it`);
  });

  for (const [code, row] of TABLE) {
    const recipe = RECIPES[code as ErrorCode];
    if (!recipe) continue;
    test(`${code}: ${row.status}`, async (t) => {
      const answer = await recipe().catch((err: unknown) => {
        // A receiver that died is what to look at, not the connection error it left.
        const dead = receivers.filter((r) => r.child.exitCode !== null || r.child.signalCode !== null);
        const said = dead.flatMap((r) => [...r.logs.slice(-5).map((entry) => JSON.stringify(entry)), last.get(r)?.() ?? '']);
        throw dead.length ? new Error(`a receiver died: ${said.join('\n')}`, { cause: err }) : err;
      });
      const error = answer.body?.error as { message?: string } | undefined;
      t.diagnostic(`the receiver said: ${answer.status} ${answer.code ?? ''} ${error?.message ?? ''}`);
      assert.deepEqual([answer.status, answer.code], [row.status, code], JSON.stringify(answer.body ?? answer.details ?? null));
      assert.equal(ERRORS[code as ErrorCode].status, row.status, 'the registry agrees with the table');
    });
  }

  test('§11: the deployments API refuses a query parameter it does not take, or one given twice', async () => {
    const service = serviceName('query');
    const id = randomUUID();
    const asked: [string, string, number, string | undefined][] = [
      ['GET', `/v1/deployments?service=${service}&limit=5`, 200, undefined],
      ['GET', '/v1/deployments?limt=5', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['GET', `/v1/deployments?service=${service}&sevrice=${service}`, 400, 'FERRY_ERR_BAD_REQUEST'],
      ['GET', '/v1/deployments?limit=1&limit=2', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['GET', `/v1/deployments/${id}`, 404, 'FERRY_ERR_NOT_FOUND'],
      ['GET', `/v1/deployments/${id}?verbose=1`, 400, 'FERRY_ERR_BAD_REQUEST'],
      ['POST', `/v1/services/${service}/rollback?deploymentId=${id}`, 409, 'FERRY_ERR_NOTHING_TO_ROLL_BACK'],
      ['POST', `/v1/services/${service}/rollback?deploymentid=${id}`, 400, 'FERRY_ERR_BAD_REQUEST'],
      ['POST', `/v1/services/${service}/rollback?toRelease=..%2F..%2Fetc%2Fpasswd`, 400, 'FERRY_ERR_BAD_REQUEST'],
      ['POST', `/v1/services/${service}/rollback?toRelease=rel-20200101T000000Z-0badc0de&toRelease=rel-20200101T000000Z-0badc0df`, 400, 'FERRY_ERR_BAD_REQUEST'],
      ['GET', '/v1/releases', 200, undefined],
      ['GET', '/v1/releases?service=web', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['GET', '/v1/capacity', 200, undefined],
      ['GET', '/v1/capacity?service=web', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['POST', `/v1/services/${service}/reconcile`, 409, 'FERRY_ERR_NOT_RECONCILABLE'],
      ['POST', `/v1/services/${service}/reconcile?force=1`, 400, 'FERRY_ERR_BAD_REQUEST'],
    ];
    for (const [method, path, status, code] of asked) {
      const answer = await call(rx.url, { method, path });
      assert.deepEqual([answer.status, answer.code], [status, code], `${method} ${path}: ${JSON.stringify(answer.body)}`);
    }
    const misspelt = await call(rx.url, { method: 'GET', path: '/v1/deployments?limt=5' });
    assert.deepEqual(misspelt.details?.unknown, ['limt'], 'the answer names the parameter');
    assert.deepEqual(misspelt.details?.allowed, ['service', 'limit']);
  });

  test('§10.1: the upload headers come with the answers listed there, and with no other', async () => {
    const has = (answer: Answer, label: string): void => {
      assert.ok(/^\d+$/.test(String(answer.headers['upload-offset'])), `${label}: Upload-Offset`);
      assert.equal(answer.headers['upload-length'], '1024', `${label}: Upload-Length`);
      assert.ok(!Number.isNaN(Date.parse(String(answer.headers['upload-expires']))), `${label}: Upload-Expires`);
      assert.equal(answer.headers['cache-control'], 'no-store', `${label}: Cache-Control`);
    };
    const lacks = (answer: Answer, label: string): void => {
      assert.equal(answer.headers['upload-offset'], undefined, `${label}: no Upload-Offset`);
      assert.equal(answer.headers['upload-length'], undefined, `${label}: no Upload-Length`);
    };
    const pkg = Buffer.alloc(1024, 3);
    const created = await call(rx.url, { method: 'POST', path: '/v1/uploads', body: manifest({ service: serviceName('headers'), pkg }), headers: { 'content-type': 'application/json' } });
    assert.equal(created.status, 201);
    has(created, 'create');
    const id = String(created.body?.uploadId);
    has(await call(rx.url, { method: 'HEAD', path: `/v1/uploads/${id}` }), 'HEAD 200');
    const first = await patch(rx.url, id, '0', pkg.subarray(0, 16));
    assert.equal(first.status, 204);
    has(first, 'PATCH 204');
    const refusals: [string, Promise<Answer>, number][] = [
      ['offset mismatch', patch(rx.url, id, '0', pkg.subarray(0, 16)), 409],
      ['bad offset', patch(rx.url, id, '016', pkg.subarray(16, 32)), 400],
      ['media type', patch(rx.url, id, '16', pkg.subarray(16, 32), { headers: { 'content-type': 'text/plain' } }), 415],
      ['part digest', patch(rx.url, id, '16', pkg.subarray(16, 32), { digest: digestOf('other') }), 422],
    ];
    for (const [label, answer, status] of refusals) {
      const got = await answer;
      assert.equal(got.status, status, `${label}: ${JSON.stringify(got.body)}`);
      has(got, label);
    }
    const incomplete = await call(rx.url, { method: 'POST', path: `/v1/uploads/${id}/deploy` });
    assert.equal(incomplete.code, 'FERRY_ERR_UPLOAD_INCOMPLETE');
    lacks(incomplete, 'deploy 409');
    assert.equal(incomplete.details?.offset, 16, 'the deploy answer has the offset in its details');
    const reading = await patch(rx.url, id, '16', pkg.subarray(16, 32), { as: reader });
    assert.equal(reading.status, 403);
    lacks(reading, 'a key that may not write');
    const unknown = randomBytes(16).toString('hex');
    lacks(await call(rx.url, { method: 'HEAD', path: `/v1/uploads/${unknown}` }), 'HEAD 404');
    lacks(await patch(rx.url, unknown, '0', Buffer.alloc(0)), 'PATCH 404');
    const done = await patch(rx.url, id, '16', pkg.subarray(16));
    assert.equal(done.status, 204, 'the rest completes the upload');
    const complete = await patch(rx.url, id, '1024', Buffer.alloc(0));
    assert.equal(complete.code, 'FERRY_ERR_UPLOAD_COMPLETE');
    has(complete, 'PATCH 410 complete');

    const doomed = await createUpload(rx.url, manifest({ service: serviceName('headers2'), pkg }));
    const oversized = await patch(rx.url, doomed, '0', Buffer.alloc(2048));
    assert.equal(oversized.status, 413);
    lacks(oversized, 'PATCH 413 (invalidates)');
    const invalidated = await patch(rx.url, doomed, '0', Buffer.alloc(0));
    assert.equal(invalidated.code, 'FERRY_ERR_UPLOAD_INVALIDATED');
    lacks(invalidated, 'PATCH 410 invalidated');
  });
});
