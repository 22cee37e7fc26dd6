import type { Readable } from 'node:stream';
import type { ImageInfo, LayerStore } from '@ferry/docker';
import { FerryError } from '@ferry/protocol';
import { dockerArchive } from './docker-archive.ts';
import type { VerifiedBundle } from './open.ts';
import type { BundleService } from './release.ts';

/**
 * A verified bundle's images as the sender's packaging reads an engine's (`ferry bundle push`): by
 * reference or id, each saved as the docker-archive stream it converts to on the fly. There is no
 * layer store to read from: the bundle is the store.
 */
export function bundleImages(bundle: VerifiedBundle): { inspect(ref: string): Promise<ImageInfo | undefined>; save(ref: string): Promise<Readable>; layerStore(): Promise<LayerStore | undefined> } {
  const find = (ref: string): BundleService['image'] | undefined =>
    bundle.document.release.services.find((s) => s.image.ref === ref || s.image.id === ref)?.image;
  return {
    inspect: (ref) => {
      const image = find(ref);
      return Promise.resolve(image && {
        id: image.id, diffIds: image.layers.map((l) => l.diffId), repoTags: [image.ref], size: image.layers.reduce((n, l) => n + l.size, 0),
      });
    },
    save: (ref) => {
      const image = find(ref);
      if (!image) return Promise.reject(new FerryError('FERRY_ERR_IMAGE_NOT_FOUND', { message: `The bundle holds no image ${ref}`, details: { ref } }));
      // A differential bundle cannot be pushed whole: a layer it leaves out is not there to send.
      const missing = image.layers.filter((l) => bundle.omitted.has(l.diffId)).map((l) => l.diffId);
      if (missing.length > 0) {
        return Promise.reject(new FerryError('FERRY_ERR_BUNDLE_BASE_MISSING', { message: `The bundle leaves out ${missing.length} layer(s) of ${image.ref}: push a full bundle`, details: { missing } }));
      }
      return Promise.resolve(dockerArchive(bundle, image));
    },
    layerStore: () => Promise.resolve(undefined),
  };
}
