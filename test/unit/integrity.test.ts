import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import { DigestTap, digestFile, digestOf, formatDigest, isDigest } from '@ferry/integrity';

const EMPTY = 'blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262';

/** Inputs covering the empty input, one chunk, and many BLAKE3 chunks and tree levels. */
const INPUTS: [string, Buffer][] = [
  ['empty', Buffer.alloc(0)],
  ['one byte', Buffer.from([0x61])],
  ['text', Buffer.from('Ferry pushes images, not registries.\n', 'utf8')],
  ['1024 bytes (one BLAKE3 chunk)', randomBytes(1024)],
  ['1025 bytes', randomBytes(1025)],
  ['5 MiB + 3 bytes of random data', randomBytes(5 * 1024 * 1024 + 3)],
  ['3 MiB of zeros', Buffer.alloc(3 * 1024 * 1024)],
];

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-integrity-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function b3sum(data: Buffer, name: string): string {
  const path = join(dir, name.replace(/[^a-z0-9]+/gi, '-'));
  writeFileSync(path, data);
  return `blake3:${execFileSync('b3sum', ['--no-names', path], { encoding: 'utf8' }).trim()}`;
}

/** Splits `data` into chunks whose sizes cycle through `sizes`. */
function chunked(data: Buffer, sizes: number[]): Buffer[] {
  const chunks: Buffer[] = [];
  for (let offset = 0, i = 0; offset < data.length; i++) {
    const size = sizes[i % sizes.length] ?? 1;
    chunks.push(data.subarray(offset, offset + size));
    offset += size;
  }
  return chunks;
}

async function tapped(chunks: Buffer[]): Promise<{ tap: DigestTap; passed: Buffer }> {
  const tap = new DigestTap();
  const seen: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      seen.push(chunk);
      callback();
    },
  });
  await pipeline(Readable.from(chunks, { objectMode: false }), tap, sink);
  return { tap, passed: Buffer.concat(seen) };
}

describe('digestOf', () => {
  for (const [name, data] of INPUTS) {
    it(`matches b3sum for ${name}`, () => {
      assert.equal(digestOf(data), b3sum(data, name));
    });
  }

  it('gives the well-known digest of nothing', () => {
    assert.equal(digestOf(''), EMPTY);
    assert.equal(digestOf(new Uint8Array(0)), EMPTY);
  });

  it('hashes a string as its UTF-8 bytes', () => {
    const text = 'grüße, 船';
    assert.equal(digestOf(text), digestOf(Buffer.from(text, 'utf8')));
  });
});

describe('DigestTap', () => {
  const oddSizes = [1, 7, 1023, 1025, 4093, 65_537, 3];
  for (const [name, data] of INPUTS) {
    it(`gives digestOf's digest and byte count through pipeline() for ${name}`, async () => {
      const { tap, passed } = await tapped(chunked(data, oddSizes));
      assert.equal(tap.bytes, data.length);
      assert.equal(tap.digest(), digestOf(data));
      assert.ok(passed.equals(data), 'bytes pass through unchanged');
    });
  }

  it('does not depend on how the bytes are cut', async () => {
    const data = INPUTS[5]?.[1] ?? Buffer.alloc(0);
    const whole = await tapped([data]);
    const bytewise = await tapped(chunked(data.subarray(0, 70_001), [1]));
    const odd = await tapped(chunked(data, [13, 8191]));
    assert.equal(whole.tap.digest(), odd.tap.digest());
    assert.equal(bytewise.tap.digest(), digestOf(data.subarray(0, 70_001)));
  });

  it('returns the same digest on every call', async () => {
    const { tap } = await tapped([Buffer.from('abc')]);
    assert.equal(tap.digest(), tap.digest());
    assert.equal(tap.digest(), digestOf('abc'));
  });
});

describe('digestFile', () => {
  it('matches b3sum and counts the bytes', async () => {
    const data = randomBytes(2 * 1024 * 1024 + 17);
    const expected = b3sum(data, 'digest-file');
    assert.deepEqual(await digestFile(join(dir, 'digest-file')), { digest: expected, bytes: data.length });
  });
});

describe('isDigest', () => {
  const hex = 'a'.repeat(64);
  it('accepts blake3:<64 lowercase hex>', () => {
    assert.equal(isDigest(`blake3:${hex}`), true);
    assert.equal(isDigest(EMPTY), true);
    assert.equal(isDigest(formatDigest(hex)), true);
  });
  for (const value of ['', hex, `blake3:${hex.slice(1)}`, `blake3:${hex}0`, `blake3:${'A'.repeat(64)}`, `BLAKE3:${hex}`, `sha256:${hex}`, `blake3:${'g'.repeat(64)}`, ` blake3:${hex}`, `blake3:${hex}\n`]) {
    it(`refuses ${JSON.stringify(value.length > 20 ? `${value.slice(0, 12)}…${value.slice(-4)}` : value)}`, () => {
      assert.equal(isDigest(value), false);
    });
  }
});
