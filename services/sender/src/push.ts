import { randomUUID } from 'node:crypto';
import type { ImageStore } from '@ferry/docker';
import { createEvent, type EventData, type EventSink } from '@ferry/events';
import {
  FerryError, PATHS, errorFromBody, isFerryError,
  type Compression, type DeploymentResult, type EventType, type ManifestInput, type ServiceSpec, type StageTimings,
} from '@ferry/protocol';
import type { DesiredRecorder } from './desired.ts';
import { askLayers, layersToOmit, resolveCompression, type CompressionChoice, type TargetLayers } from './negotiate.ts';
import { buildPackage, inspectImage, type BuiltPackage } from './package.ts';
import { uploadResumable } from './resumable.ts';
import { uploadOneShot, type Credentials } from './upload.ts';

/** NATS being down must not stall a push: events wait in the sink's queue past this. */
const EVENT_FLUSH_WAIT_MS = 2000;

/** Packages this large or larger go over the resumable protocol, which survives a cut link. */
export const RESUMABLE_THRESHOLD_BYTES = 64 * 1024 ** 2;

export interface PushRequest {
  image: string;
  /** Receiver base URL. */
  to: string;
  service: Omit<ServiceSpec, 'env' | 'network'> & Partial<Pick<ServiceSpec, 'env' | 'network'>>;
  /** `auto`: none when the target is on a loopback or private address, zstd otherwise. */
  compression: CompressionChoice;
  /** Ask the target which layers it holds and leave those out of the package; default true. */
  negotiateLayers?: boolean;
  /** Package size from which the resumable upload is used; default RESUMABLE_THRESHOLD_BYTES. */
  resumableThreshold?: number;
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
   * `send` (= `transfer`) the upload of the package; `receiver` the receiver's own stages.
   */
  timings: {
    package: number; transfer: number; total: number; receiver: StageTimings;
    negotiate: number; save: number; compress: number; hash: number; send: number;
  };
  deployment: DeploymentResult;
}

/**
 * `ferry push`: package the image once, upload it signed, and return the receiver's outcome. A
 * failure is a FerryError whose details carry the deployment id and, when the receiver got that
 * far, its record of the deployment.
 */
export async function push(request: PushRequest, deps: PushDeps): Promise<PushResult> {
  const started = performance.now();
  const deploymentId = request.deploymentId ?? randomUUID();
  const host = await probeReceiver(request.to);
  await request.prepare?.({ deploymentId, host });
  const image = await inspectImage(deps.images, request.image);
  const emit = <T extends EventType>(id: string, type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image' | 'imageId'>): void => {
    deps.events.publish(createEvent(type, {
      source: deps.source, host, service: request.service.name, deploymentId: id,
      data: { deploymentId: id, host, service: request.service.name, image: image.ref, imageId: image.id, ...data } as unknown as EventData[T],
    }));
  };

  const negotiateStarted = performance.now();
  const [compression, layers] = await Promise.all([
    resolveCompression(request.compression, [request.to]),
    request.negotiateLayers === false
      ? { url: request.to, present: 0, unanswered: 'negotiation off' }
      : askLayers({ url: request.to, credentials: deps.credentials, audience: host }, image.diffIds),
  ]);
  const negotiateMs = Math.round(performance.now() - negotiateStarted);
  await deps.onNegotiated?.(layers);

  // One attempt: package, sign, upload. A partial package refused because a layer it leaves out
  // went away meanwhile (FERRY_ERR_LAYERS_MISSING) is followed by one with every layer.
  let resumable = false;
  const attempt = async (omit: string[], id: string): Promise<PushResult> => {
    deps.onStage?.('package', {});
    let pkg: BuiltPackage | undefined;
    try {
      pkg = await buildPackage(deps.images, image, compression, { omit });
      const manifest: ManifestInput = {
        schema: 'ferry.manifest/v1',
        deploymentId: id,
        createdAt: new Date().toISOString(),
        image: { ref: image.ref, id: image.id, diffIds: image.diffIds },
        package: {
          format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest,
          ...(pkg.omittedLayers.length > 0 ? { omittedLayers: pkg.omittedLayers } : {}),
        },
        service: { env: {}, network: 'bridge', ...request.service },
      };
      deps.onStage?.('transfer', { bytes: pkg.size });
      const transferStarted = performance.now();
      emit(id, 'transfer.started', { target: request.to, bytes: pkg.size, compression: pkg.compression });
      // Watchers should see the transfer start before anything the receiver says about it.
      await flushWithin(deps.events, EVENT_FLUSH_WAIT_MS);
      let transferMs = 0;
      const built = pkg;
      resumable = pkg.size >= (request.resumableThreshold ?? RESUMABLE_THRESHOLD_BYTES);
      const upload = resumable ? uploadResumable : uploadOneShot;
      const outcome = await upload({
        url: request.to, credentials: deps.credentials, audience: host, manifestJson: JSON.stringify(manifest),
        packagePath: pkg.path, packageSize: pkg.size,
        onProgress: (sent) => deps.onProgress?.(sent, built.size),
        onSent: () => {
          transferMs = Math.round(performance.now() - transferStarted);
          emit(id, 'transfer.completed', { target: request.to, bytes: built.size, compression: built.compression, durationMs: transferMs });
          deps.onStage?.('deploy', {});
        },
      }).catch((err: unknown) => {
        throw err instanceof FerryError ? err.withDetails({ deploymentId: id, host }) : err;
      });
      if (outcome.result.state === 'COMPLETED') await deps.desired?.record({ host, url: request.to, manifest });
      return {
        deploymentId: id, host, service: request.service.name, image: image.ref, imageId: image.id,
        bytes: { image: pkg.rawBytes, package: pkg.size, sent: outcome.bodyBytes },
        compression: pkg.compression,
        layers: { total: image.diffIds.length, present: layers.present, omitted: pkg.omittedLayers, fullAfterRefusal: false },
        timings: {
          package: pkg.durationMs, transfer: transferMs, total: Math.round(performance.now() - started), receiver: outcome.result.timings,
          negotiate: negotiateMs, save: pkg.timings.save, compress: pkg.timings.compress, hash: pkg.timings.hash, send: transferMs,
        },
        deployment: outcome.result,
      };
    } finally {
      await pkg?.remove();
    }
  };

  const omit = layersToOmit(image.diffIds, [layers]);
  try {
    return await attempt(omit, deploymentId);
  } catch (err) {
    if (omit.length === 0 || !isFerryError(err, 'FERRY_ERR_LAYERS_MISSING')) throw err;
    // Refused before its journal record, a one-shot upload's id is still free. Refused during the
    // load, the id is spent on that failure; after a resumable upload, the receiver's session
    // holds it with the partial manifest. The full package then goes under a new id.
    const id = err.details?.deployment === undefined && !resumable ? deploymentId : randomUUID();
    const result = await attempt([], id);
    return { ...result, layers: { ...result.layers, fullAfterRefusal: true } };
  }
}

/** Asks the receiver who it is before minutes go into packaging for a host that is not there. */
export async function probeReceiver(url: string): Promise<string> {
  let response: Response;
  try {
    response = await fetch(new URL(PATHS.healthz.slice(1), url.endsWith('/') ? url : `${url}/`), { signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    const code = (err as { cause?: { code?: string } }).cause?.code;
    if (err instanceof TypeError && code === undefined && !/fetch failed/.test(err.message)) {
      throw new FerryError('FERRY_ERR_USAGE', { message: `--to ${url}: not a receiver URL (expected http://HOST:PORT)`, cause: err });
    }
    throw new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE', { message: `Cannot reach the receiver at ${url}: ${code ?? (err as Error).message}`, cause: err });
  }
  const body = (await response.json().catch(() => null)) as { host?: unknown } | null;
  if (!response.ok) throw errorFromBody(response.status, body);
  if (typeof body?.host !== 'string') throw new FerryError('FERRY_ERR_BAD_RESPONSE', { message: `${url} does not answer like a Ferry receiver` });
  return body.host;
}

async function flushWithin(events: EventSink, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([events.flush(), new Promise<void>((resolve) => { timer = setTimeout(resolve, ms); })]);
  clearTimeout(timer);
}
