import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fsyncPath } from '@ferry/durable';
import busboy from 'busboy';
import { DigestTap } from '@ferry/integrity';
import { FerryError, MANIFEST_MAX_BYTES, type Manifest } from '@ferry/protocol';
import { SpooledPackage } from '../load/package.ts';

export interface ReceiveOptions {
  /** The one-shot spool, FERRY_DATA_DIR/ingest. */
  spoolDir: string;
  /** Upper bound on any package, whatever its manifest declares. */
  maxPackageBytes: number;
  /**
   * The admission of the manifest part's bytes (upload/admission.ts), before any package byte is
   * spooled; a throw refuses the upload, and the package part is then read and dropped.
   */
  admit: (bytes: Buffer) => Promise<Manifest>;
  /** A refusal after the manifest was admitted: publishes the one rejection event, returns the error. */
  rejected: (manifest: Manifest, error: FerryError) => FerryError;
}

/**
 * Takes a one-shot upload: the `manifest` part, admitted (signed digest, grant, disk, policy), then
 * the `package` part, hashed while it is spooled and compared with the manifest before anyone may
 * decompress it. On any failure the spool file is gone and the error is typed.
 */
export async function receiveMultipart(req: IncomingMessage, options: ReceiveOptions): Promise<SpooledPackage> {
  const started = performance.now();
  const type = req.headers['content-type'] ?? '';
  if (!/^multipart\/form-data;/i.test(type)) {
    throw new FerryError('FERRY_ERR_UNSUPPORTED_MEDIA_TYPE', { message: 'Expected multipart/form-data with a manifest part then a package part' });
  }
  let parser: busboy.Busboy;
  try {
    parser = busboy({
      headers: req.headers,
      limits: { fields: 1, files: 2, fieldSize: MANIFEST_MAX_BYTES, fileSize: options.maxPackageBytes + 1, headerPairs: 20 },
    });
  } catch (err) {
    throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'Malformed multipart header', cause: err });
  }

  const spoolPath = join(options.spoolDir, `${randomUUID()}.part`);
  let manifest: Manifest | undefined;
  let received: { bytes: number; digest: string } | undefined;
  let failure: FerryError | undefined;
  let manifestReady: Promise<void> | undefined;
  let packageWrite: Promise<void> | undefined;
  const fail = (err: FerryError): void => {
    failure ??= err;
  };
  // Settles once a package part longer than its manifest declares has been refused: that is
  // answered at once, not after the rest of the body, which is parsed and dropped meanwhile.
  let overran!: () => void;
  const tooLong = new Promise<'too long'>((resolve) => {
    overran = () => resolve('too long');
  });

  const acceptManifest = async (bytes: Buffer): Promise<void> => {
    try {
      manifest = await options.admit(bytes);
    } catch (err) {
      // Refused: the manifest stays unknown, so the package part is drained, not spooled.
      fail(asFerryError(err));
    }
  };

  // A limit exceeded means parts the protocol does not have; silently dropping them would hide it.
  // (busboy's partsLimit fires on reaching its count, not on passing it, so parts is capped by these.)
  for (const limit of ['filesLimit', 'fieldsLimit'] as const) {
    parser.on(limit, () => fail(new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'Only a manifest part and a package part may be sent' })));
  }

  parser.on('field', (name, value, info) => {
    if (name === 'package') return fail(new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'The package part must be a file part (with a filename)' }));
    if (name !== 'manifest' || manifestReady !== undefined) return fail(new FerryError('FERRY_ERR_BAD_REQUEST', { message: `Unexpected field "${name}"` }));
    if (info.valueTruncated) return fail(new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: `Manifest exceeds ${MANIFEST_MAX_BYTES} bytes` }));
    manifestReady = acceptManifest(Buffer.from(value, 'utf8'));
  });

  parser.on('file', (name, stream) => {
    // A form that ends inside this part fails the part's stream at once, maybe before anything
    // reads it (the package waits for its manifest): an unheard 'error' would end the process.
    stream.on('error', (err: unknown) => fail(asFerryError(err)));
    if (name === 'manifest' && manifestReady === undefined) {
      // curl -F manifest=@file.json sends the manifest as a file part; take it the same way.
      manifestReady = collect(stream, MANIFEST_MAX_BYTES).then(acceptManifest, (err: unknown) => fail(asFerryError(err)));
      return;
    }
    if (name !== 'package' || packageWrite !== undefined) {
      fail(new FerryError('FERRY_ERR_BAD_REQUEST', { message: `Unexpected part "${name}"` }));
      stream.resume();
      return;
    }
    // The manifest may still be read or admitted; the package waits for it, paused.
    packageWrite = (manifestReady ?? Promise.resolve()).then(async () => {
      if (failure !== undefined || manifest === undefined) {
        fail(new FerryError('FERRY_ERR_BAD_MANIFEST', { message: 'The manifest part must come before the package part' }));
        stream.resume();
        return;
      }
      const tap = new DigestTap();
      try {
        await pipeline(stream, limitBytes(manifest.package.size), tap, createWriteStream(spoolPath, { flags: 'wx' }));
        // The package is acknowledged only once it is on disk, not in the page cache.
        await fsyncPath(spoolPath);
        received = { bytes: tap.bytes, digest: tap.digest() };
      } catch (err) {
        stream.resume();
        const error = asFerryError(err);
        fail(error);
        if (error.code === 'FERRY_ERR_SIZE_MISMATCH') overran();
      }
    });
  });

  const parsing = pipeline(req, parser);
  try {
    if (await Promise.race([parsing, tooLong]) === 'too long') {
      // The answer goes out with Connection: close; the rest of the body keeps flowing into the
      // parser (and nowhere else) while it does. A request cut meanwhile is nobody's answer.
      parsing.catch(() => undefined);
      await packageWrite;
    } else {
      await manifestReady;
      await packageWrite;
    }
  } catch (err) {
    await manifestReady;
    await packageWrite;
    fail(isFerryError(err) ? err : new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'The upload ended early or is not valid multipart', cause: err }));
  }

  try {
    if (failure) throw failure;
    if (!manifest) throw new FerryError('FERRY_ERR_BAD_MANIFEST', { message: 'No manifest part' });
    if (!received) throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'No package part' });
    if (received.bytes !== manifest.package.size) {
      throw new FerryError('FERRY_ERR_SIZE_MISMATCH', { details: { expected: manifest.package.size, received: received.bytes } });
    }
    if (received.digest !== manifest.package.digest) {
      throw new FerryError('FERRY_ERR_CHECKSUM_MISMATCH', { details: { expected: manifest.package.digest, received: received.digest } });
    }
    return new SpooledPackage({ manifest, path: spoolPath, bytes: received.bytes, receiveMs: performance.now() - started });
  } catch (err) {
    await rm(spoolPath, { force: true });
    throw manifest ? options.rejected(manifest, asFerryError(err)) : err;
  }
}

/**
 * Empties the one-shot spool at start-up: a one-shot upload lives as long as its request, so a
 * file there is what a stopped process was receiving (a kill leaves it behind), nobody's now.
 */
export async function clearSpool(spoolDir: string): Promise<number> {
  const names = await readdir(spoolDir);
  for (const name of names) await rm(join(spoolDir, name), { force: true, recursive: true });
  return names.length;
}

function isFerryError(err: unknown): err is FerryError {
  return err instanceof FerryError;
}

function asFerryError(err: unknown): FerryError {
  if (err instanceof FerryError) return err;
  return new FerryError('FERRY_ERR_BAD_REQUEST', { message: 'The package part could not be received', cause: err });
}

/** Fails the stream as soon as it carries more than `max` bytes, before they reach the disk. */
function limitBytes(max: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      seen += chunk.length;
      if (seen > max) callback(new FerryError('FERRY_ERR_SIZE_MISMATCH', { message: `Package is larger than the ${max} bytes its manifest declares` }));
      else callback(null, chunk);
    },
  });
}

async function collect(stream: Readable, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) throw new FerryError('FERRY_ERR_PAYLOAD_TOO_LARGE', { message: `Manifest exceeds ${max} bytes` });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

