/**
 * A bundle is hostile input until checked: hand-made tars (no tar tool would write most of them)
 * against scanBundle and openBundle — names outside the layout, escaping paths, links, devices,
 * duplicates, lies about sizes, data hidden after the end — and well-formed bundles whose JSON,
 * signature or blobs do not hold together.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import { documentMessage, generateKeyPair, publicKeyText, signBytes } from '@ferry/auth';
import { FileSource, dockerArchive, openBundle, scanBundle } from '@ferry/bundle';
import { FerryError, type ErrorCode } from '@ferry/protocol';
import { tarHeader } from '../helpers/tar.ts';

interface Entry { name: string; type?: string; data?: Buffer | string; linkname?: string; declaredSize?: number }

function tar(entries: Entry[], { end = true, trailer = Buffer.alloc(0) } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    const data = Buffer.from(entry.data ?? '');
    parts.push(tarHeader(entry.name, entry.declaredSize ?? data.length, entry.type ?? '0', entry.linkname ?? ''), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  if (end) parts.push(Buffer.alloc(1024));
  parts.push(trailer);
  return Buffer.concat(parts);
}

const sha = (data: Buffer | string): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

let dir: string;
let count = 0;
async function written(bytes: Buffer): Promise<string> {
  const path = join(dir, `b-${++count}.ferry`);
  await writeFile(path, bytes);
  return path;
}

async function scanError(bytes: Buffer): Promise<FerryError> {
  const source = await FileSource.open([await written(bytes)]);
  try {
    await scanBundle(source);
  } catch (err) {
    assert.ok(err instanceof FerryError, String(err));
    return err;
  } finally {
    await source.close();
  }
  assert.fail('the archive was accepted');
}

async function openError(bytes: Buffer): Promise<FerryError> {
  try {
    const bundle = await openBundle([await written(bytes)]);
    await bundle.close();
  } catch (err) {
    assert.ok(err instanceof FerryError, String(err));
    return err;
  }
  assert.fail('the bundle was accepted');
}

const layout: Entry = { name: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' };

before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-bundle-unit-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

describe('scanBundle refuses', () => {
  const cases: Array<[string, Buffer, ErrorCode, RegExp]> = [
    ['an absolute path', tar([layout, { name: '/etc/passwd', data: 'x' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /absolute path/],
    ['a ".." component', tar([{ name: 'blobs/../../evil', data: 'x' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /"\.\."/],
    ['a symbolic link', tar([{ name: 'index.json', type: '2', linkname: '/etc/shadow' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /a link/],
    ['a hard link', tar([{ name: 'index.json', type: '1', linkname: 'oci-layout' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /a link/],
    ['a character device', tar([{ name: 'oci-layout', type: '3' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /device/],
    ['a block device', tar([{ name: 'oci-layout', type: '4' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /device/],
    ['a FIFO', tar([{ name: 'oci-layout', type: '6' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /FIFO/],
    ['a PAX header (it could rename what follows)', tar([{ name: 'PaxHeader', type: 'x', data: '20 path=/etc/passwd\n' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /type "x"/],
    ['a GNU long name', tar([{ name: '././@LongLink', type: 'L', data: 'x'.repeat(200) }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /type "L"/],
    ['a name outside the layout', tar([layout, { name: 'manifest.json', data: '[]' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /outside the bundle layout/],
    ['a blob not named by a digest', tar([{ name: 'blobs/sha256/abc', data: 'x' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /outside the bundle layout/],
    ['a directory outside the layout', tar([{ name: 'etc/', type: '5' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /directory outside/],
    ['the same name twice', tar([layout, layout]), 'FERRY_ERR_UNSAFE_ARCHIVE', /twice/],
    ['the same name twice, spelled with "./"', tar([layout, { ...layout, name: './oci-layout' }]), 'FERRY_ERR_UNSAFE_ARCHIVE', /twice/],
    ['an entry whose size runs past the file', tar([{ ...layout, declaredSize: 10 * 1024 * 1024 }]), 'FERRY_ERR_BUNDLE_MALFORMED', /past the end/],
    ['an archive without its end', tar([layout], { end: false }), 'FERRY_ERR_BUNDLE_MALFORMED', /end-of-archive/],
    ['data after the end', tar([layout], { trailer: Buffer.from('hidden') }), 'FERRY_ERR_BUNDLE_MALFORMED', /follows the end/],
    ['a broken header checksum', (() => { const b = tar([layout]); b[10] = 0x41; return b; })(), 'FERRY_ERR_BUNDLE_MALFORMED', /checksum/],
    ['an empty file', Buffer.alloc(0), 'FERRY_ERR_BUNDLE_MALFORMED', /empty/],
  ];
  for (const [what, bytes, code, message] of cases) {
    it(what, async () => {
      const err = await scanError(bytes);
      assert.equal(err.code, code);
      assert.match(err.message, message);
    });
  }

  it('and lets the layout through, with padding zeros after the end', async () => {
    const source = await FileSource.open([await written(tar([layout, { name: 'blobs/', type: '5' }, { name: `blobs/sha256/${'a'.repeat(64)}`, data: 'x' }], { trailer: Buffer.alloc(8192) }))]);
    try {
      const entries = await scanBundle(source);
      assert.deepEqual([...entries.keys()], ['oci-layout', `blobs/sha256/${'a'.repeat(64)}`]);
    } finally {
      await source.close();
    }
  });
});

describe('openBundle refuses a bundle that does not hold together', () => {
  const { privateKey } = generateKeyPair();
  const other = generateKeyPair().privateKey;
  const plain = Buffer.from('the layer tar');
  const config = Buffer.from(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [sha(plain)] } }));
  const layer = zstdCompressSync(plain);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', digest: sha(layer), size: layer.length }],
  }));
  const index = Buffer.from(JSON.stringify({
    schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(manifest), size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'web' } }],
  }));
  const release = (indexBytes: Buffer = index, signer = privateKey): Buffer => Buffer.from(JSON.stringify({
    schema: 'ferry.bundle/v1', index: { digest: sha(indexBytes), size: indexBytes.length },
    release: {
      id: 'rel-20260101T000000Z-0123abcd', createdAt: '2026-01-01T00:00:00.000Z', project: 'p', phases: [{ name: 'phase-1', services: ['web'] }],
      services: [{ name: 'web', phase: 0, dependsOn: [], image: { ref: 'web:1', id: sha(config), manifest: sha(manifest), layers: [{ digest: sha(layer), blobSize: layer.length, diffId: sha(plain), size: plain.length }] }, spec: { name: 'web' } }],
    },
    provenance: { createdAt: '2026-01-01T00:00:00.000Z', ferryVersion: '0.1.0', keyId: 'vendor', publicKey: publicKeyText(signer), fingerprint: 'SHA256:x' },
  }));
  const signature = (releaseBytes: Buffer, key = privateKey, named = privateKey): string => JSON.stringify({
    scheme: 'FERRY-SIGNED-V1', type: 'ferry.bundle/v1', keyId: 'vendor', publicKey: publicKeyText(named),
    signature: Buffer.from(signBytes(key, documentMessage('ferry.bundle/v1', releaseBytes)), 'hex').toString('base64'),
  });
  const blob = (content: Buffer): Entry => ({ name: `blobs/sha256/${sha(content).slice(7)}`, data: content });
  const bundle = (parts: { index?: Buffer; release?: Buffer; signature?: string; blobs?: Entry[] } = {}): Buffer => {
    const releaseBytes = parts.release ?? release(parts.index ?? index);
    return tar([
      layout, ...(parts.blobs ?? [blob(layer), blob(config), blob(manifest)]), { name: 'index.json', data: parts.index ?? index },
      { name: 'ferry/release.json', data: releaseBytes }, { name: 'ferry/signature', data: parts.signature ?? signature(releaseBytes) },
    ]);
  };

  it('accepts the well-formed one', async () => {
    const opened = await openBundle([await written(bundle())]);
    assert.equal(opened.document.release.services[0]?.name, 'web');
    assert.deepEqual(opened.blobs.count, 3);
    await opened.close();
  });

  it('a signature by another key than the one it names', async () => {
    const releaseBytes = release();
    assert.equal((await openError(bundle({ release: releaseBytes, signature: signature(releaseBytes, other) }))).code, 'FERRY_ERR_BUNDLE_SIGNATURE');
  });

  it('a signature that names another key than release.json', async () => {
    const releaseBytes = release();
    assert.equal((await openError(bundle({ release: releaseBytes, signature: signature(releaseBytes, other, other) }))).code, 'FERRY_ERR_BUNDLE_SIGNATURE');
  });

  it('a blob whose bytes are not its name', async () => {
    const tampered = Buffer.from(layer);
    tampered[0] = 0;
    assert.equal((await openError(bundle({ blobs: [{ name: `blobs/sha256/${sha(layer).slice(7)}`, data: tampered }, blob(config), blob(manifest)] }))).code, 'FERRY_ERR_BUNDLE_DIGEST');
  });

  it('a blob no image names (something smuggled in)', async () => {
    const err = await openError(bundle({ blobs: [blob(layer), blob(config), blob(manifest), blob(Buffer.from('extra'))] }));
    assert.equal(err.code, 'FERRY_ERR_BUNDLE_MALFORMED');
    assert.match(err.message, /belongs to no image/);
  });

  it('a layer missing', async () => {
    assert.equal((await openError(bundle({ blobs: [blob(config), blob(manifest)] }))).code, 'FERRY_ERR_BUNDLE_MALFORMED');
  });

  it('an index.json other than the one release.json signs', async () => {
    const releaseBytes = release();
    const otherIndex = Buffer.from(index.toString().replace('"web"', '"api"'));
    assert.equal((await openError(bundle({ index: otherIndex, release: releaseBytes }))).code, 'FERRY_ERR_BUNDLE_DIGEST');
  });

  it('an index.json that names another service than release.json', async () => {
    const otherIndex = Buffer.from(index.toString().replace('"web"', '"api"'));
    assert.equal((await openError(bundle({ index: otherIndex }))).code, 'FERRY_ERR_BUNDLE_MALFORMED');
  });

  it('a signature file that is not one', async () => {
    assert.equal((await openError(bundle({ signature: 'not json' }))).code, 'FERRY_ERR_BUNDLE_MALFORMED');
  });

  it('a bundle without release.json', async () => {
    assert.equal((await openError(tar([layout, { name: 'index.json', data: index }]))).code, 'FERRY_ERR_BUNDLE_MALFORMED');
  });
});

describe('dockerArchive', () => {
  it('refuses a layer that does not decompress to its signed diff id, before the end of the archive', async () => {
    const plain = Buffer.from('what the layer really holds');
    const layer = zstdCompressSync(plain);
    const bundle = {
      source: await FileSource.open([await written(Buffer.concat([layer]))]),
      entries: new Map([[`blobs/sha256/${sha(layer).slice(7)}`, { name: '', offset: 0, size: layer.length }]]),
      configs: new Map([[sha('config'), Buffer.from('config')]]),
      deferred: new Set(),
    } as unknown as Parameters<typeof dockerArchive>[0];
    const image = { ref: 'web:1', id: sha('config'), manifest: sha('m'), layers: [{ digest: sha(layer), blobSize: layer.length, diffId: sha('something else!!!!!!!!!!!!!'), size: plain.length }] };
    const chunks: Buffer[] = [];
    await assert.rejects(async () => { for await (const chunk of dockerArchive(bundle, image)) chunks.push(chunk as Buffer); }, (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_BUNDLE_DIGEST');
    // No end-of-archive marker reached the engine: the last 1024 bytes written are not all zeros.
    const out = Buffer.concat(chunks);
    assert.ok(out.length < 1024 || !out.subarray(-1024).every((b) => b === 0));
    await bundle.source.close();
  });

  it('refuses a layer blob whose SHA-256 was left for the load and is not its name, before the end of the archive', async () => {
    const plain = Buffer.from('what the layer really holds');
    const layer = zstdCompressSync(plain);
    // Its name and signed digest are of other bytes; it still decompresses to the signed diff id.
    const name = `blobs/sha256/${sha('other bytes').slice(7)}`;
    const bundle = {
      source: await FileSource.open([await written(layer)]),
      entries: new Map([[name, { name, offset: 0, size: layer.length }]]),
      configs: new Map([[sha('config'), Buffer.from('config')]]),
      deferred: new Set([name]),
    } as unknown as Parameters<typeof dockerArchive>[0];
    const image = { ref: 'web:1', id: sha('config'), manifest: sha('m'), layers: [{ digest: sha('other bytes'), blobSize: layer.length, diffId: sha(plain), size: plain.length }] };
    const chunks: Buffer[] = [];
    await assert.rejects(async () => { for await (const chunk of dockerArchive(bundle, image)) chunks.push(chunk as Buffer); }, (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_BUNDLE_DIGEST' && (err.details as { entry?: string }).entry === name);
    const out = Buffer.concat(chunks);
    assert.ok(out.length < 1024 || !out.subarray(-1024).every((b) => b === 0));
    assert.ok(bundle.deferred.has(name), 'a blob that failed stays unchecked');
    await bundle.source.close();
  });
});
