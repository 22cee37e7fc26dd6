import type { Readable } from 'node:stream';
import { FerryError } from '@ferry/protocol';
import { statusOf, toFerryError } from './errors.ts';
import { namePath, type DockerEngine } from './engine.ts';
import { LayerStore } from './layer-store.ts';
import { readProgress, type ProgressEvent } from './progress.ts';
import { splitReference } from './reference.ts';

export interface ImageInfo {
  /** `sha256:…` content id of the image config. */
  id: string;
  /** Uncompressed layer digests, bottom first: what makes two images the same on two engines. */
  diffIds: string[];
  repoTags: string[];
  size: number;
}

export interface LoadResult {
  /** From "Loaded image ID:" lines, written for archives saved by id (no RepoTags). */
  imageIds: string[];
  /** From "Loaded image:" lines, written for archives that name their tags. */
  tags: string[];
}

export interface RemoveImageOptions {
  force?: boolean;
}

const LOADED_ID = /^Loaded image ID: (\S+)$/;
const LOADED_TAG = /^Loaded image: (\S+)$/;

/** Image operations on one engine, with Ferry's error codes. */
export class ImageStore {
  readonly #docker: DockerEngine;

  constructor(docker: DockerEngine) {
    this.#docker = docker;
  }

  #layerStore: Promise<LayerStore | undefined> | undefined;

  /**
   * The engine's layer store, when it can be read from here: the engine is reached over a unix
   * socket (so it runs on this machine), uses the legacy overlay2 store, and this process may read
   * its data root. Asked once per ImageStore; any doubt answers undefined and `docker save` is used.
   */
  async layerStore(): Promise<LayerStore | undefined> {
    this.#layerStore ??= (async () => {
      if (this.#docker.socketPath === undefined) return undefined;
      try {
        const info = await this.#docker.info();
        if (typeof info.DockerRootDir !== 'string' || typeof info.Driver !== 'string') return undefined;
        return await LayerStore.open(info.DockerRootDir, info.Driver);
      } catch {
        return undefined;
      }
    })();
    return this.#layerStore;
  }

  /** Undefined when the engine has no such image; every other failure throws. */
  async inspect(ref: string): Promise<ImageInfo | undefined> {
    try {
      const info = await this.#docker.inspectImage(ref);
      return {
        id: info.Id,
        diffIds: info.RootFS?.Layers ?? [],
        repoTags: info.RepoTags ?? [],
        size: info.Size,
      };
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `inspect image ${ref}`);
    }
  }

  /**
   * The `docker save` tar of one image. It is saved by id so that the archive carries no
   * RepoTags: loading it then tags nothing on the target, and naming stays the receiver's call.
   */
  async save(ref: string): Promise<Readable> {
    const info = await this.inspect(ref);
    if (!info) throw new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `Image ${ref} is not on the build engine`, details: { ref } });
    try {
      return await this.#docker.stream({ path: `/images/${namePath(info.id)}/get` });
    } catch (err) {
      if (statusOf(err) === 404) throw new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `Image ${ref} is not on the build engine`, cause: err, details: { ref } });
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `save image ${ref}`);
    }
  }

  /**
   * Streams an uncompressed `docker save` tar into `docker load`. The archive is piped, so memory
   * stays flat whatever the image size, and the engine's answer is read to its last line because
   * it reports failures in-band. Rejects with FERRY_ERR_LOAD_FAILED when the engine refuses the
   * archive, when the archive stream errors (the request is aborted, the stream error is the
   * cause) or when `signal` aborts. On failure the archive is destroyed so that whatever feeds it
   * stops too.
   */
  async load(archive: Readable, signal?: AbortSignal): Promise<LoadResult> {
    const controller = new AbortController();
    let inputError: { error: unknown } | undefined;
    const onInputError = (error: unknown): void => {
      inputError ??= { error };
      controller.abort(error);
    };
    const onAbort = (): void => controller.abort(signal?.reason);
    archive.on('error', onInputError);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    if (archive.errored) onInputError(archive.errored);
    try {
      controller.signal.throwIfAborted();
      const response = await this.#docker.stream({ method: 'POST', path: '/images/load', query: { quiet: true }, body: archive, signal: controller.signal });
      return await collectLoadResult(readProgress(response));
    } catch (err) {
      archive.destroy();
      if (inputError) {
        throw new FerryError('FERRY_ERR_LOAD_FAILED', {
          message: `The image archive could not be read: ${messageOf(inputError.error)}`,
          cause: inputError.error,
        });
      }
      if (signal?.aborted) throw new FerryError('FERRY_ERR_LOAD_FAILED', { message: 'Loading the image was aborted', cause: signal.reason });
      throw toFerryError(err, 'FERRY_ERR_LOAD_FAILED', 'load the image');
    } finally {
      archive.off('error', onInputError);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Ids of every image on the engine (intermediate ones left out). */
  async listIds(): Promise<string[]> {
    try {
      return (await this.#docker.listImages()).map((image) => image.Id);
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_DOCKER', 'list images');
    }
  }

  /** Ids of the untagged images that carry the label `label` (`key` for any value, or `key=value`). */
  async listByLabel(label: string): Promise<string[]> {
    try {
      const images = await this.#docker.listImages({ filters: { label: [label], dangling: ['true'] } });
      return images.map((image) => image.Id);
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `list images labelled ${label}`);
    }
  }

  /** Points `ref` (`name[:tag]`, tag defaults to `latest`) at the image `id`. */
  async tag(id: string, ref: string): Promise<void> {
    const { repository, tag } = splitReference(ref);
    try {
      await this.#docker.json({ method: 'POST', path: `/images/${namePath(id)}/tag`, query: { repo: repository, tag } });
    } catch (err) {
      if (statusOf(err) === 404) throw new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `Image ${id} is not on this engine`, cause: err, details: { id } });
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `tag image ${id} as ${ref}`);
    }
  }

  /** Removes a tag or an image; one that is already gone is not an error. */
  async remove(ref: string, options: RemoveImageOptions = {}): Promise<void> {
    try {
      await this.#docker.json({ method: 'DELETE', path: `/images/${namePath(ref)}`, query: { force: options.force ?? false } });
    } catch (err) {
      if (statusOf(err) === 404) return;
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `remove image ${ref}`);
    }
  }
}

async function collectLoadResult(events: AsyncIterable<ProgressEvent>): Promise<LoadResult> {
  const result: LoadResult = { imageIds: [], tags: [] };
  const errors: string[] = [];
  const unexpected: string[] = [];
  for await (const event of events) {
    if (event.type === 'error') {
      errors.push(event.error);
      continue;
    }
    if (event.type === 'invalid') {
      unexpected.push(event.line);
      continue;
    }
    const text = event.message.stream ?? event.message.status ?? '';
    for (const line of text.split('\n').map((part) => part.trim())) {
      const id = LOADED_ID.exec(line)?.[1];
      const tag = LOADED_TAG.exec(line)?.[1];
      if (id) result.imageIds.push(id);
      else if (tag) result.tags.push(tag);
    }
  }
  if (errors.length > 0) {
    throw new FerryError('FERRY_ERR_LOAD_FAILED', { message: `Docker could not load the image: ${errors.join('; ')}` });
  }
  if (result.imageIds.length === 0 && result.tags.length === 0) {
    const said = unexpected.length > 0 ? ` (it said: ${unexpected.slice(0, 3).join(' | ').slice(0, 500)})` : '';
    throw new FerryError('FERRY_ERR_LOAD_FAILED', { message: `Docker finished the load without loading an image${said}` });
  }
  return result;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
