/**
 * The archive inspector on generated tar streams: what it lets through reaches `docker load`
 * unchanged but for the names it strips; what it refuses never reaches the end-of-archive marker.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { FerryError, type ErrorCode } from '@ferry/protocol';
import { ArchiveInspector, UNPACK_FLOOR, UNPACK_MAX, sanitizeEngineMessage, unpackLimit, type ArchiveExpectation } from '@ferry/receiver';
import { tarHeader } from '../helpers/tar.ts';

interface Entry {
  name: string;
  type?: string;
  data?: Buffer | string;
  linkname?: string;
  /** The size the header claims, when it should lie about its data. */
  declaredSize?: number;
}

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

/** An independent, minimal ustar writer: the test does not trust the code under test to make tars. */
function header(entry: Entry, size: number): Buffer {
  return tarHeader(entry.name, size, entry.type ?? '0', entry.linkname ?? '');
}

function tar(entries: Entry[], { end = true } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    const data = Buffer.from(entry.data ?? '');
    parts.push(header(entry, entry.declaredSize ?? data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  if (end) parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

function pax(records: Record<string, string>): Entry {
  const body = Object.entries(records).map(([key, value]) => {
    const tail = ` ${key}=${value}\n`;
    let length = tail.length + 1;
    while (String(length).length + tail.length !== length) length += 1;
    return `${length}${tail}`;
  }).join('');
  return { name: 'PaxHeader', type: 'x', data: body };
}

/** Reads a tar back: name, type and content of each entry, until the end marker. */
function entriesOf(archive: Buffer): { name: string; type: string; data: Buffer; linkname: string }[] {
  const found = [];
  let at = 0;
  while (at + 512 <= archive.length) {
    const block = archive.subarray(at, at + 512);
    if (block.every((b) => b === 0)) break;
    const field = (o: number, l: number): string => block.toString('utf8', o, o + l).replace(/\0.*$/s, '');
    const size = parseInt(field(124, 12), 8);
    found.push({ name: field(0, 100), type: field(156, 1) || '0', linkname: field(157, 100), data: archive.subarray(at + 512, at + 512 + size) });
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return found;
}

const hex = (seed: string): string => sha256(seed);
const layerA = Buffer.from('layer A '.repeat(300));
const layerB = Buffer.from('layer B '.repeat(20));
const diffIds = [`sha256:${sha256(layerA)}`, `sha256:${sha256(layerB)}`];
const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } });
const imageHex = sha256(config);
const expect: ArchiveExpectation = { imageId: `sha256:${imageHex}`, diffIds };
const [dirA, dirB, dirC] = [hex('a'), hex('b'), hex('c')];

function manifestJson(overrides: Record<string, unknown> = {}): string {
  return JSON.stringify([{ Config: `${imageHex}.json`, RepoTags: null, Layers: [`${dirA}/layer.tar`, `${dirB}/layer.tar`], ...overrides }]);
}

/** What `docker save <id>` writes, in its order. */
function imageEntries(options: { manifest?: string; config?: string } = {}): Entry[] {
  return [
    { name: `${dirA}/`, type: '5' }, { name: `${dirA}/VERSION`, data: '1.0' }, { name: `${dirA}/json`, data: '{}' }, { name: `${dirA}/layer.tar`, data: layerA },
    { name: `${dirB}/`, type: '5' }, { name: `${dirB}/VERSION`, data: '1.0' }, { name: `${dirB}/json`, data: '{}' }, { name: `${dirB}/layer.tar`, data: layerB },
    { name: `${imageHex}.json`, data: options.config ?? config },
    { name: 'manifest.json', data: options.manifest ?? manifestJson() },
  ];
}

/** Splits into awkward chunk sizes, so that headers and data straddle chunk boundaries. */
function* chunks(data: Buffer, size: number): Generator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

interface Outcome {
  out: Buffer;
  error: FerryError | undefined;
  inspector: ArchiveInspector;
}

async function inspect(input: Buffer, options: { limit?: number; chunk?: number; expected?: ArchiveExpectation } = {}): Promise<Outcome> {
  const inspector = new ArchiveInspector(options.expected ?? expect, { limit: options.limit ?? 1024 ** 3 });
  const out: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      out.push(chunk);
      callback();
    },
  });
  let error: FerryError | undefined;
  try {
    await pipeline(Readable.from(chunks(input, options.chunk ?? 333)), inspector, sink);
  } catch (err) {
    assert.ok(err instanceof FerryError, `a typed error, got ${String(err)}`);
    error = err;
  }
  return { out: Buffer.concat(out), error, inspector };
}

/** A refusal must leave the engine with an archive that never ends. */
function assertRefused(outcome: Outcome, code: ErrorCode, pattern?: RegExp): void {
  assert.equal(outcome.error?.code, code, outcome.error?.message ?? 'no error');
  if (pattern) assert.match(outcome.error?.message ?? '', pattern);
  assert.equal(outcome.inspector.failure, outcome.error);
  const tail = outcome.out.subarray(-1024);
  assert.ok(tail.length < 1024 || !tail.every((b) => b === 0), 'the end-of-archive marker was not passed on');
}

describe('archive inspection: what passes', () => {
  it('passes a docker-save archive through, entry for entry and byte for byte', async () => {
    const input = tar(imageEntries());
    for (const chunk of [1, 333, 512, 100_000]) {
      const { out, error } = await inspect(input, { chunk });
      assert.equal(error, undefined, error?.message);
      assert.deepEqual(entriesOf(out).map((e) => [e.name, e.type, sha256(e.data)]), entriesOf(input).map((e) => [e.name, e.type, sha256(e.data)]));
      assert.ok(out.subarray(-1024).every((b) => b === 0), 'ends with the end-of-archive marker');
    }
  });

  it('accepts "./" names, trailing record padding and links between layers', async () => {
    const entries = imageEntries().map((e) => ({ ...e, name: `./${e.name}` }));
    entries.splice(8, 0, { name: `./${dirC}/`, type: '5' }, { name: `./${dirC}/layer.tar`, type: '2', linkname: `../${dirA}/layer.tar` });
    const input = Buffer.concat([tar(entries), Buffer.alloc(8192)]);
    const { out, error } = await inspect(input);
    assert.equal(error, undefined, error?.message);
    const link = entriesOf(out).find((e) => e.name === `${dirC}/layer.tar`);
    assert.equal(link?.type, '2');
    assert.equal(link?.linkname, `../${dirA}/layer.tar`);
  });

  it('writes every header anew: a PAX link path reaches the engine as the short path that was checked', async () => {
    const entries = imageEntries();
    entries.splice(8, 0, pax({ linkpath: `../${dirA}/../${dirB}/../${dirA}/layer.tar` }), { name: `${dirC}/layer.tar`, type: '2', linkname: 'ignored' });
    const { out, error } = await inspect(tar(entries));
    assert.equal(error, undefined, error?.message);
    const written = entriesOf(out);
    assert.equal(written.find((e) => e.type === 'x'), undefined, 'extension headers are consumed');
    assert.equal(written.find((e) => e.name === `${dirC}/layer.tar`)?.linkname, `../${dirA}/layer.tar`);
  });

  it('strips the names an archive carries: RepoTags, repositories and OCI index annotations', async () => {
    const entries = imageEntries({ manifest: manifestJson({ RepoTags: ['postgres:16'] }) });
    entries.push(
      { name: 'repositories', data: JSON.stringify({ postgres: { 16: imageHex } }) },
      { name: 'index.json', data: JSON.stringify({ schemaVersion: 2, manifests: [{ digest: 'sha256:00', annotations: { 'io.containerd.image.name': 'docker.io/library/postgres:16', 'org.opencontainers.image.ref.name': '16', keep: 'me' } }] }) },
    );
    const { out, error, inspector } = await inspect(tar(entries));
    assert.equal(error, undefined, error?.message);
    const written = entriesOf(out);
    assert.equal(written.find((e) => e.name === 'repositories'), undefined, 'repositories is dropped');
    const manifest = JSON.parse(written.find((e) => e.name === 'manifest.json')?.data.toString() ?? 'null') as { RepoTags: unknown; Config: string }[];
    assert.equal(manifest[0]?.RepoTags, null);
    assert.equal(manifest[0]?.Config, `${imageHex}.json`);
    const index = JSON.parse(written.find((e) => e.name === 'index.json')?.data.toString() ?? 'null') as { manifests: { annotations: Record<string, string> }[] };
    assert.deepEqual(index.manifests[0]?.annotations, { keep: 'me' });
    assert.deepEqual(inspector.stats.strippedTags.sort(), ['16', 'docker.io/library/postgres:16', 'postgres:16', 'postgres:16'].sort());
  });
});

describe('archive inspection: entries that could escape', () => {
  const cases: [string, Entry[], RegExp][] = [
    ['an absolute path', [{ name: '/etc/cron.d/evil', data: 'x' }], /absolute path/],
    ['a ".." component', [{ name: '../../etc/passwd', data: 'x' }], /"\.\." path component/],
    ['a ".." inside a layer directory', [{ name: `${dirA}/../../evil`, data: 'x' }], /"\.\."/],
    ['a symlink that leaves the archive', [{ name: `${dirC}/layer.tar`, type: '2', linkname: '../../../etc/shadow' }], /leaves the archive/],
    ['a symlink to an absolute path', [{ name: `${dirC}/layer.tar`, type: '2', linkname: '/etc/shadow' }], /absolute path/],
    ['a symlink to something that is not a layer', [{ name: `${dirC}/layer.tar`, type: '2', linkname: '../manifest.json' }], /other than a layer/],
    ['a symlink anywhere else', [{ name: 'evil', type: '2', linkname: 'manifest.json' }], /link outside/],
    ['a hard link that leaves the archive', [{ name: `${dirC}/layer.tar`, type: '1', linkname: '../etc/passwd' }], /leaves the archive/],
    ['a character device', [{ name: `${dirA}/json`, type: '3' }], /device/],
    ['a block device', [{ name: 'sda', type: '4' }], /device/],
    ['a FIFO', [{ name: 'fifo', type: '6' }], /FIFO/],
    ['a GNU sparse file', [{ name: `${dirA}/layer.tar`, type: 'S', data: 'x' }], /unsupported type/],
    ['a file outside the docker-archive layout', [{ name: 'run.sh', data: '#!/bin/sh' }], /not part of a docker-save archive/],
    ['a nested directory', [{ name: `${dirA}/sub/`, type: '5' }], /not part of a docker-save archive/],
    ['a PAX path that renames a harmless-looking entry', [pax({ path: '../../root/.ssh/authorized_keys' }), { name: `${dirA}/VERSION`, data: 'x' }], /"\.\."/],
    ['a GNU long name that escapes', [{ name: '././@LongLink', type: 'L', data: `../${'a'.repeat(120)}\0` }, { name: `${dirA}/VERSION`, data: 'x' }], /"\.\."/],
    ['a PAX sparse map', [pax({ 'GNU.sparse.map': '0,10' }), { name: `${dirA}/layer.tar`, data: 'x' }], /sparse/],
    ['a second manifest.json replacing the checked one', [{ name: 'manifest.json', data: manifestJson() }], /appears twice/],
  ];
  for (const [what, evil, pattern] of cases) {
    it(`refuses ${what}`, async () => {
      // Before the image's own manifest.json, as an attacker would place it, so its refusal is proven.
      const entries = imageEntries();
      const outcome = await inspect(tar([...entries.slice(0, 9), ...evil, ...entries.slice(9)]));
      assertRefused(outcome, 'FERRY_ERR_UNSAFE_ARCHIVE', pattern);
    });
  }
});

describe('archive inspection: decompression bombs', () => {
  it('refuses at the header an entry that declares more than the limit, before its data arrives', async () => {
    const limit = 64 * 1024;
    // Only the header is sent: the refusal cannot have waited for the data.
    const input = tar([{ name: `${dirA}/`, type: '5' }, { name: `${dirA}/layer.tar`, declaredSize: 10 * 1024 ** 3 }], { end: false });
    const outcome = await inspect(input, { limit });
    assertRefused(outcome, 'FERRY_ERR_ARCHIVE_TOO_LARGE');
    assert.equal(outcome.error?.details?.limit, limit);
  });

  it('refuses a stream that runs past the limit, trailing bytes included', async () => {
    const input = Buffer.concat([tar(imageEntries()), Buffer.alloc(256 * 1024)]);
    const outcome = await inspect(input, { limit: input.length - 1 });
    assert.equal(outcome.error?.code, 'FERRY_ERR_ARCHIVE_TOO_LARGE');
  });

  it('limits an archive to 200× its compressed size, at least 1 GiB, at most 64 GiB', () => {
    assert.equal(unpackLimit(1000), UNPACK_FLOOR);
    assert.equal(unpackLimit(100 * 1024 ** 2), 200 * 100 * 1024 ** 2);
    assert.equal(unpackLimit(10 * 1024 ** 3), UNPACK_MAX);
  });
});

describe('archive inspection: what is not a docker-save archive', () => {
  it('refuses an empty stream', async () => {
    assertRefused(await inspect(Buffer.alloc(0)), 'FERRY_ERR_BAD_ARCHIVE', /empty/);
  });

  it('refuses a truncated archive, at an entry boundary or inside one', async () => {
    const whole = tar(imageEntries());
    const cut = whole.length - 1024 - 512 - 512; // just before manifest.json: no end marker
    assertRefused(await inspect(whole.subarray(0, cut)), 'FERRY_ERR_BAD_ARCHIVE', /truncated/);
    assertRefused(await inspect(whole.subarray(0, 5000)), 'FERRY_ERR_BAD_ARCHIVE', /truncated/);
  });

  it('refuses bytes that are not tar', async () => {
    assertRefused(await inspect(Buffer.from('{"not":"a tar"}'.repeat(100))), 'FERRY_ERR_BAD_ARCHIVE', /checksum/);
  });

  it('refuses an archive without manifest.json', async () => {
    assertRefused(await inspect(tar(imageEntries().slice(0, 9))), 'FERRY_ERR_BAD_ARCHIVE', /no manifest\.json/);
  });

  it('refuses a manifest.json that is not JSON', async () => {
    assertRefused(await inspect(tar(imageEntries({ manifest: '[{"Config":' }))), 'FERRY_ERR_BAD_ARCHIVE', /not JSON/);
  });

  it('refuses a link to a layer the archive does not hold', async () => {
    const entries = imageEntries();
    entries.splice(8, 0, { name: `${dirC}/layer.tar`, type: '2', linkname: `../${hex('absent')}/layer.tar` });
    assertRefused(await inspect(tar(entries)), 'FERRY_ERR_BAD_ARCHIVE', /does not hold/);
  });

  it('refuses an archive whose manifest names a layer it does not hold', async () => {
    const entries = imageEntries().filter((e) => !e.name.startsWith(dirB));
    assertRefused(await inspect(tar(entries)), 'FERRY_ERR_BAD_ARCHIVE', /missing/);
  });
});

describe('archive inspection: an archive of another image', () => {
  it('refuses two images where one is signed', async () => {
    const two = JSON.stringify([JSON.parse(manifestJson()) as unknown[], JSON.parse(manifestJson()) as unknown[]].flat());
    assertRefused(await inspect(tar(imageEntries({ manifest: two }))), 'FERRY_ERR_IMAGE_MISMATCH', /2 images/);
  });

  it('refuses an archive of another image id', async () => {
    const other: ArchiveExpectation = { imageId: `sha256:${hex('other')}`, diffIds };
    assertRefused(await inspect(tar(imageEntries()), { expected: other }), 'FERRY_ERR_IMAGE_MISMATCH', /config of another image/);
  });

  it('refuses a config whose bytes do not hash to the id it is named by', async () => {
    const tampered = config.replace('"amd64"', '"arm64"');
    assertRefused(await inspect(tar(imageEntries({ config: tampered }))), 'FERRY_ERR_IMAGE_MISMATCH', /SHA-256/);
  });

  it('refuses layers other than the signed diff ids', async () => {
    const swapped: ArchiveExpectation = { imageId: expect.imageId, diffIds: [diffIds[1] ?? '', diffIds[0] ?? ''] };
    assertRefused(await inspect(tar(imageEntries()), { expected: swapped }), 'FERRY_ERR_IMAGE_MISMATCH', /other layers/);
  });

  it('refuses a manifest.json whose Config is another entry', async () => {
    assertRefused(await inspect(tar(imageEntries({ manifest: manifestJson({ Config: `${dirA}/json` }) }))), 'FERRY_ERR_IMAGE_MISMATCH');
  });
});

describe('engine messages', () => {
  it('lose the engine\'s paths', () => {
    const said = 'Could not load the image: open /var/lib/docker/tmp/docker-import-1234567/repositories: no such file or directory';
    const clean = sanitizeEngineMessage(said);
    assert.doesNotMatch(clean, /docker-import|\/var\/lib/);
    assert.match(clean, /open <path>: no such file/);
    assert.equal(sanitizeEngineMessage('unexpected EOF'), 'unexpected EOF');
  });
});
