import { PassThrough, type Transform } from 'node:stream';
import zlib from 'node:zlib';
import type { Compression } from '@ferry/protocol';

/**
 * Output chunk size of every (de)compressor. Node's default, 16 KiB, sends the stream to the thread
 * pool and back once per 16 KiB it writes: ~640 round trips for a 10 MB layer, a third more time
 * in a warm push's packaging (bench/README.md, "Where a push's time goes").
 */
const CHUNK_BYTES = 256 * 1024;

/**
 * zstd comes from Node's own zlib (Node ≥ 22.15), so no native addon is needed. Level 3 is zstd's
 * default: about gzip -6's ratio at several times its speed, which is what a push wants.
 */
export function createCompressor(kind: Compression, level?: number): Transform {
  switch (kind) {
    case 'zstd':
      return zlib.createZstdCompress({
        chunkSize: CHUNK_BYTES,
        params: { [zlib.constants.ZSTD_c_compressionLevel]: level ?? 3 },
      });
    case 'gzip':
      return zlib.createGzip({ level: level ?? 6, chunkSize: CHUNK_BYTES });
    case 'none':
      return new PassThrough();
  }
}

export function createDecompressor(kind: Compression): Transform {
  switch (kind) {
    case 'zstd':
      return zlib.createZstdDecompress({ chunkSize: CHUNK_BYTES });
    case 'gzip':
      return zlib.createGunzip({ chunkSize: CHUNK_BYTES });
    case 'none':
      return new PassThrough();
  }
}
