/**
 * Which error a failed load reports. The engine is a stand-in here (the failure it raises midway is
 * not one a real engine can be made to raise on cue); what is under test is only the choice
 * between the decompressor's own failure and another stage's, which tears the decompressor down.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import type { ImageStore } from '@ferry/docker';
import { createLogger } from '@ferry/log';
import { FerryError, type Manifest } from '@ferry/protocol';
import { loadArchive, type LoadDeps } from '@ferry/receiver';
import { tarHeader } from '../helpers/tar.ts';

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

/** A docker-save archive of one layer of `size` random bytes, and the facts a manifest signs. */
function archive(size: number): { tar: Buffer; imageId: string; diffIds: string[] } {
  const layer = randomBytes(size);
  const diffIds = [`sha256:${sha256(layer)}`];
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } });
  const imageHex = sha256(config);
  const dir = sha256('layer');
  const entries: [string, Buffer | string, string?][] = [
    [`${dir}/`, '', '5'], [`${dir}/VERSION`, '1.0'], [`${dir}/json`, '{}'], [`${dir}/layer.tar`, layer],
    [`${imageHex}.json`, config],
    ['manifest.json', JSON.stringify([{ Config: `${imageHex}.json`, RepoTags: null, Layers: [`${dir}/layer.tar`] }])],
  ];
  const parts: Buffer[] = [];
  for (const [name, content, type] of entries) {
    const data = Buffer.from(content);
    parts.push(tarHeader(name, data.length, type ?? '0'), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return { tar: Buffer.concat(parts), imageId: `sha256:${imageHex}`, diffIds };
}

function* chunks(data: Buffer, size: number): Generator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

describe('a failed load reports the stage that failed', () => {
  it('an engine that gives up midway is reported as the engine, not as a package that does not decompress', async () => {
    const { tar, imageId, diffIds } = archive(4 * 1024 * 1024);
    const removed: string[] = [];
    // Reads a little of the archive, then drops it and fails, as an engine that refuses midway does.
    const images = {
      inspect: () => Promise.resolve(undefined),
      remove: (id: string) => { removed.push(id); return Promise.resolve(); },
      load: async (stream: Readable) => {
        for await (const chunk of stream.iterator({ destroyOnReturn: false })) { void chunk; break; }
        // The engine's connection goes first; its answer, with the reason, comes after.
        const closed = new Promise((resolve) => stream.once('close', resolve));
        stream.destroy();
        await closed;
        await new Promise((resolve) => setImmediate(resolve));
        throw new FerryError('FERRY_ERR_LOAD_FAILED', { message: 'Docker could not load the image: no space left on device' });
      },
    } as unknown as ImageStore;
    const deps = { images, packages: undefined, logger: createLogger({ level: 'silent' }) } as unknown as LoadDeps;
    const manifest = {
      deploymentId: 'load-errors', image: { id: imageId, diffIds, ref: 'app:1' }, package: { compression: 'zstd', size: tar.length },
    } as unknown as Manifest;
    const source = Readable.from(chunks(zstdCompressSync(tar), 64 * 1024));
    await assert.rejects(loadArchive(deps, manifest, source, { limit: 1024 ** 3 }), (err: unknown) => {
      assert.ok(err instanceof FerryError, String(err));
      assert.equal(err.code, 'FERRY_ERR_LOAD_FAILED', err.message);
      assert.match(err.message, /no space left on device/);
      return true;
    });
    assert.deepEqual(removed, [imageId], 'what the failed load may have made is removed');
  });

  it('a package that is not zstd is still reported as one that does not decompress', async () => {
    const { tar, imageId, diffIds } = archive(64 * 1024);
    const images = {
      inspect: () => Promise.resolve(undefined),
      remove: () => Promise.resolve(),
      load: async (stream: Readable) => { for await (const chunk of stream) void chunk; return { imageIds: [] }; },
    } as unknown as ImageStore;
    const deps = { images, packages: undefined, logger: createLogger({ level: 'silent' }) } as unknown as LoadDeps;
    const manifest = {
      deploymentId: 'load-errors-2', image: { id: imageId, diffIds, ref: 'app:1' }, package: { compression: 'zstd', size: tar.length },
    } as unknown as Manifest;
    await assert.rejects(loadArchive(deps, manifest, Readable.from(chunks(tar, 64 * 1024)), { limit: 1024 ** 3 }), (err: unknown) => {
      assert.ok(err instanceof FerryError, String(err));
      assert.equal(err.code, 'FERRY_ERR_BAD_ARCHIVE', err.message);
      assert.match(err.message, /does not decompress as zstd/);
      return true;
    });
  });
});
