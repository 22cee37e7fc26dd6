import type { EventSink } from '@ferry/events';
import { FerryError, type Compression, type DeploymentResult, type DeploymentState, type HealthCheckProgress, type ServiceSpec, type StageTimings } from '@ferry/protocol';
import type { CompressionDecision } from './compression.ts';
import { deliver, type PackageTotal } from './deliver.ts';
import type { DesiredRecorder } from './desired.ts';
import type { CompressionChoice } from './negotiate.ts';
import type { ExportedBy, ImageSource } from './package.ts';
import type { Credentials, TargetLayers } from './receiver-client.ts';
import { DEFAULT_BACKOFF, type BackoffPolicy, type Clock } from './retry.ts';

export { RESUMABLE_THRESHOLD_BYTES } from './deliver.ts';

export interface PushRequest {
  image: string;
  /** Receiver base URL. */
  to: string;
  /** The fingerprint (`SHA256:…`) of the host key the receiver must prove; any other is refused. */
  hostKey?: string | undefined;
  service: Omit<ServiceSpec, 'env' | 'network'> & Partial<Pick<ServiceSpec, 'env' | 'network'>>;
  /** `auto`: chosen for the link (see compression.ts). */
  compression: CompressionChoice;
  /** Ask the target which layers it holds and leave those out of the package; default true. */
  negotiateLayers?: boolean;
  /** Package size from which the resumable upload is used; default RESUMABLE_THRESHOLD_BYTES. */
  resumableThreshold?: number | undefined;
  /**
   * Stream the package while the image is read (docs/protocol.md §10.6) instead of spooling it
   * to a file first; default true. A receiver that does not take streams gets the spooled package.
   */
  stream?: boolean;
  /** Read the image straight from the build engine's layer store when it can be; default true. */
  layerStore?: boolean;
  /** The deployment id to use; default a fresh UUID. */
  deploymentId?: string;
  /**
   * Attempts at the target, with backoff, after a 5xx, FERRY_ERR_REPLAY or a call still cut short
   * after its own retries; default 1. Within each attempt a call that a lost connection or a
   * restarting receiver cut short is sent again anyway (deliver.ts).
   */
  policy?: BackoffPolicy;
  /**
   * Runs once the receiver answered and before the image is looked up, e.g. to build it; its
   * events share the push's deployment id. A failure ends the push with that error.
   */
  prepare?: (context: { deploymentId: string; host: string }) => Promise<void>;
  /** Interrupts the push (see DeliveryRequest.signal): it then fails FERRY_ERR_SENDER_INTERRUPTED. */
  signal?: AbortSignal;
}

export interface PushDeps {
  images: ImageSource;
  events: EventSink;
  credentials: Credentials;
  /** CloudEvents source of the sender, e.g. ferry://sender/<hostname>. */
  source: string;
  clock?: Clock;
  onStage?: (stage: 'package' | 'transfer' | 'deploy', detail: { bytes?: number }) => void;
  /** Package bytes the target holds or was handed so far, and the package's size when known. */
  onProgress?: (sent: number, total?: PackageTotal) => void;
  /** A state the receiver's deployment entered (LOADING, DEPLOYING, VALIDATING…, with the health check's progress), while its answer is awaited. */
  onDeployState?: (state: DeploymentState, healthCheck?: HealthCheckProgress) => void;
  onRetry?: (attempt: number, delayMs: number, err: unknown) => void;
  /** Records each successful deployment as the registry's desired state (FERRY_REGISTRY_URL). */
  desired?: DesiredRecorder | undefined;
  /** Told what the target holds, before packaging starts (tests use it to change the target then). */
  onNegotiated?: (layers: TargetLayers) => Promise<void> | void;
}

export interface PushResult {
  deploymentId: string;
  host: string;
  service: string;
  image: string;
  imageId: string;
  /** What the image's archive held, what was sent after compression, and the requests' total. */
  bytes: { image: number; package: number; sent: number };
  compression: Compression;
  /** What compression was chosen for the link, and why. */
  compressionChoice: CompressionDecision;
  /**
   * Layer negotiation: the image's layer count, how many bottom layers the target said it holds,
   * the diff ids the package left out, and whether a refused partial package was sent again whole.
   */
  layers: { total: number; present: number; omitted: string[]; fullAfterRefusal: boolean };
  /**
   * Milliseconds. `package` is read → compress → hash, whose stages overlap: `save` is the wall
   * time until the export ended, `compress` and `hash` the time each was busy; `send`
   * (= `transfer`) the upload; `receiver` the receiver's own stages. When streamed, these overlap
   * too: `package` runs until the last part was acknowledged, `send` from the first part until
   * the seal went out.
   */
  timings: {
    package: number; transfer: number; total: number; receiver: StageTimings;
    negotiate: number; save: number; compress: number; hash: number; send: number;
  };
  /** Whether the package went as a stream (§10.6) rather than as a spooled package. */
  streamed: boolean;
  /** Where the image's bytes came from: the engine's layer store, or docker save. */
  exportedBy: ExportedBy;
  /** The states the push went through, e.g. probe, stream, done (see deliver.ts). */
  path: string[];
  deployment: DeploymentResult;
}

/**
 * `ferry push --to URL`: the push of deliver.ts to one target, its outcome as one result. A
 * failure is a FerryError whose details carry the deployment id, the target's URL (and host) and,
 * when the receiver got that far, its record of the deployment.
 */
export async function push(request: PushRequest, deps: PushDeps): Promise<PushResult> {
  const { result, failures, packages } = await deliver({
    ...request, resumableThreshold: request.resumableThreshold,
    targets: [{ url: request.to, ...(request.hostKey ? { hostKey: request.hostKey } : {}) }],
    policy: request.policy ?? { ...DEFAULT_BACKOFF, attempts: 1 },
  }, {
    images: deps.images, events: deps.events, credentials: deps.credentials, source: deps.source, desired: deps.desired,
    ...(deps.clock ? { clock: deps.clock } : {}),
    ...(deps.onNegotiated ? { onNegotiated: async (layers: TargetLayers[]) => { if (layers[0]) await deps.onNegotiated?.(layers[0]); } } : {}),
    onStage: (stage, detail) => deps.onStage?.(stage, detail),
    onProgress: (_url, position, total) => deps.onProgress?.(position, total),
    onSent: () => deps.onStage?.('deploy', {}),
    ...(deps.onDeployState ? { onDeployState: (_url: string, state: DeploymentState, check?: HealthCheckProgress) => deps.onDeployState?.(state, check) } : {}),
    ...(deps.onRetry ? { onRetry: (_url: string, attempt: number, delayMs: number, err: unknown) => deps.onRetry?.(attempt, delayMs, err) } : {}),
  });
  const target = result.targets[0];
  const failure = failures.get(request.to);
  if (!target) throw new FerryError('FERRY_ERR_INTERNAL', { message: 'The push had no target' });
  if (failure !== undefined || !target.ok) {
    const error = failure instanceof FerryError ? failure
      : new FerryError('FERRY_ERR_INTERNAL', { message: failure instanceof Error ? failure.message : `deployment ${target.state}`, ...(failure ? { cause: failure } : {}) });
    throw error.withDetails({ deploymentId: target.deploymentId, url: request.to, ...(target.host ? { host: target.host } : {}) });
  }
  const pkg = packages.get(request.to);
  const deployment = target.deployment as DeploymentResult;
  return {
    deploymentId: target.deploymentId, host: target.host ?? deployment.host, service: result.service, image: result.image, imageId: result.imageId,
    bytes: { image: pkg?.rawBytes ?? 0, package: pkg?.size ?? 0, sent: target.bytes.sent },
    compression: pkg?.compression ?? result.compression, compressionChoice: result.compressionChoice,
    layers: { total: result.layers.total, present: pkg?.present ?? 0, omitted: pkg?.omitted ?? [], fullAfterRefusal: target.fullAfterRefusal === true },
    timings: {
      package: pkg?.packageMs ?? 0, transfer: pkg?.sendMs ?? 0, total: result.timings.total, receiver: deployment.timings,
      negotiate: result.timings.negotiate, save: pkg?.timings.save ?? 0, compress: pkg?.timings.compress ?? 0, hash: pkg?.timings.hash ?? 0, send: pkg?.sendMs ?? 0,
    },
    streamed: target.streamed, exportedBy: pkg?.exportedBy ?? result.exportedBy, path: target.path, deployment,
  };
}
