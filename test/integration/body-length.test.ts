/**
 * Request bodies longer or shorter than they declared (docs/reliability.md row 41), against a real
 * `ferry receiver` process on real sockets: a body that ends before its Content-Length, bytes past
 * its Content-Length, and a package shorter or longer than its signed `package.size` (or a
 * resumable upload's `Upload-Length`). Each request is written whole, then again cut at every
 * write boundary around the point that matters; each time the answer is the documented one, it
 * arrives without the client sending more, and nothing is left in the spool directories — also
 * after a receiver that was killed while it spooled a one-shot upload starts again.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setImmediate as tick, setTimeout as pause } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { digestOf } from '@ferry/integrity';
import { ResumableClient } from '@ferry/sender';
import { startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { lines, parseAnswer, probe, signed, type RawAnswer } from '../helpers/raw-http.ts';
import { stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const key = testKey(`len-${run}`);
const hostId = `len-${run}`;
/** Package bytes: 0x07 is no token character, so bytes of it read as a request line fail at once. */
const FILL = 0x07;

interface Exchange {
  answers: RawAnswer[];
  /** The receiver closed the connection (it was not closed by this side). */
  closed: boolean;
}

/**
 * Writes `bytes` (a whole request, head included) in pieces cut at `cuts`, each piece handed to
 * the kernel before the next is written, then half-closes when `end` says so. Reads answers until
 * `answers` of them are whole or the receiver closes the connection: a receiver that waits for
 * bytes that never come makes the test fail by its timeout.
 */
async function exchange(url: string, bytes: Buffer, cuts: number[], options: { end?: boolean; answers?: number } = {}): Promise<Exchange> {
  const { port } = new URL(url);
  const socket = connect(Number(port), '127.0.0.1').setNoDelay(true);
  let received = Buffer.alloc(0);
  let closed = false;
  const done = new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (answersIn(received).length >= (options.answers ?? Infinity)) resolve();
    });
    socket.once('close', () => {
      closed = true;
      resolve();
    });
    // The receiver may answer and close while pieces are still being written.
    socket.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err); });
  });
  await new Promise((resolve) => socket.once('connect', resolve));
  let from = 0;
  for (const to of [...cuts, bytes.length]) {
    if (socket.writable) await new Promise((resolve) => socket.write(bytes.subarray(from, to), resolve));
    from = to;
    await tick();
  }
  if (options.end === true && socket.writable) socket.end();
  await done;
  const wasClosed = closed;
  socket.destroy();
  return { answers: answersIn(received), closed: wasClosed };
}

/** The whole answers in what was read, in order (each framed by its Content-Length). */
function answersIn(received: Buffer): RawAnswer[] {
  const answers: RawAnswer[] = [];
  let rest = received;
  for (;;) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) return answers;
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(rest.subarray(0, end).toString('latin1'))?.[1] ?? 0);
    if (rest.length < end + 4 + length) return answers;
    answers.push(parseAnswer(rest.subarray(0, end + 4 + length).toString('utf8')));
    rest = rest.subarray(end + 4 + length);
  }
}

/**
 * The write boundaries tried for a request of `length` bytes whose critical byte is at `at`: one
 * write; a byte at a time from two before it to two after it; and single cuts at `at` − 1, `at`
 * and `at` + 1.
 */
const SPLITS: [string, (at: number) => number[]][] = [
  ['one write', () => []],
  ['a byte at a time around the boundary', (at) => [at - 2, at - 1, at, at + 1, at + 2]],
  ['cut one byte before the boundary', (at) => [at - 1]],
  ['cut at the boundary', (at) => [at]],
  ['cut one byte after the boundary', (at) => [at + 1]],
];

function cutsFor(split: (at: number) => number[], at: number, length: number): number[] {
  return [...new Set(split(at))].filter((cut) => cut > 0 && cut < length).sort((a, b) => a - b);
}

function manifestFor(pkg: Buffer, size = pkg.length): string {
  return JSON.stringify({
    schema: 'ferry.manifest/v1', deploymentId: randomUUID(), createdAt: new Date().toISOString(),
    image: { ref: `ferry-len-${run}:1`, id: `sha256:${'a'.repeat(64)}`, diffIds: [`sha256:${'b'.repeat(64)}`] },
    package: { format: 'docker-archive', compression: 'none', size, digest: digestOf(pkg) },
    service: { name: `len-${run}`, env: {}, network: 'none' },
  });
}

/** A one-shot body (docs/protocol.md §5.1) and where its package bytes start. */
function multipart(manifest: string, pkg: Buffer): { body: Buffer; packageAt: number } {
  const prefix = Buffer.from(
    `--x\r\nContent-Disposition: form-data; name="manifest"\r\nContent-Type: application/json\r\n\r\n${manifest}\r\n`
    + '--x\r\nContent-Disposition: form-data; name="package"; filename="package"\r\nContent-Type: application/octet-stream\r\n\r\n',
  );
  return { body: Buffer.concat([prefix, pkg, Buffer.from('\r\n--x--\r\n')]), packageAt: prefix.length };
}

/** A signed request's head (with its blank line) for a body of `length` bytes. */
function head(method: string, path: string, digest: string, length: number, extra: Record<string, string> = {}, offset?: number): Buffer {
  const headers = signed(key, hostId, { method, path, digest, ...(offset === undefined ? {} : { offset }) });
  return Buffer.from(`${[`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1', `Content-Length: ${length}`, ...lines({ ...headers, ...extra })].join('\r\n')}\r\n\r\n`);
}

function oneShot(manifest: string, length: number): Buffer {
  return head('POST', '/v1/packages', digestOf(manifest), length, { 'content-type': 'multipart/form-data; boundary=x' });
}

function patch(uploadId: string, offset: number, digest: string, length: number): Buffer {
  const path = `/v1/uploads/${uploadId}`;
  return head('PATCH', path, digest, length, { 'content-type': 'application/offset+octet-stream', 'upload-offset': String(offset) }, offset);
}

function codes(answers: RawAnswer[]): [number, string | undefined][] {
  return answers.map((answer) => [answer.status, answer.code]);
}

describe('row 41: a body longer or shorter than it declared, at every write boundary', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  let client: ResumableClient;

  before(async () => {
    receiver = await startReceiverProcess({ DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId });
    client = new ResumableClient({ url: receiver.url, credentials: key, audience: hostId });
  });
  after(async () => receiver?.stop());

  /** An honest part: `bytes[from, to)` at offset `from`. */
  const goodPart = (uploadId: string, bytes: Buffer, from: number, to: number): Promise<{ offset: number }> => {
    const part = bytes.subarray(from, to);
    return client.patch(uploadId, from, { digest: digestOf(part), body: () => Readable.from([part]), bodyBytes: part.length });
  };

  /**
   * What the spool directories hold that they should not: any file in ingest/ (one-shot spools
   * live there only while their request runs), and in uploads/ anything but session records and
   * their spools, an invalidated session's spool, or a spool longer or shorter than its offset.
   */
  const leftovers = async (): Promise<string[]> => {
    const found = (await readdir(join(receiver.dataDir, 'ingest'))).map((name) => `ingest/${name}`);
    const uploads = join(receiver.dataDir, 'uploads');
    const names = await readdir(uploads);
    for (const name of names) {
      if (!/^[0-9a-f]{32}\.(json|bin)$/.test(name)) found.push(`uploads/${name}`);
      if (!name.endsWith('.json')) continue;
      const record = JSON.parse(await readFile(join(uploads, name), 'utf8')) as { id: string; offset: number; state: string };
      const spool = await stat(join(uploads, `${record.id}.bin`)).then((s) => s.size, () => undefined);
      if (record.state === 'invalidated' ? spool !== undefined : spool !== record.offset) found.push(`uploads/${record.id}.bin: ${spool} bytes, offset ${record.offset}, ${record.state}`);
    }
    return found;
  };

  /** Nothing left on disk (cleanup may trail the answer: polled, boundedly), and a good signed request is still served. */
  const assertCleanAndServing = async (label: string): Promise<void> => {
    let left = await leftovers();
    for (let i = 0; i < 200 && left.length > 0; i += 1) {
      await pause(25);
      left = await leftovers();
    }
    assert.deepEqual(left, [], `${label}: nothing left in the spool directories`);
    const answer = await probe(receiver.url, signed(key, hostId));
    assert.equal(answer.status, 404, `${label}: a good signed request passes every check`);
  };

  /** Every refusal was the client's: no request failed as the receiver's own error. */
  const assertNoInternalError = (): void => {
    const failed = receiver.logs.filter((entry) => entry.code === 'FERRY_ERR_INTERNAL' || (typeof entry.level === 'number' && entry.level >= 50));
    assert.deepEqual(failed, []);
  };

  test('a one-shot body that ends before its Content-Length, the client closing its side → 400 FERRY_ERR_BAD_REQUEST, nothing spooled', async () => {
    const pkg = Buffer.alloc(64 * 1024, FILL);
    const manifest = manifestFor(pkg);
    const { body, packageAt } = multipart(manifest, pkg);
    // Stops inside the manifest, inside the package, and one byte short of the declared end.
    for (const [where, sent] of [['inside the manifest', 60], ['inside the package', packageAt + 1000], ['one byte short', body.length - 1]] as const) {
      for (const [how, split] of SPLITS) {
        const label = `${where}, ${how}`;
        const request = Buffer.concat([oneShot(manifest, body.length), body.subarray(0, sent)]);
        const { answers, closed } = await exchange(receiver.url, request, cutsFor(split, request.length - 1, request.length), { end: true });
        assert.deepEqual(codes(answers), [[400, 'FERRY_ERR_BAD_REQUEST']], label);
        assert.equal(answers[0]?.headers.connection, 'close', label);
        assert.ok(closed, `${label}: the receiver closed the connection`);
        await assertCleanAndServing(label);
      }
    }
    // Chunked coding declares its end too: a body without its last chunk has ended early.
    const chunkedHead = oneShot(manifest, 0).toString('latin1').replace('Content-Length: 0\r\n', 'Transfer-Encoding: chunked\r\n');
    const chunked = Buffer.concat([Buffer.from(chunkedHead, 'latin1'), Buffer.from(`${body.length.toString(16)}\r\n`), body.subarray(0, packageAt + 1000)]);
    const { answers, closed } = await exchange(receiver.url, chunked, [], { end: true });
    assert.deepEqual(codes(answers), [[400, 'FERRY_ERR_BAD_REQUEST']], 'chunked');
    assert.ok(closed, 'chunked: the receiver closed the connection');
    await assertCleanAndServing('chunked');
    assertNoInternalError();
  });

  test('a resumable create or part that ends before its Content-Length → 400; no session is made and the part is not kept', async () => {
    const pkg = Buffer.alloc(32 * 1024, FILL);
    const manifest = manifestFor(pkg);
    const sessions = async (): Promise<string[]> => (await readdir(join(receiver.dataDir, 'uploads'))).filter((name) => name.endsWith('.json'));
    const existing = await sessions();
    for (const [how, split] of SPLITS) {
      const label = `create, ${how}`;
      const request = Buffer.concat([head('POST', '/v1/uploads', digestOf(manifest), manifest.length, { 'content-type': 'application/json' }), Buffer.from(manifest.slice(0, -1))]);
      const { answers, closed } = await exchange(receiver.url, request, cutsFor(split, request.length - 1, request.length), { end: true });
      assert.deepEqual(codes(answers), [[400, 'FERRY_ERR_BAD_REQUEST']], label);
      assert.ok(closed, `${label}: the receiver closed the connection`);
      await assertCleanAndServing(label);
    }
    assert.deepEqual(await sessions(), existing, 'no session was made');

    const { uploadId } = await client.create(manifest);
    assert.equal((await goodPart(uploadId, pkg, 0, 1000)).offset, 1000);
    const part = pkg.subarray(1000, 9000);
    for (const sent of [1, part.length / 2, part.length - 1]) {
      for (const [how, split] of SPLITS) {
        const label = `part, ${sent} of ${part.length} bytes, ${how}`;
        const request = Buffer.concat([patch(uploadId, 1000, digestOf(part), part.length), part.subarray(0, sent)]);
        const { answers, closed } = await exchange(receiver.url, request, cutsFor(split, request.length - 1, request.length), { end: true });
        assert.deepEqual(codes(answers), [[400, 'FERRY_ERR_BAD_REQUEST']], label);
        assert.ok(closed, `${label}: the receiver closed the connection`);
        // The spool is back at the acknowledged offset (leftovers compares them).
        await assertCleanAndServing(label);
        assert.equal((await client.head(uploadId)).offset, 1000, `${label}: the offset stays`);
      }
    }
    assertNoInternalError();
  });

  test('bytes past a Content-Length are not the body: the declared body gets its answer first, then the rest gets 400 and the connection closes', async () => {
    const pkg = Buffer.alloc(32 * 1024, FILL);
    const { uploadId } = await client.create(manifestFor(pkg));
    let offset = 0;
    // A part followed by ten more bytes than its Content-Length: the declared part, which is the
    // one signed, is taken, and only it; the bytes after it are refused as a request.
    for (const [how, split] of SPLITS) {
      const part = pkg.subarray(offset, offset + 1000);
      const headBytes = patch(uploadId, offset, digestOf(part), part.length);
      const request = Buffer.concat([headBytes, part, pkg.subarray(offset + 1000, offset + 1010)]);
      const { answers, closed } = await exchange(receiver.url, request, cutsFor(split, headBytes.length + part.length, request.length));
      assert.deepEqual(codes(answers), [[204, undefined], [400, 'FERRY_ERR_BAD_REQUEST']], how);
      assert.equal(answers[0]?.headers['upload-offset'], String(offset + 1000), `${how}: the offset moved by the Content-Length`);
      assert.ok(closed, `${how}: the receiver closed the connection`);
      offset += 1000;
      assert.equal((await client.head(uploadId)).offset, offset, how);
      await assertCleanAndServing(how);
    }

    // The client signed every byte it sent but declared fewer: the declared part is not the
    // signed one, so it is discarded (422) and the offset stays.
    for (const [how, split] of SPLITS) {
      const label = `signed longer than declared, ${how}`;
      const sent = pkg.subarray(offset, offset + 1010);
      const headBytes = patch(uploadId, offset, digestOf(sent), 1000);
      const request = Buffer.concat([headBytes, sent]);
      const { answers, closed } = await exchange(receiver.url, request, cutsFor(split, headBytes.length + 1000, request.length));
      assert.deepEqual(codes(answers), [[422, 'FERRY_ERR_CHECKSUM_MISMATCH'], [400, 'FERRY_ERR_BAD_REQUEST']], label);
      assert.equal(answers[0]?.headers['upload-offset'], String(offset), `${label}: the offset stays`);
      assert.ok(closed, `${label}: the receiver closed the connection`);
      assert.equal((await client.head(uploadId)).offset, offset, label);
      await assertCleanAndServing(label);
    }

    // A one-shot upload whose Content-Length ends inside its package, the rest of the package
    // behind it: the declared body is a multipart that ended early; the rest is not read into it.
    const small = Buffer.alloc(4096, FILL);
    const manifest = manifestFor(small);
    const { body, packageAt } = multipart(manifest, small);
    const declared = packageAt + 2048;
    for (const [how, split] of SPLITS) {
      const label = `one-shot, ${how}`;
      const headBytes = oneShot(manifest, declared);
      const request = Buffer.concat([headBytes, body]);
      const { answers, closed } = await exchange(receiver.url, request, cutsFor(split, headBytes.length + declared, request.length));
      assert.deepEqual(codes(answers), [[400, 'FERRY_ERR_BAD_REQUEST'], [400, 'FERRY_ERR_BAD_REQUEST']], label);
      assert.ok(answers[0]?.headers['x-request-id'], `${label}: the first answer is the upload's`);
      assert.equal(answers[1]?.headers['x-request-id'], undefined, `${label}: the second is the one for the bytes after it`);
      assert.ok(closed, `${label}: the receiver closed the connection`);
      await assertCleanAndServing(label);
    }
    assertNoInternalError();
  });

  test('a package shorter or longer than its signed package.size → 422 FERRY_ERR_SIZE_MISMATCH, a longer one at its first excess byte; nothing spooled', async () => {
    const size = 16 * 1024;
    for (const actual of [size - 1, size + 1]) {
      const pkg = Buffer.alloc(actual, FILL);
      const manifest = manifestFor(pkg, size);
      const { body, packageAt } = multipart(manifest, pkg);
      for (const [how, split] of SPLITS) {
        const label = `${actual} bytes for ${size}, ${how}`;
        const headBytes = oneShot(manifest, body.length);
        const request = Buffer.concat([headBytes, body]);
        const packageEnd = headBytes.length + packageAt + Math.min(size, actual);
        const { answers } = await exchange(receiver.url, request, cutsFor(split, packageEnd, request.length), { answers: 1 });
        assert.deepEqual(codes(answers), [[422, 'FERRY_ERR_SIZE_MISMATCH']], label);
        await assertCleanAndServing(label);
      }
    }

    // Far longer, and the client stops one byte past package.size: the refusal comes without
    // the rest of the body, with Connection: close.
    const long = Buffer.alloc(4 * size, FILL);
    const manifest = manifestFor(long.subarray(0, size), size);
    const { body, packageAt } = multipart(manifest, long);
    for (const [how, split] of SPLITS) {
      const label = `past package.size, the rest withheld, ${how}`;
      const headBytes = oneShot(manifest, body.length);
      const excess = headBytes.length + packageAt + size;
      const request = Buffer.concat([headBytes, body.subarray(0, packageAt + size + 1)]);
      const { answers } = await exchange(receiver.url, request, cutsFor(split, excess, request.length), { answers: 1 });
      assert.deepEqual(codes(answers), [[422, 'FERRY_ERR_SIZE_MISMATCH']], label);
      assert.equal(answers[0]?.headers.connection, 'close', label);
      await assertCleanAndServing(label);
    }

    // A resumable upload's Upload-Length is its package.size: one byte short cannot deploy; a
    // part one byte past it is refused from its headers, the upload invalidated and its spool deleted.
    const whole = Buffer.alloc(size, FILL);
    const { uploadId } = await client.create(manifestFor(whole));
    await goodPart(uploadId, whole, 0, size - 1);
    await assert.rejects(client.deploy(uploadId), { code: 'FERRY_ERR_UPLOAD_INCOMPLETE' });
    const past = Buffer.alloc(2, FILL);
    const { answers } = await exchange(receiver.url, Buffer.concat([patch(uploadId, size - 1, digestOf(past), past.length), past]), [], { answers: 1 });
    assert.deepEqual(codes(answers), [[413, 'FERRY_ERR_PAYLOAD_TOO_LARGE']]);
    await assertCleanAndServing('one byte past Upload-Length');
    assertNoInternalError();
  });

  test('a one-shot package whose extra bytes come before the closing boundary → 422 FERRY_ERR_SIZE_MISMATCH, whatever the writes; nothing spooled', async () => {
    const size = 8 * 1024;
    const pkg = Buffer.alloc(size, FILL);
    const manifest = manifestFor(pkg);
    const extras: [string, Buffer][] = [
      ['one extra byte', Buffer.alloc(1, FILL)],
      ['100 extra bytes', Buffer.alloc(100, FILL)],
      // The parser holds back bytes that may begin the delimiter until it knows they do not.
      ['extra bytes that begin like the closing delimiter', Buffer.from('\r\n--')],
      ['a second package', Buffer.alloc(size, FILL)],
    ];
    for (const [what, extra] of extras) {
      const { body, packageAt } = multipart(manifest, Buffer.concat([pkg, extra]));
      // Every request is signed anew (a nonce is good once); its head is as long each time.
      const headLength = oneShot(manifest, body.length).length;
      const length = headLength + body.length;
      const packageEnd = headLength + packageAt + size;
      const delimiterAt = packageEnd + extra.length;
      const writes: [string, number[]][] = [
        ['one write', []],
        ['the extra bytes in the same write as the boundary', [packageEnd]],
        ['the last package byte, the extra bytes and the boundary in one write', [packageEnd - 1]],
        ['the extra bytes in a write of their own', [packageEnd, delimiterAt]],
        ['the extra bytes with the package, the boundary on its own', [delimiterAt]],
        ['the extra bytes split across two writes', [packageEnd + Math.ceil(extra.length / 2)]],
        ['the boundary split across two writes', [delimiterAt + 3]],
        ['a byte at a time from the package\'s last byte to the end of the body', Array.from({ length: length - packageEnd + 1 }, (_, i) => packageEnd - 1 + i)],
      ];
      for (const [how, cuts] of writes) {
        const label = `${what}, ${how}`;
        const request = Buffer.concat([oneShot(manifest, body.length), body]);
        assert.equal(request.length, length, label);
        const { answers } = await exchange(receiver.url, request, [...new Set(cuts)].filter((cut) => cut > 0 && cut < length).sort((a, b) => a - b), { answers: 1 });
        assert.deepEqual(codes(answers), [[422, 'FERRY_ERR_SIZE_MISMATCH']], label);
        await assertCleanAndServing(label);
      }
    }
    assertNoInternalError();
  });

  test('a one-shot package being spooled when the receiver is killed leaves no part file once it starts again', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-len-restart-'));
    const env = { DOCKER_HOST: stack().targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_DATA_DIR: dataDir };
    const ingest = join(dataDir, 'ingest');
    let restarted: ReceiverProcess | undefined;
    const killed = await startReceiverProcess(env);
    try {
      const size = 64 * 1024;
      const pkg = Buffer.alloc(size + 100, FILL);
      const manifest = manifestFor(pkg.subarray(0, size), size);
      const { body, packageAt } = multipart(manifest, pkg);
      // Half the package, then nothing: the receiver holds its spool file open, waiting for the rest.
      const { port } = new URL(killed.url);
      const socket = connect(Number(port), '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.write(Buffer.concat([oneShot(manifest, body.length), body.subarray(0, packageAt + size / 2)]));
      let parts = await readdir(ingest);
      for (let i = 0; i < 200 && parts.length === 0; i += 1) {
        await pause(25);
        parts = await readdir(ingest);
      }
      assert.equal(parts.length, 1, 'the package is being spooled');
      const exited = new Promise((resolve) => killed.child.once('exit', resolve));
      killed.child.kill('SIGKILL');
      await exited;
      socket.destroy();
      assert.deepEqual(await readdir(ingest), parts, 'the kill left the part file');

      restarted = await startReceiverProcess(env);
      assert.deepEqual(await readdir(ingest), [], 'the restarted receiver removed it before it listened');
      // The same upload sent whole, its extra bytes before the boundary: 422, and nothing stays.
      const headBytes = oneShot(manifest, body.length);
      const { answers } = await exchange(restarted.url, Buffer.concat([headBytes, body]), [headBytes.length + packageAt + size], { answers: 1 });
      assert.deepEqual(codes(answers), [[422, 'FERRY_ERR_SIZE_MISMATCH']]);
      let left = await readdir(ingest);
      for (let i = 0; i < 200 && left.length > 0; i += 1) {
        await pause(25);
        left = await readdir(ingest);
      }
      assert.deepEqual(left, []);
    } finally {
      await killed.stop();
      await restarted?.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
