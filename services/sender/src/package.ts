import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createCompressor } from '@ferry/compress';
import type { ImageStore } from '@ferry/docker';
import { DigestTap, type Digest } from '@ferry/integrity';
import { FerryError, type Compression } from '@ferry/protocol';

export interface ImageFacts {
  ref: string;
  id: string;
  diffIds: string[];
}

export interface BuiltPackage {
  image: ImageFacts;
  path: string;
  size: number;
  digest: Digest;
  compression: Compression;
  /** Bytes docker save produced, before compression. */
  rawBytes: number;
  durationMs: number;
  remove(): Promise<void>;
}

export async function inspectImage(images: ImageStore, ref: string): Promise<ImageFacts> {
  const info = await images.inspect(ref);
  if (!info) throw new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `Image ${ref} is not on the build engine (build or tag it first)`, details: { image: ref } });
  return { ref, id: info.id, diffIds: info.diffIds };
}

/**
 * docker save → compress → BLAKE3 → spool file, in one pipeline: the image never sits in memory,
 * and the digest the manifest signs exists before the first byte is sent, because it goes in the
 * request headers.
 */
export async function buildPackage(images: ImageStore, image: ImageFacts, compression: Compression, dir = tmpdir()): Promise<BuiltPackage> {
  const started = performance.now();
  const path = join(dir, `ferry-${image.id.slice(7, 19)}-${process.pid}-${Date.now()}.tar${compression === 'none' ? '' : compression === 'zstd' ? '.zst' : '.gz'}`);
  const raw = new ByteCounter();
  const packed = new DigestTap();
  try {
    await pipeline(await images.save(image.id), raw, createCompressor(compression), packed, createWriteStream(path, { flags: 'wx', mode: 0o600 }));
  } catch (err) {
    await rm(path, { force: true });
    throw err instanceof FerryError ? err : new FerryError('FERRY_ERR_DOCKER', { message: `docker save of ${image.ref} failed: ${(err as Error).message}`, cause: err });
  }
  return {
    image, path, compression,
    size: packed.bytes,
    digest: packed.digest(),
    rawBytes: raw.bytes,
    durationMs: Math.round(performance.now() - started),
    remove: () => rm(path, { force: true }),
  };
}

/** Counts what docker save produced; hashing it too would cost a second BLAKE3 for nothing. */
class ByteCounter extends Transform {
  bytes = 0;
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    callback(null, chunk);
  }
}
