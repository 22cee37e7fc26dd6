import { PassThrough, type Transform } from 'node:stream';
import zlib from 'node:zlib';
import type { Compression } from '@ferry/protocol';

/**
 * zstd comes from Node's own zlib (Node ≥ 22.15), so no native addon is needed. Level 3 is zstd's
 * default: about gzip -6's ratio at several times its speed, which is what a push wants.
 */
export function createCompressor(kind: Compression, level?: number): Transform {
  switch (kind) {
    case 'zstd':
      return zlib.createZstdCompress({
        params: { [zlib.constants.ZSTD_c_compressionLevel]: level ?? 3 },
      });
    case 'gzip':
      return zlib.createGzip({ level: level ?? 6 });
    case 'none':
      return new PassThrough();
  }
}

export function createDecompressor(kind: Compression): Transform {
  switch (kind) {
    case 'zstd':
      return zlib.createZstdDecompress();
    case 'gzip':
      return zlib.createGunzip();
    case 'none':
      return new PassThrough();
  }
}
