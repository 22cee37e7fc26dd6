import { createHash } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import { access, open, readFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream';
import { createInterface } from 'node:readline';
import { createGunzip } from 'node:zlib';

/** What a layer's bytes are cut into on their way out: large enough that per-chunk costs vanish. */
const CHUNK = 1024 * 1024;
const HEX = /^[0-9a-f]{64}$/;

/**
 * The engine's files do not describe the image as expected (a layer without its tar-split, a file
 * shorter than recorded, bytes whose SHA-256 is not the diff id): the caller uses `docker save`.
 */
export class LayerStoreUnreadable extends Error {
  override readonly name = 'LayerStoreUnreadable';
}

/** One layer ready to be read: its diff id, where it lives, and the exact size of its tar. */
export interface StoredLayer {
  diffId: string;
  chainId: string;
  size: number;
  /** `<data root>/image/overlay2/layerdb/sha256/<chain>` */
  metadataDir: string;
  /** The overlay2 `diff` directory the files come from. */
  filesDir: string;
}

/** One tar-split record (github.com/vbatts/tar-split storage.Entry): raw tar bytes, or a file's content. */
interface SplitEntry {
  type: number;
  name?: string;
  name_raw?: string;
  size?: number;
  payload?: string | null;
}

/**
 * Reads images straight from a local legacy engine's overlay2 layer store, the way the engine
 * itself answers `docker save`: the layer tar is reassembled from its tar-split record (headers
 * and padding, kept when the layer was registered) and the files of the layer's `diff` directory
 * (moby layer/layer_store.go assembleTarTo). Unlike `docker save`, which first writes every layer
 * of the image to a temporary directory, this reads only the layers asked for and streams from
 * the first byte.
 *
 * Nothing read here is trusted: the config must hash to the image id and each layer to its diff
 * id, else the read fails with {@link LayerStoreUnreadable}. Only root (or whoever may read the
 * data root) gets this far; everyone else gets `undefined` from {@link LayerStore.open}.
 */
export class LayerStore {
  readonly root: string;

  private constructor(root: string) {
    this.root = root;
  }

  /** The store under `root` if it is an overlay2 legacy store this process may read. */
  static async open(root: string, driver: string): Promise<LayerStore | undefined> {
    if (driver !== 'overlay2') return undefined;
    try {
      await access(join(root, 'image', 'overlay2', 'layerdb', 'sha256'), constants.R_OK | constants.X_OK);
      await access(join(root, 'overlay2'), constants.R_OK | constants.X_OK);
      return new LayerStore(root);
    } catch {
      return undefined;
    }
  }

  /** The image config, checked against its id (`sha256:<hex>`, the config's SHA-256). */
  async config(imageId: string): Promise<Buffer> {
    const hex = hexOf(imageId);
    const bytes = await readFile(join(this.root, 'image', 'overlay2', 'imagedb', 'content', 'sha256', hex)).catch((err: unknown) => {
      throw new LayerStoreUnreadable(`the image config ${imageId} is not readable: ${(err as Error).message}`);
    });
    if (createHash('sha256').update(bytes).digest('hex') !== hex) throw new LayerStoreUnreadable(`the image config does not hash to ${imageId}`);
    return bytes;
  }

  /**
   * Finds one layer and works out its tar's size from the tar-split record, so the archive that
   * carries it can write its header before the first byte.
   */
  async layer(diffId: string, chainId: string): Promise<StoredLayer> {
    const metadataDir = join(this.root, 'image', 'overlay2', 'layerdb', 'sha256', hexOf(chainId));
    let cacheId: string;
    try {
      cacheId = (await readFile(join(metadataDir, 'cache-id'), 'utf8')).trim();
      const recorded = (await readFile(join(metadataDir, 'diff'), 'utf8')).trim();
      if (recorded !== diffId) throw new Error(`it records diff id ${recorded}`);
    } catch (err) {
      throw new LayerStoreUnreadable(`layer ${chainId} is not in the layer store: ${(err as Error).message}`);
    }
    if (!/^[0-9a-zA-Z_-]+$/.test(cacheId)) throw new LayerStoreUnreadable(`layer ${chainId} has an unexpected cache id`);
    const filesDir = join(this.root, 'overlay2', cacheId, 'diff');
    let size = 0;
    for await (const entry of splitEntries(metadataDir)) {
      size += entry.type === 2 ? rawLength(entry) : (entry.size ?? 0);
    }
    return { diffId, chainId, size, metadataDir, filesDir };
  }

  /**
   * The layer's tar, byte for byte what `docker save` holds, in chunks of about 1 MiB. Throws
   * {@link LayerStoreUnreadable} once the bytes do not hash to the diff id, which is before the
   * end of the layer is yielded. Each chunk is a buffer of its own, which consumers may keep;
   * with `reuse`, every chunk is the same buffer, read into again once the next chunk is asked
   * for: for a consumer done with each chunk by then, it spares a gigabyte's worth of buffers for
   * the garbage collector to free.
   */
  async *read(layer: StoredLayer, options: { reuse?: boolean } = {}): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let chunk = Buffer.allocUnsafeSlow(CHUNK);
    let fill = 0;
    let total = 0;
    const full = (): Buffer => {
      const out = chunk.subarray(0, fill);
      hash.update(out);
      total += fill;
      if (!options.reuse) chunk = Buffer.allocUnsafeSlow(CHUNK);
      fill = 0;
      return out;
    };
    for await (const entry of splitEntries(layer.metadataDir)) {
      if (entry.type === 2) {
        const raw = Buffer.from(entry.payload ?? '', 'base64');
        for (let at = 0; at < raw.length;) {
          const take = Math.min(raw.length - at, CHUNK - fill);
          raw.copy(chunk, fill, at, at + take);
          fill += take;
          at += take;
          if (fill === CHUNK) yield full();
        }
        continue;
      }
      let left = entry.size ?? 0;
      if (left === 0) continue;
      const file = await openEntry(layer, entry);
      try {
        while (left > 0) {
          const { bytesRead } = await file.read(chunk, fill, Math.min(left, CHUNK - fill), null);
          if (bytesRead === 0) throw new LayerStoreUnreadable(`a file of layer ${layer.diffId} is shorter than its tar-split says`);
          fill += bytesRead;
          left -= bytesRead;
          if (fill === CHUNK) yield full();
        }
      } finally {
        await file.close();
      }
    }
    const last = fill > 0 ? full() : undefined;
    if (total !== layer.size || `sha256:${hash.digest('hex')}` !== layer.diffId) {
      throw new LayerStoreUnreadable(`layer ${layer.diffId} read from the layer store does not match its diff id`);
    }
    if (last) yield last;
  }
}

async function* splitEntries(metadataDir: string): AsyncGenerator<SplitEntry> {
  const input = createReadStream(join(metadataDir, 'tar-split.json.gz'));
  // pipeline carries a read error on to the lines, where the loop below sees it.
  const lines = createInterface({ input: pipeline(input, createGunzip(), () => undefined), crlfDelay: Infinity });
  try {
    for await (const line of lines) {
      if (line === '') continue;
      const entry = JSON.parse(line) as SplitEntry;
      if (entry.type !== 1 && entry.type !== 2) throw new Error(`unknown entry type ${String(entry.type)}`);
      yield entry;
    }
  } catch (err) {
    throw err instanceof LayerStoreUnreadable ? err : new LayerStoreUnreadable(`the tar-split of ${metadataDir} is not readable: ${(err as Error).message}`);
  } finally {
    lines.close();
    input.destroy();
  }
}

/** The decoded length of a base64 payload, without decoding it. */
function rawLength(entry: SplitEntry): number {
  const payload = entry.payload ?? '';
  const padding = payload.endsWith('==') ? 2 : payload.endsWith('=') ? 1 : 0;
  return (payload.length / 4) * 3 - padding;
}

/**
 * Opens a file of the layer's directory by its tar name. The name comes from the engine's own
 * record, but it still may not climb out of the directory, and the last component may not be a
 * symlink: a layer's file with content is a regular file.
 */
async function openEntry(layer: StoredLayer, entry: SplitEntry): Promise<FileHandle> {
  const name = entry.name ?? Buffer.from(entry.name_raw ?? '', 'base64').toString('latin1');
  const parts = name.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.length === 0 || parts.includes('..')) throw new LayerStoreUnreadable(`layer ${layer.diffId} names a file outside itself`);
  const path = entry.name === undefined
    ? Buffer.concat([Buffer.from(`${layer.filesDir}/`), Buffer.from(parts.join('/'), 'latin1')])
    : join(layer.filesDir, ...parts);
  try {
    return await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    throw new LayerStoreUnreadable(`a file of layer ${layer.diffId} is not readable: ${(err as Error).message}`);
  }
}

function hexOf(digest: string): string {
  const hex = digest.replace(/^sha256:/, '');
  if (!HEX.test(hex)) throw new LayerStoreUnreadable(`${digest} is not a sha256 digest`);
  return hex;
}
