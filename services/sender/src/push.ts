import { randomUUID } from 'node:crypto';
import { LayerStoreUnreadable, type ImageStore } from '@ferry/docker';
import { createEvent, type EventData, type EventSink } from '@ferry/events';
import type { Digest } from '@ferry/integrity';
import {
  FerryError, isFerryError,
  type Compression, type DeferredManifestInput, type DeploymentResult, type EventType, type ManifestInput, type ServiceSpec, type StageTimings,
} from '@ferry/protocol';
import type { DesiredRecorder } from './desired.ts';
import { PartialPackageUnavailable } from './layer-filter.ts';
import { layersToOmit, packageCompression, resolveCompression, type CompressionChoice } from './negotiate.ts';
import { buildPackage, inspectImage, producePackage, type BuiltPackage, type ExportedBy } from './package.ts';
import { ReceiverClient, type Credentials, type TargetLayers } from './receiver-client.ts';
import { uploadResumable } from './resumable.ts';
import { StreamUnavailable, StreamUpload } from './stream.ts';

/** NATS being down must not stall a push: events wait in the sink's queue past this. */
const EVENT_FLUSH_WAIT_MS = 2000;

/** Packages this large or larger go over the resumable protocol, which survives a cut link. */
export const RESUMABLE_THRESHOLD_BYTES = 64 * 1024 ** 2;

export interface PushRequest {
  image: string;
  /** Receiver base URL. */
  to: string;
  /** The fingerprint (`SHA256:…`) of the host key the receiver must prove; any other is refused. */
  hostKey?: string | undefined;
  service: Omit<ServiceSpec, 'env' | 'network'> & Partial<Pick<ServiceSpec, 'env' | 'network'>>;
  /** `auto`: none when the target is on a loopback or private address, zstd otherwise. */
  compression: CompressionChoice;
  /** Ask the target which layers it holds and leave those out of the package; default true. */
  negotiateLayers?: boolean;
  /** Package size from which the resumable upload is used; default RESUMABLE_THRESHOLD_BYTES. */
  resumableThreshold?: number;
  /**
   * Stream the package while docker save makes it (docs/protocol.md §10.6) instead of spooling it
   * to a file first; default true. A receiver that does not take streams gets the packaged upload.
   */
  stream?: boolean;
  /**
   * Read the image straight from the build engine's layer store when the engine runs on this
   * machine on overlay2 and its data root is readable; default true. Otherwise, or when false,
   * the image comes from docker save.
   */
  layerStore?: boolean;
  /** The deployment id to use; default a fresh UUID. */
  deploymentId?: string;
  /**
   * Runs once the receiver answered and before the image is looked up, e.g. to build it; its
   * events share the push's deployment id. A failure ends the push with that error.
   */
  prepare?: (context: { deploymentId: string; host: string }) => Promise<void>;
}

export interface PushDeps {
  images: ImageStore;
  events: EventSink;
  credentials: Credentials;
  /** CloudEvents source of the sender, e.g. ferry://sender/<hostname>. */
  source: string;
  onStage?: (stage: 'package' | 'transfer' | 'deploy', detail: { bytes?: number }) => void;
  onProgress?: (sent: number, total: number) => void;
  /** Records each successful deployment as the registry's desired state (FERRY_REGISTRY_URL). */
  desired?: DesiredRecorder;
  /** Told what the target holds, before packaging starts (tests use it to change the target then). */
  onNegotiated?: (layers: TargetLayers) => Promise<void> | void;
}

export interface PushResult {
  deploymentId: string;
  host: string;
  service: string;
  image: string;
  imageId: string;
  /** What docker save produced, what was sent after compression, and the request's total. */
  bytes: { image: number; package: number; sent: number };
  compression: Compression;
  /**
   * Layer negotiation: the image's layer count, how many bottom layers the target said it holds,
   * the diff ids the package left out, and whether a refused partial package was sent again whole.
   */
  layers: { total: number; present: number; omitted: string[]; fullAfterRefusal: boolean };
  /**
   * Milliseconds. `package` is docker save → compress → hash → file, whose stages overlap:
   * `save` is the wall time until docker save ended, `compress` and `hash` the time each was busy;
   * `send` (= `transfer`) the upload of the package; `receiver` the receiver's own stages. When
   * streamed, these overlap too: `package` runs until the last part was acknowledged, and
   * `send` from the first part until the seal went out.
   */
  timings: {
    package: number; transfer: number; total: number; receiver: StageTimings;
    negotiate: number; save: number; compress: number; hash: number; send: number;
  };
  /** Whether the package went as a stream (§10.6) rather than as a spooled package. */
  streamed: boolean;
  /** Where the image's bytes came from: the engine's layer store, or docker save. */
  exportedBy: ExportedBy;
  deployment: DeploymentResult;
}

/**
 * `ferry push`: package the image once, upload it signed, and return the receiver's outcome. The
 * package is streamed while docker save makes it (unless `stream` is false), or spooled to a file
 * and uploaded when the receiver does not take streams. A failure is a FerryError whose details
 * carry the deployment id and, when the receiver got that far, its record of the deployment.
 */
export async function push(request: PushRequest, deps: PushDeps): Promise<PushResult> {
  const started = performance.now();
  const deploymentId = request.deploymentId ?? randomUUID();
  const client = new ReceiverClient({ url: request.to, credentials: deps.credentials, hostKey: request.hostKey });
  const host = await client.identify();
  await request.prepare?.({ deploymentId, host });
  const image = await inspectImage(deps.images, request.image);
  const emit = <T extends EventType>(id: string, type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image' | 'imageId'>): void => {
    deps.events.publish(createEvent(type, {
      source: deps.source, host, service: request.service.name, deploymentId: id,
      data: { deploymentId: id, host, service: request.service.name, image: image.ref, imageId: image.id, ...data } as unknown as EventData[T],
    }));
  };

  const negotiateStarted = performance.now();
  const [linkCompression, layers] = await Promise.all([
    resolveCompression(request.compression, [request.to]),
    request.negotiateLayers === false
      ? { url: request.to, present: 0, unanswered: 'negotiation off' }
      : client.layers(image.diffIds),
  ]);
  const negotiateMs = Math.round(performance.now() - negotiateStarted);
  await deps.onNegotiated?.(layers);

  const manifestFor = <P extends DeferredManifestInput['package']>(id: string, pkg: P): Omit<ManifestInput, 'package'> & { package: P } => ({
    schema: 'ferry.manifest/v1',
    deploymentId: id,
    createdAt: new Date().toISOString(),
    image: { ref: image.ref, id: image.id, diffIds: image.diffIds },
    package: pkg,
    service: { env: {}, network: 'bridge', ...request.service },
  });
  const failed = (id: string) => (err: unknown): never => {
    throw err instanceof FerryError ? err.withDetails({ deploymentId: id, host }) : err;
  };

  // After a failed attempt: its deployment id, and whether that is still free for the next one.
  let lastId = deploymentId;
  let idFree = true;

  // One packaged attempt: package to a spool file, sign, upload.
  /** One push's result, whichever way its package went. */
  const resultOf = (
    id: string,
    pkg: Pick<BuiltPackage, 'rawBytes' | 'size' | 'compression' | 'omittedLayers' | 'timings' | 'exportedBy'>,
    sent: { packageMs: number; sendMs: number; bodyBytes: number; result: DeploymentResult },
    streamed: boolean,
  ): PushResult => ({
    deploymentId: id, host, service: request.service.name, image: image.ref, imageId: image.id,
    bytes: { image: pkg.rawBytes, package: pkg.size, sent: sent.bodyBytes },
    compression: pkg.compression,
    layers: { total: image.diffIds.length, present: layers.present, omitted: pkg.omittedLayers, fullAfterRefusal: false },
    timings: {
      package: sent.packageMs, transfer: sent.sendMs, total: Math.round(performance.now() - started), receiver: sent.result.timings,
      negotiate: negotiateMs, save: pkg.timings.save, compress: pkg.timings.compress, hash: pkg.timings.hash, send: sent.sendMs,
    },
    streamed,
    exportedBy: pkg.exportedBy,
    deployment: sent.result,
  });

  const packaged = async (omit: string[], id: string): Promise<PushResult> => {
    const compression = packageCompression(request.compression, linkCompression, omit, image.diffIds.length);
    lastId = id;
    deps.onStage?.('package', {});
    let pkg: BuiltPackage | undefined;
    let resumable = false;
    try {
      pkg = await buildPackage(deps.images, image, compression, { omit, layerStore });
      const manifest = manifestFor(id, {
        format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest,
        ...(pkg.omittedLayers.length > 0 ? { omittedLayers: pkg.omittedLayers } : {}),
      });
      deps.onStage?.('transfer', { bytes: pkg.size });
      const transferStarted = performance.now();
      emit(id, 'transfer.started', { target: request.to, bytes: pkg.size, compression: pkg.compression });
      // Watchers should see the transfer start before anything the receiver says about it.
      await flushWithin(deps.events, EVENT_FLUSH_WAIT_MS);
      let transferMs = 0;
      const built = pkg;
      resumable = pkg.size >= (request.resumableThreshold ?? RESUMABLE_THRESHOLD_BYTES);
      const upload = resumable ? uploadResumable : (options: { manifestJson: string; packagePath: string; packageSize: number }) => client.sendPackage(options);
      const outcome = await upload({
        url: request.to, credentials: deps.credentials, audience: host, client, manifestJson: JSON.stringify(manifest),
        packagePath: pkg.path, packageSize: pkg.size,
        onProgress: (sent) => deps.onProgress?.(sent, built.size),
        onSent: () => {
          transferMs = Math.round(performance.now() - transferStarted);
          emit(id, 'transfer.completed', { target: request.to, bytes: built.size, compression: built.compression, durationMs: transferMs });
          deps.onStage?.('deploy', {});
        },
      }).catch(failed(id));
      if (outcome.result.state === 'COMPLETED') await deps.desired?.record({ host, url: request.to, manifest });
      return resultOf(id, pkg, { packageMs: pkg.durationMs, sendMs: transferMs, bodyBytes: outcome.bodyBytes, result: outcome.result }, false);
    } catch (err) {
      // Refused before its journal record, a one-shot upload's id is still free. Refused during
      // the load, the id is spent on that failure; after a resumable upload, the receiver's
      // session holds it with the partial manifest.
      idFree = !resumable && !(isFerryError(err) && err.details?.deployment !== undefined);
      throw err;
    } finally {
      await pkg?.remove();
    }
  };

  // One streamed attempt (docs/protocol.md §10.6): docker save feeds the receiver's docker load
  // part by part, and the seal signs the size and digest once the last byte is made. The opening
  // manifest names every layer it means to leave out; the receiver lets those be absent.
  const streamed = async (omit: string[], id: string): Promise<PushResult> => {
    const compression = packageCompression(request.compression, linkCompression, omit, image.diffIds.length);
    lastId = id;
    deps.onStage?.('package', {});
    const manifest = manifestFor(id, { format: 'docker-archive' as const, compression, ...(omit.length > 0 ? { omittedLayers: omit } : {}) });
    let transferStarted = 0;
    let transferMs = 0;
    let sealed: { size: number; digest: Digest } | undefined;
    const upload = new StreamUpload({
      url: request.to, credentials: deps.credentials, audience: host, client, manifestJson: JSON.stringify(manifest),
      onOpened: () => {
        // The size is not known before the last byte: the events and the stage say 0.
        deps.onStage?.('transfer', { bytes: 0 });
        transferStarted = performance.now();
        emit(id, 'transfer.started', { target: request.to, bytes: 0, compression });
      },
      onProgress: (acknowledged) => deps.onProgress?.(acknowledged, 0),
      onSent: () => {
        transferMs = Math.round(performance.now() - transferStarted);
        emit(id, 'transfer.completed', { target: request.to, bytes: sealed?.size ?? 0, compression, durationMs: transferMs });
        deps.onStage?.('deploy', {});
      },
    });
    try {
      const outcome = await upload.run(async (destination) => {
        // Watchers should see the transfer start before anything the receiver says about it.
        await flushWithin(deps.events, EVENT_FLUSH_WAIT_MS);
        const produced = await producePackage(deps.images, image, compression, destination, { omit, layerStore });
        sealed = { size: produced.size, digest: produced.digest };
        return produced;
      });
      const pkg = outcome.produced;
      if (outcome.result.state === 'COMPLETED') {
        await deps.desired?.record({ host, url: request.to, manifest: { ...manifest, package: { ...manifest.package, size: pkg.size, digest: pkg.digest } } });
      }
      return resultOf(id, pkg, outcome, true);
    } catch (err) {
      idFree = upload.idFree && !(isFerryError(err) && err.details?.deployment !== undefined);
      if (err instanceof StreamUnavailable || err instanceof PartialPackageUnavailable || err instanceof LayerStoreUnreadable) throw err;
      return failed(id)(err);
    }
  };

  // Streams go to one target unless turned off. A receiver without them, or a stream that went
  // away, gets the packaged attempt instead; a partial package whose layers cannot be left out is
  // streamed again whole, and one whose layer store read went wrong again from docker save. Each
  // retry keeps the deployment id if the receiver cannot hold it.
  let streaming = request.stream !== false;
  let layerStore = request.layerStore !== false;
  const attempt = async (omit: string[], id: string): Promise<PushResult> => {
    for (;;) {
      if (!streaming) return packaged(omit, id);
      try {
        return await streamed(omit, id);
      } catch (err) {
        if (err instanceof PartialPackageUnavailable) omit = [];
        else if (err instanceof LayerStoreUnreadable) layerStore = false;
        else if (err instanceof StreamUnavailable) streaming = false;
        else throw err;
        if (!idFree) id = randomUUID();
      }
    }
  };

  // A partial package refused because a layer it leaves out went away meanwhile
  // (FERRY_ERR_LAYERS_MISSING) is followed by one with every layer.
  const omit = layersToOmit(image.diffIds, [layers]);
  try {
    return await attempt(omit, deploymentId);
  } catch (err) {
    if (omit.length === 0 || !isFerryError(err, 'FERRY_ERR_LAYERS_MISSING')) throw err;
    const result = await attempt([], idFree ? lastId : randomUUID());
    return { ...result, layers: { ...result.layers, fullAfterRefusal: true } };
  }
}

async function flushWithin(events: EventSink, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([events.flush(), new Promise<void>((resolve) => { timer = setTimeout(resolve, ms); })]);
  clearTimeout(timer);
}
