import { Blake3Hasher } from '@napi-rs/blake-hash';
import { open } from 'node:fs/promises';
import { Transform, type TransformCallback } from 'node:stream';

const PREFIX = 'blake3:';

/** Digests travel as `blake3:<64 lowercase hex>` everywhere: headers, manifests, events, logs. */
export type Digest = `blake3:${string}`;

export function formatDigest(hex: string): Digest {
  return `${PREFIX}${hex}`;
}

export function isDigest(value: string): value is Digest {
  return /^blake3:[0-9a-f]{64}$/.test(value);
}

export function digestOf(data: string | Uint8Array): Digest {
  return formatDigest(new Blake3Hasher().update(data).digest('hex'));
}

/**
 * A pass-through stream that hashes and counts what flows through it, so hashing rides along
 * the copy that moves the bytes anyway instead of a second read.
 */
export class DigestTap extends Transform {
  #hasher = new Blake3Hasher();
  #bytes = 0;
  #final: Digest | undefined;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hasher.update(chunk);
    this.#bytes += chunk.length;
    callback(null, chunk);
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Valid once the stream has finished; the hasher is consumed by the first call. */
  digest(): Digest {
    this.#final ??= formatDigest(this.#hasher.digest('hex'));
    return this.#final;
  }
}

/** BLAKE3 fed piece by piece, for bytes that arrive in parts rather than as one stream. */
export class IncrementalDigest {
  #hasher = new Blake3Hasher();
  #bytes = 0;

  update(data: Uint8Array): void {
    this.#hasher.update(data);
    this.#bytes += data.length;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** The digest of everything so far; further updates continue from it. */
  digest(): Digest {
    return formatDigest(this.#hasher.digest('hex'));
  }
}

const FILE_BUFFER_BYTES = 1024 * 1024;

/**
 * BLAKE3 of a whole file through one reused buffer. A read stream allocates a fresh buffer per
 * chunk, which for a gigabyte costs tens of MiB of peak memory before the garbage collector
 * catches up; this costs one MiB.
 */
export async function digestFile(path: string): Promise<{ digest: Digest; bytes: number }> {
  const handle = await open(path, 'r');
  const buffer = Buffer.allocUnsafe(FILE_BUFFER_BYTES);
  const hasher = new Blake3Hasher();
  let bytes = 0;
  try {
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      // update() hashes synchronously, so the buffer is free again when it returns.
      hasher.update(buffer.subarray(0, bytesRead));
      bytes += bytesRead;
    }
  } finally {
    await handle.close();
  }
  return { digest: formatDigest(hasher.digest('hex')), bytes };
}
