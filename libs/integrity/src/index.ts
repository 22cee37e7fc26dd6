import { Blake3Hasher } from '@napi-rs/blake-hash';
import { createReadStream } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';

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

export async function digestFile(path: string): Promise<{ digest: Digest; bytes: number }> {
  const tap = new DigestTap();
  // The tap is the last stage: a pipeline ending in a Transform is drained by resuming it.
  tap.resume();
  await pipeline(createReadStream(path), tap);
  return { digest: tap.digest(), bytes: tap.bytes };
}
