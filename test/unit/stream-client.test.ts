/**
 * The sender's side of the streamed upload (docs/protocol.md §10.6) against a small loopback
 * HTTP server that answers as a receiver would: parts cut at exact sizes, each signed with its
 * offset and digest; a cut connection or a lost answer resent and reconciled; a receiver without
 * streams reported as unavailable; the seal; DELETE when the stream is abandoned.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, beforeEach, describe, test } from 'node:test';
import { MemoryNonceStore, RequestVerifier, TrustStore } from '@ferry/auth';
import { DigestTap, digestOf, type Digest } from '@ferry/integrity';
import { FerryError, PATHS, PackageSealSchema, STREAM_MAX_PART_BYTES, isFerryError, parseDeferredManifest, type DeferredManifestInput } from '@ferry/protocol';
import { StreamUnavailable, StreamUpload, type StreamOptions } from '@ferry/sender';
import { testKey, trustDocument } from '../helpers/keys.ts';

const AUDIENCE = `rx-${randomBytes(3).toString('hex')}`;
const credentials = testKey('stream-test');
const DEPLOYMENT_ID = '6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b';

const manifest: DeferredManifestInput = {
  schema: 'ferry.manifest/v1',
  deploymentId: DEPLOYMENT_ID,
  createdAt: new Date().toISOString(),
  image: { ref: 'web:1', id: `sha256:${'a'.repeat(64)}`, diffIds: [`sha256:${'b'.repeat(64)}`] },
  package: { format: 'docker-archive', compression: 'none' },
  service: { name: 'web', env: {}, network: 'bridge' },
};

/** What a test makes one PATCH attempt do instead of the normal answer. */
type PatchAction = 'cut-before-taking' | 'cut-after-taking' | 'cut-after-half' | { status: number; code: string; details?: Record<string, unknown> };

interface Logged {
  method: string;
  path: string;
  offset: number | undefined;
  length: number;
}

interface FakeStream {
  offset: number;
  chunks: Buffer[];
}

/** A receiver's §10.6 answers, with every request's signature and content digest checked. */
class FakeReceiver {
  server: Server;
  url = '';
  log: Logged[] = [];
  streams = new Map<string, FakeStream>();
  /** The body of the last stream that was sealed. */
  sealedBytes: Buffer | undefined;
  sealBody: unknown;
  createAnswer: { status: number; code: string } | undefined;
  /** Creates answered 503 before the next one is taken. */
  createFailures = 0;
  /** Consulted for every seal attempt, in order: 'cut' loses the answer after the deployment ran. */
  sealAction: (attempt: number) => 'cut' | { status: number; code: string } | undefined = () => undefined;
  #seals = 0;
  /** Consulted for every PATCH attempt, in order; undefined = answer normally. */
  patchAction: (attempt: number, offset: number) => PatchAction | undefined = () => undefined;
  /** Delays each PATCH answer, to hold a part in flight. */
  patchDelayMs = 0;
  inFlight = 0;
  maxInFlight = 0;
  #patches = 0;
  readonly #verifier = new RequestVerifier({ trust: new TrustStore({ data: trustDocument([credentials]) }), nonces: new MemoryNonceStore(), audience: AUDIENCE, startedAt: 0 });

  constructor() {
    this.server = createServer((req, res) => { this.#handle(req, res).catch((err: unknown) => { res.destroy(err as Error); }); });
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  reset(): void {
    this.log = [];
    this.streams.clear();
    this.sealedBytes = undefined;
    this.sealBody = undefined;
    this.createAnswer = undefined;
    this.createFailures = 0;
    this.sealAction = () => undefined;
    this.#seals = 0;
    this.patchAction = () => undefined;
    this.patchDelayMs = 0;
    this.inFlight = 0;
    this.maxInFlight = 0;
    this.#patches = 0;
  }

  requests(method: string): Logged[] {
    return this.log.filter((entry) => entry.method === method);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const path = req.url ?? '';
    const offsetHeader = req.headers['upload-offset'];
    this.log.push({ method: req.method ?? '', path, offset: typeof offsetHeader === 'string' ? Number(offsetHeader) : undefined, length: body.length });
    try {
      const verified = await this.#verifier.verify({ method: req.method ?? '', path, headers: req.headers });
      if (verified.contentDigest !== digestOf(body)) throw new FerryError('FERRY_ERR_CHECKSUM_MISMATCH', { message: 'content digest does not match the body' });
    } catch (err) {
      return answer(res, (err as FerryError).status, (err as FerryError).toJSON());
    }
    const match = /^\/v1\/streams(?:\/([0-9a-f]{32})(\/deploy)?)?$/.exec(path);
    if (!match) return answer(res, 404, { error: { code: 'FERRY_ERR_NOT_FOUND', message: 'no such route' } });
    const [, id, deploy] = match;
    if (id === undefined && req.method === 'POST') return this.#create(res, body);
    const stream = id === undefined ? undefined : this.streams.get(id);
    if (!stream) return answer(res, 404, { error: { code: 'FERRY_ERR_UPLOAD_NOT_FOUND', message: 'No such upload' } });
    if (deploy !== undefined && req.method === 'POST') return this.#seal(req, res, stream, body);
    if (req.method === 'HEAD') {
      res.writeHead(204, { 'upload-offset': String(stream.offset), 'cache-control': 'no-store' }).end();
      return;
    }
    if (req.method === 'DELETE') {
      this.streams.delete(id ?? '');
      res.writeHead(204).end();
      return;
    }
    if (req.method === 'PATCH') return this.#patch(req, res, stream, Number(offsetHeader), body);
    return answer(res, 405, { error: { code: 'FERRY_ERR_BAD_REQUEST', message: 'no' } });
  }

  #create(res: ServerResponse, body: Buffer): void {
    if (this.createAnswer) return answer(res, this.createAnswer.status, { error: { code: this.createAnswer.code, message: 'create refused' } });
    if (this.createFailures > 0) {
      this.createFailures -= 1;
      return answer(res, 503, { error: { code: 'FERRY_ERR_RECEIVER_UNREACHABLE', message: 'starting' } });
    }
    const parsed = parseDeferredManifest(JSON.parse(body.toString('utf8')));
    if (!parsed.ok) return answer(res, 400, { error: { code: 'FERRY_ERR_BAD_MANIFEST', message: parsed.problems.join('; ') } });
    const streamId = randomBytes(16).toString('hex');
    this.streams.set(streamId, { offset: 0, chunks: [] });
    res.writeHead(201, { location: `${PATHS.streams}/${streamId}`, 'upload-offset': '0', 'cache-control': 'no-store', 'content-type': 'application/json' });
    res.end(JSON.stringify({ streamId, offset: 0 }));
  }

  async #patch(req: IncomingMessage, res: ServerResponse, stream: FakeStream, offset: number, part: Buffer): Promise<void> {
    const action = this.patchAction(this.#patches++, offset);
    if (typeof action === 'object') return answer(res, action.status, { error: { code: action.code, message: 'refused by the test', ...(action.details ? { details: action.details } : {}) } });
    if (action === 'cut-before-taking') {
      req.socket.destroy();
      return;
    }
    if (offset !== stream.offset) {
      res.writeHead(409, { 'upload-offset': String(stream.offset), 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'FERRY_ERR_OFFSET_MISMATCH', message: 'offset mismatch' } }));
      return;
    }
    if (part.length > STREAM_MAX_PART_BYTES) return answer(res, 413, { error: { code: 'FERRY_ERR_PAYLOAD_TOO_LARGE', message: 'part too large' } });
    this.inFlight += 1;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    if (this.patchDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.patchDelayMs));
    this.inFlight -= 1;
    // A part cut short on the receiver's disk by a kill: what arrived of it is held.
    const taken = action === 'cut-after-half' ? part.subarray(0, Math.floor(part.length / 2)) : part;
    stream.chunks.push(taken);
    stream.offset += taken.length;
    if (action === 'cut-after-taking' || action === 'cut-after-half') {
      req.socket.destroy();
      return;
    }
    res.writeHead(204, { 'upload-offset': String(stream.offset) }).end();
  }

  #seal(req: IncomingMessage, res: ServerResponse, stream: FakeStream, body: Buffer): void {
    const action = this.sealAction(this.#seals++);
    if (typeof action === 'object') return answer(res, action.status, { error: { code: action.code, message: 'refused by the test' } });
    this.sealBody = JSON.parse(body.toString('utf8'));
    const seal = PackageSealSchema.parse(this.sealBody);
    const bytes = Buffer.concat(stream.chunks);
    if (seal.size !== stream.offset) return answer(res, 409, { error: { code: 'FERRY_ERR_UPLOAD_INCOMPLETE', message: 'incomplete' } });
    if (seal.digest !== digestOf(bytes)) return answer(res, 422, { error: { code: 'FERRY_ERR_CHECKSUM_MISMATCH', message: 'seal does not match' } });
    this.sealedBytes = bytes;
    if (action === 'cut') {
      req.socket.destroy();
      return;
    }
    answer(res, 200, { deploymentId: DEPLOYMENT_ID, state: 'COMPLETED', timings: {} });
  }
}

function answer(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

/** Pushes `data` in the given chunk sizes (repeated) through a BLAKE3 tap into the destination. */
function producer(data: Buffer, chunkSizes: number[] = [4096], pulled?: (bytes: number) => void) {
  return async (destination: Writable): Promise<{ size: number; digest: Digest }> => {
    let at = 0;
    let turn = 0;
    const source = new Readable({
      read() {
        if (at >= data.length) return void this.push(null);
        const size = chunkSizes[turn++ % chunkSizes.length] ?? 1;
        const piece = data.subarray(at, at + size);
        at += piece.length;
        pulled?.(at);
        this.push(piece);
      },
    });
    const tap = new DigestTap();
    await pipeline(source, tap, destination);
    return { size: tap.bytes, digest: tap.digest() };
  };
}

describe('streamed upload client', { timeout: 60_000 }, () => {
  const rx = new FakeReceiver();
  const options = (extra: Partial<StreamOptions> = {}): StreamOptions => ({
    url: rx.url, credentials, audience: AUDIENCE, manifestJson: JSON.stringify(manifest), retryDelayMs: 1, ...extra,
  });

  before(() => rx.start());
  after(() => new Promise<void>((resolve) => { rx.server.closeAllConnections(); rx.server.close(() => resolve()); }));
  beforeEach(() => rx.reset());

  test('parts are cut at exactly the part size, each PATCH signed at its offset, and the seal names the whole package', async () => {
    const data = randomBytes(3500);
    const progress: number[] = [];
    const upload = new StreamUpload(options({ partBytes: 1000, onProgress: (n) => progress.push(n) }));
    const outcome = await upload.run(producer(data, [7, 333, 1500, 64]));
    assert.deepEqual(rx.requests('PATCH').map((p) => [p.offset, p.length]), [[0, 1000], [1000, 1000], [2000, 1000], [3000, 500]]);
    assert.deepEqual(progress, [1000, 2000, 3000, 3500]);
    assert.deepEqual(rx.sealBody, { size: 3500, digest: digestOf(data) });
    assert.ok(rx.sealedBytes?.equals(data));
    assert.equal(outcome.result.state, 'COMPLETED');
    assert.equal(outcome.bodyBytes, 3500);
    assert.equal(outcome.retries, 0);
    assert.deepEqual(rx.requests('POST').map((p) => p.path), [PATHS.streams, `${rx.requests('PATCH')[0]?.path ?? ''}/deploy`]);
    assert.equal(rx.requests('DELETE').length, 0);
  });

  test('a package of whole parts sends no empty last part', async () => {
    const data = randomBytes(3000);
    await new StreamUpload(options({ partBytes: 1000 })).run(producer(data, [1000]));
    assert.deepEqual(rx.requests('PATCH').map((p) => [p.offset, p.length]), [[0, 1000], [1000, 1000], [2000, 1000]]);
    assert.deepEqual(rx.sealBody, { size: 3000, digest: digestOf(data) });
  });

  test('one part in flight at a time, and the producer is held to two parts queued behind it and one filling', async () => {
    const partBytes = 1024 * 1024;
    const data = randomBytes(8 * partBytes + 12_345);
    rx.patchDelayMs = 20;
    let acknowledged = 0;
    let worstAhead = 0;
    const upload = new StreamUpload(options({ partBytes, onProgress: (n) => { acknowledged = n; } }));
    await upload.run(producer(data, [16 * 1024], (pulled) => { worstAhead = Math.max(worstAhead, pulled - acknowledged); }));
    assert.equal(rx.maxInFlight, 1);
    // The part in flight, two queued, the one filling, and a chunk or two in each stage's own
    // buffers; without backpressure the producer would be the whole package ahead.
    assert.ok(worstAhead <= 4 * partBytes + 16 * 16 * 1024, `the producer ran ${worstAhead} bytes ahead of the receiver`);
    assert.ok(rx.sealedBytes?.equals(data));
  });

  test('a connection cut before the part was taken: the same part is sent again', async () => {
    const data = randomBytes(2500);
    rx.patchAction = (attempt) => (attempt === 1 ? 'cut-before-taking' : undefined);
    const outcome = await new StreamUpload(options({ partBytes: 1000 })).run(producer(data));
    assert.deepEqual(rx.requests('PATCH').map((p) => p.offset), [0, 1000, 1000, 2000]);
    assert.equal(outcome.retries, 1);
    assert.ok(rx.sealedBytes?.equals(data));
  });

  test('an answer lost after the part was taken: HEAD says so, and the part is not sent again', async () => {
    const data = randomBytes(2500);
    rx.patchAction = (attempt) => (attempt === 1 ? 'cut-after-taking' : undefined);
    const outcome = await new StreamUpload(options({ partBytes: 1000 })).run(producer(data));
    assert.deepEqual(rx.requests('PATCH').map((p) => p.offset), [0, 1000, 2000]);
    assert.equal(rx.requests('HEAD').length, 1);
    assert.equal(outcome.retries, 1);
    assert.equal(outcome.bodyBytes, 2500);
    assert.deepEqual(rx.sealBody, { size: 2500, digest: digestOf(data) });
    assert.ok(rx.sealedBytes?.equals(data));
  });

  test('a 5xx and a refused part digest are resent; six failures in a row give up', async () => {
    const data = randomBytes(1500);
    rx.patchAction = (attempt) => (attempt === 0 ? { status: 503, code: 'FERRY_ERR_INTERNAL' } : attempt === 2 ? { status: 422, code: 'FERRY_ERR_CHECKSUM_MISMATCH' } : undefined);
    const outcome = await new StreamUpload(options({ partBytes: 1000 })).run(producer(data));
    assert.equal(outcome.retries, 2);
    assert.ok(rx.sealedBytes?.equals(data));

    rx.reset();
    rx.patchAction = () => 'cut-before-taking';
    const upload = new StreamUpload(options({ partBytes: 1000, attempts: 6 }));
    await assert.rejects(upload.run(producer(data)), (err: unknown) => isFerryError(err, 'FERRY_ERR_RECEIVER_UNREACHABLE'));
    assert.equal(rx.requests('PATCH').length, 6);
    assert.equal(rx.requests('DELETE').length, 1);
  });

  test('a part the receiver holds half of (cut on its disk by a kill): only the other half goes', async () => {
    const data = randomBytes(2500);
    rx.patchAction = (attempt) => (attempt === 1 ? 'cut-after-half' : undefined);
    const outcome = await new StreamUpload(options({ partBytes: 1000 })).run(producer(data));
    assert.deepEqual(rx.requests('PATCH').map((p) => [p.offset, p.length]), [[0, 1000], [1000, 1000], [1500, 500], [2000, 500]]);
    assert.equal(outcome.bodyBytes, 3000);
    assert.ok(rx.sealedBytes?.equals(data));
  });

  test('a receiver restarting (503 at create and on a part, lost seal answers): each call goes on, nothing is sent twice', async () => {
    const data = randomBytes(2500);
    rx.createFailures = 1;
    rx.patchAction = (attempt) => (attempt === 1 ? { status: 503, code: 'FERRY_ERR_RECEIVER_UNREACHABLE' } : undefined);
    rx.sealAction = (attempt) => (attempt === 0 ? 'cut' : attempt === 1 ? { status: 503, code: 'FERRY_ERR_RECEIVER_UNREACHABLE' } : undefined);
    const outcome = await new StreamUpload(options({ partBytes: 1000 })).run(producer(data));
    assert.equal(outcome.result.state, 'COMPLETED');
    assert.equal(outcome.bodyBytes, 3500);
    assert.deepEqual(rx.requests('POST').map((p) => p.path.endsWith('/deploy')), [false, false, true, true, true]);
    assert.ok(rx.sealedBytes?.equals(data));
  });

  test('a seal whose stream the receiver no longer knows, after a lost answer: reported as vanished', async () => {
    rx.sealAction = (attempt) => (attempt === 0 ? 'cut' : { status: 404, code: 'FERRY_ERR_UPLOAD_NOT_FOUND' });
    const upload = new StreamUpload(options({ partBytes: 1000 }));
    await assert.rejects(upload.run(producer(randomBytes(1500))), (err: unknown) => err instanceof StreamUnavailable && err.reason === 'vanished');
    assert.equal(upload.idFree, false);
  });

  test('404 or FERRY_ERR_STREAM_UNAVAILABLE at create: reported as unavailable, nothing produced', async () => {
    for (const refusal of [{ status: 404, code: 'FERRY_ERR_NOT_FOUND' }, { status: 409, code: 'FERRY_ERR_STREAM_UNAVAILABLE' }]) {
      rx.reset();
      rx.createAnswer = refusal;
      let produced = false;
      const upload = new StreamUpload(options());
      await assert.rejects(upload.run(() => { produced = true; return Promise.resolve({ size: 1, digest: digestOf('x') }); }), (err: unknown) => {
        assert.ok(err instanceof StreamUnavailable, String(err));
        assert.equal(err.reason, 'unavailable');
        return true;
      });
      assert.equal(produced, false);
      assert.equal(upload.idFree, true);
    }
  });

  test('other refusals at create are final', async () => {
    rx.createAnswer = { status: 403, code: 'FERRY_ERR_POLICY_DENIED' };
    await assert.rejects(new StreamUpload(options()).run(producer(randomBytes(10))), (err: unknown) => isFerryError(err, 'FERRY_ERR_POLICY_DENIED'));
  });

  test('a stream gone mid-way (404/410 on a PATCH): reported as vanished, the id still free', async () => {
    for (const gone of [{ status: 404, code: 'FERRY_ERR_UPLOAD_NOT_FOUND' }, { status: 410, code: 'FERRY_ERR_UPLOAD_INVALIDATED' }]) {
      rx.reset();
      rx.patchAction = (attempt) => (attempt === 1 ? gone : undefined);
      const upload = new StreamUpload(options({ partBytes: 1000 }));
      await assert.rejects(upload.run(producer(randomBytes(5000))), (err: unknown) => {
        assert.ok(err instanceof StreamUnavailable, String(err));
        assert.equal(err.reason, 'vanished');
        return true;
      });
      assert.equal(upload.idFree, true);
      assert.equal(rx.requests('POST').filter((p) => p.path.endsWith('/deploy')).length, 0);
      assert.equal(rx.requests('DELETE').length, 1);
    }
  });

  test('abandoned mid-way (the producer fails): DELETE, the producer\'s error, the id free', async () => {
    const partBytes = 1000;
    class Abandoned extends Error {}
    const upload = new StreamUpload(options({ partBytes }));
    await assert.rejects(upload.run(async (destination) => {
      await new Promise<void>((resolve, reject) => destination.write(randomBytes(2500), (err) => (err ? reject(err) : resolve())));
      destination.destroy();
      throw new Abandoned('the layers cannot be left out');
    }), Abandoned);
    assert.equal(rx.requests('DELETE').length, 1);
    assert.equal(rx.requests('DELETE')[0]?.path, rx.requests('PATCH')[0]?.path);
    assert.equal(rx.streams.size, 0);
    assert.equal(upload.idFree, true);
  });

  test('a refusal of the content is final: its code, DELETE sent', async () => {
    rx.patchAction = (attempt) => (attempt === 1 ? { status: 422, code: 'FERRY_ERR_BAD_ARCHIVE' } : undefined);
    const upload = new StreamUpload(options({ partBytes: 1000 }));
    await assert.rejects(upload.run(producer(randomBytes(3000))), (err: unknown) => isFerryError(err, 'FERRY_ERR_BAD_ARCHIVE'));
    assert.equal(rx.requests('PATCH').length, 2);
    assert.equal(rx.requests('DELETE').length, 1);
  });

  test('a stream the receiver ended for its content (410 with the reason\'s code) is that refusal, not a stream gone', async () => {
    rx.patchAction = (attempt) => (attempt === 1 ? { status: 410, code: 'FERRY_ERR_UPLOAD_INVALIDATED', details: { reason: 'FERRY_ERR_LAYERS_MISSING' } } : undefined);
    const upload = new StreamUpload(options({ partBytes: 1000 }));
    await assert.rejects(upload.run(producer(randomBytes(3000))), (err: unknown) => isFerryError(err, 'FERRY_ERR_LAYERS_MISSING') && !(err instanceof StreamUnavailable));
    assert.equal(upload.idFree, true);
  });

  test('a seal that does not match is final, and the id is no longer free', async () => {
    const upload = new StreamUpload(options({ partBytes: 1000 }));
    await assert.rejects(upload.run(async (destination) => {
      const real = await producer(randomBytes(1500))(destination);
      return { ...real, digest: digestOf('something else') };
    }), (err: unknown) => isFerryError(err, 'FERRY_ERR_CHECKSUM_MISMATCH'));
    assert.equal(upload.idFree, false);
  });
});
