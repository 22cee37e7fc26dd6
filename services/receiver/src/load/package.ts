import { rm } from 'node:fs/promises';
import { FerryError, type Manifest } from '@ferry/protocol';
import { loadVerified, type LoadDeps } from './load.ts';

/** What every verified package carries, whichever upload brought it. */
export interface PackageFacts {
  /** The signed manifest the package's size and BLAKE3 were checked against. */
  manifest: Manifest;
  bytes: number;
  /** Time spent receiving and hashing, reported as the receive stage. */
  receiveMs: number;
  /**
   * The upload outlived a stop of the receiver (a recovered session or stream): if that stop cut
   * its deployment short (FERRY_ERR_INTERRUPTED in the journal), this package runs it again.
   */
  resumesInterrupted?: boolean;
}

/**
 * A package whose bytes were checked against its signed manifest, handed to the deployer. It
 * knows how to put its image into the engine, so the deployment has one path whichever upload
 * brought it: one-shot, resumable or streamed.
 */
export abstract class VerifiedPackage {
  readonly manifest: Manifest;
  readonly bytes: number;
  readonly receiveMs: number;
  readonly resumesInterrupted: boolean;

  protected constructor(facts: PackageFacts) {
    this.manifest = facts.manifest;
    this.bytes = facts.bytes;
    this.receiveMs = facts.receiveMs;
    this.resumesInterrupted = facts.resumesInterrupted ?? false;
  }

  /**
   * Loads the signed image into the engine and proves it is exactly `image.id` (load.ts); a
   * refusal is typed and leaves the engine as it was.
   */
  abstract load(deps: LoadDeps): Promise<void>;

  /**
   * Lets go of the bytes the deployer was handed, once it is done with them or did not need them
   * (a deployment id it answers from the journal, a service busy with another one). Harmless to
   * call more than once and after a load.
   */
  abstract release(): Promise<void>;
}

/**
 * A package in a spool file that the deployer owns from here (a one-shot upload's file, or the
 * link a resumable session hands over): loading moves it into the package store.
 */
export class SpooledPackage extends VerifiedPackage {
  readonly #path: string;

  constructor(facts: PackageFacts & { path: string }) {
    super(facts);
    this.#path = facts.path;
  }

  override async load(deps: LoadDeps): Promise<void> {
    await loadVerified(deps, { manifest: this.manifest, path: this.#path });
  }

  /** Once loaded the file lives in the store under its digest, and this path is empty. */
  override async release(): Promise<void> {
    await rm(this.#path, { force: true });
  }
}

/**
 * A streamed package: its load ran while its parts arrived, and completes once its seal matched
 * (upload/streams.ts). The stream keeps its own spool, so there is nothing to release here.
 */
export class StreamedPackage extends VerifiedPackage {
  readonly #loading: Promise<unknown>;

  constructor(facts: PackageFacts & { loading: Promise<unknown> }) {
    super(facts);
    this.#loading = facts.loading;
  }

  override async load(): Promise<void> {
    await this.#loading;
  }

  override release(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * A package whose bytes went with an earlier deployment of the same upload: a repeated deploy
 * call is answered from the journal, and a load is refused rather than attempted on nothing.
 */
export class SpentPackage extends VerifiedPackage {
  constructor(facts: PackageFacts) {
    super(facts);
  }

  override load(): Promise<void> {
    return Promise.reject(new FerryError('FERRY_ERR_UPLOAD_INVALIDATED', {
      message: 'The upload\'s bytes went with its earlier deployment', details: { reason: 'deployed', deploymentId: this.manifest.deploymentId },
    }));
  }

  override release(): Promise<void> {
    return Promise.resolve();
  }
}
