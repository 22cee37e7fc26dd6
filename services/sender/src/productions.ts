import type { Writable } from 'node:stream';
import { LayerStoreUnreadable } from '@ferry/docker';
import type { Compression } from '@ferry/protocol';
import { PartialPackageUnavailable } from './layer-filter.ts';
import { buildPackage, producePackage, type BuiltPackage, type ImageFacts, type ImageSource, type ProducedPackage, type ProductionMeter } from './package.ts';

/** Where a package's bytes come from: the layers it leaves out, and whether the layer store may be read. */
export interface Source {
  omit: readonly string[];
  layerStore: boolean;
}

/**
 * The source to make a package from again after `err` stopped one, or undefined when `err` is not
 * the source's fault. A package whose held layers cannot be left out (their archive layout links
 * across them) is made whole; a layer store found unreadable midway gives way to docker save.
 * The one place these two fallbacks are decided, for streamed and spooled packages alike.
 */
export function sourceFallback(err: unknown, source: Source): Source | undefined {
  if (err instanceof PartialPackageUnavailable && source.omit.length > 0) return { ...source, omit: [] };
  if (err instanceof LayerStoreUnreadable && source.layerStore) return { ...source, layerStore: false };
  return undefined;
}

/** How often the image was read and compressed for this push: one of each is the goal, whatever the targets. */
export interface Reads {
  /** Exports of the image (layer store reads or docker saves), fallbacks included. */
  exports: number;
  /** Of those, the ones compressed. */
  compressions: number;
}

/** The image, its compression, and the counts every production adds to. */
export interface Producer {
  images: ImageSource;
  image: ImageFacts;
  compression: Compression;
  /** zstd's level (or gzip's); the library's default when absent. */
  level?: number | undefined;
  reads: Reads;
  /** Told of each streamed production as it starts, to follow how far it got. */
  onMeter?: ((meter: ProductionMeter) => void) | undefined;
  /** Stops every production (an interrupted push), and any spooled package from being made. */
  signal?: AbortSignal | undefined;
}

/** One production into `destination` (a broadcast, a part cutter), counted. */
export function produceInto(producer: Producer, destination: Writable, source: Source): Promise<ProducedPackage> {
  count(producer);
  return producePackage(producer.images, producer.image, producer.compression, destination, {
    omit: source.omit, layerStore: source.layerStore, ...(producer.level === undefined ? {} : { level: producer.level }),
    ...(producer.onMeter ? { onMeter: producer.onMeter } : {}), signal: producer.signal,
  });
}

/** Whose spooled package: the one planned (leaving out what every target holds), or the whole image. */
export type SpoolKind = 'planned' | 'whole';

/**
 * The push's spooled packages, each made at most once and shared by every target that needs it:
 * the planned one may come from a streamed production's copy (see {@link offer}); otherwise, or
 * if that production failed, it is built here, falling back as {@link sourceFallback} says.
 */
export class Spools {
  readonly #producer: Producer;
  readonly #planned: Source;
  readonly #made = new Map<SpoolKind, Promise<BuiltPackage>>();

  constructor(producer: Producer, planned: Source) {
    this.#producer = producer;
    this.#planned = planned;
  }

  /** A package being made elsewhere (a broadcast's spool file); a failure there falls back to building one. */
  offer(kind: SpoolKind, made: Promise<BuiltPackage>): void {
    const kept = made.catch((err: unknown) => {
      if (this.#producer.signal?.aborted) throw err;
      return this.#build(kind);
    });
    kept.catch(() => undefined);
    this.#made.set(kind, kept);
  }

  get(kind: SpoolKind): Promise<BuiltPackage> {
    let made = this.#made.get(kind);
    if (!made) {
      made = this.#build(kind);
      this.#made.set(kind, made);
    }
    return made;
  }

  /** Deletes every spool file made. */
  async remove(): Promise<void> {
    await Promise.all([...this.#made.values()].map((made) => made.then((pkg) => pkg.remove(), () => undefined)));
  }

  async #build(kind: SpoolKind): Promise<BuiltPackage> {
    for (let source: Source = kind === 'whole' ? { ...this.#planned, omit: [] } : this.#planned; ;) {
      count(this.#producer);
      try {
        return await buildPackage(this.#producer.images, this.#producer.image, this.#producer.compression, {
          omit: source.omit, layerStore: source.layerStore, ...(this.#producer.level === undefined ? {} : { level: this.#producer.level }), signal: this.#producer.signal,
        });
      } catch (err) {
        const next = sourceFallback(err, source);
        if (!next) throw err;
        source = next;
      }
    }
  }
}

function count(producer: Producer): void {
  producer.reads.exports += 1;
  if (producer.compression !== 'none') producer.reads.compressions += 1;
}
