import { randomUUID } from 'node:crypto';
import CircuitBreaker from 'opossum';
import { createEvent, type EventData } from '@ferry/events';
import {
  FerryError, isFerryError,
  type Compression, type DeploymentResult, type EventType, type ManifestInput,
} from '@ferry/protocol';
import { layersToOmit, packageCompression, resolveCompression } from './negotiate.ts';
import { buildPackage, inspectImage, type BuiltPackage, type ExportedBy } from './package.ts';
import { RESUMABLE_THRESHOLD_BYTES, type PushDeps, type PushRequest } from './push.ts';
import { ReceiverClient, type TargetLayers, type UploadOutcome } from './receiver-client.ts';
import { uploadResumable } from './resumable.ts';
import { DEFAULT_BACKOFF, isRetryable, retry, systemClock, type BackoffPolicy, type Clock } from './retry.ts';
import type { ResolvedTarget } from './targets.ts';

export const DEFAULT_PARALLEL = 5;

/**
 * Breaker settings per receiver: it opens once at least 5 calls were made within the window and
 * half of them failed, so a receiver that restarts mid-transfer (one or two failures) is resumed,
 * while one that stays down stops costing the push its whole backoff schedule.
 */
const BREAKER = { volumeThreshold: 5, errorThresholdPercentage: 50, rollingCountTimeout: 120_000, resetTimeout: 60_000, timeout: false } as const;

export interface FanoutRequest extends Omit<PushRequest, 'to' | 'hostKey' | 'prepare' | 'deploymentId'> {
  /**
   * Receiver base URLs, or resolved targets whose `hostKey` each receiver must prove; each gets
   * the same package.
   */
  targets: (string | ResolvedTarget)[];
  /** Targets served at once; default DEFAULT_PARALLEL. */
  parallel?: number;
  policy?: BackoffPolicy;
  /** Resumable part size; default DEFAULT_PART_BYTES. */
  partBytes?: number;
}

export interface FanoutDeps extends Omit<PushDeps, 'onProgress' | 'onStage'> {
  clock?: Clock;
  onStage?: (stage: 'package' | 'transfer', detail: { bytes?: number }) => void;
  /** A target's attempt failed and will be tried again after `delayMs`. */
  onRetry?: (url: string, attempt: number, delayMs: number, err: unknown) => void;
  /** Package bytes handed to this target's socket: the position in the package. */
  onProgress?: (url: string, position: number) => void;
  /** Every package byte reached this target; its receiver now loads and starts the image. */
  onSent?: (url: string) => void;
  /** This target is finished, one way or the other. */
  onDone?: (result: TargetResult) => void;
}

export interface TargetResult {
  url: string;
  /** The receiver's host id, once it answered. */
  host?: string;
  /** Reused by every attempt to this target, so a retried upload never deploys twice. */
  deploymentId: string;
  ok: boolean;
  state: string;
  attempts: number;
  /** Package bytes handed to this target's sockets over all attempts. */
  bytes: { sent: number };
  durationMs: number;
  error?: { code: string; message: string };
  deployment?: DeploymentResult;
  /** The partial package was refused (a layer went away) and the full one was sent after it. */
  fullAfterRefusal?: boolean;
}

export interface FanoutResult {
  ok: boolean;
  service: string;
  image: string;
  imageId: string;
  compression: Compression;
  /** Built once, whatever the number of targets. */
  bytes: { image: number; package: number };
  /** Where the image's bytes came from: the engine's layer store, or docker save. */
  exportedBy: ExportedBy;
  /**
   * Layer negotiation: what each target said it holds, and the diff ids the one package left out
   * (those every target holds: the package carries the union of what any target lacks).
   */
  layers: { total: number; omitted: string[]; targets: TargetLayers[] };
  /** Milliseconds; the package's stages overlap (see PushResult.timings). */
  timings: { package: number; total: number; negotiate: number; save: number; compress: number; hash: number };
  targets: TargetResult[];
}

/**
 * `ferry push --to A --to B …`: docker save → compress → BLAKE3 once into one package file, then
 * the same file goes to every target, `parallel` at a time. Each target has its own deployment
 * id (each receiver journals its own deployment), its own retries with backoff, and its own
 * circuit breaker; one target's failure never stops the others. Never throws for a target's
 * failure — only when the package itself cannot be built.
 */
export async function pushMany(request: FanoutRequest, deps: FanoutDeps): Promise<FanoutResult> {
  const started = performance.now();
  const clock = deps.clock ?? systemClock;
  const policy = request.policy ?? DEFAULT_BACKOFF;
  const image = await inspectImage(deps.images, request.image);
  const negotiateStarted = performance.now();
  const targets = request.targets.map((t) => (typeof t === 'string' ? { url: t } : t));
  const clients = new Map(targets.map((t) => [t.url, new ReceiverClient({ url: t.url, credentials: deps.credentials, hostKey: t.hostKey })]));
  const clientOf = (url: string): ReceiverClient => clients.get(url) ?? new ReceiverClient({ url, credentials: deps.credentials });
  const choosing = resolveCompression(request.compression, targets.map((t) => t.url));
  // Awaited below, after the answers; marked handled so a bad URL is not an unhandled rejection meanwhile.
  choosing.catch(() => undefined);
  // Every target is asked at once; one that does not answer just gets every layer.
  const answers = await Promise.all(targets.map(async ({ url }): Promise<TargetLayers> => {
    if (request.negotiateLayers === false) return { url, present: 0, unanswered: 'negotiation off' };
    try {
      const client = clientOf(url);
      await client.identify();
      return await client.layers(image.diffIds);
    } catch (err) {
      return { url, present: 0, unanswered: (err as Error).message };
    }
  }));
  const omit = layersToOmit(image.diffIds, answers);
  const compression = packageCompression(request.compression, await choosing, omit, image.diffIds.length);
  const negotiateMs = Math.round(performance.now() - negotiateStarted);
  deps.onStage?.('package', {});
  const pkg = await buildPackage(deps.images, image, compression, { omit, layerStore: request.layerStore !== false });
  // Built only if a target refuses the partial package (a layer it held went away meanwhile).
  let whole: Promise<BuiltPackage> | undefined;
  deps.onStage?.('transfer', { bytes: pkg.size });
  try {
    const queue = targets.map(({ url }, index) => ({ url, index }));
    const results: TargetResult[] = new Array<TargetResult>(targets.length);
    const worker = async (): Promise<void> => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        let result = await deliver(clientOf(next.url), pkg, request, deps, clock, policy);
        if (result.error?.code === 'FERRY_ERR_LAYERS_MISSING' && pkg.omittedLayers.length > 0) {
          whole ??= choosing.then((link) => buildPackage(deps.images, image, link, { layerStore: request.layerStore !== false }));
          const full = await whole.catch(() => undefined);
          const again = full && await deliver(clientOf(next.url), full, request, deps, clock, policy);
          if (again) result = { ...again, attempts: result.attempts + again.attempts, bytes: { sent: result.bytes.sent + again.bytes.sent }, fullAfterRefusal: true };
        }
        results[next.index] = result;
        deps.onDone?.(result);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(request.parallel ?? DEFAULT_PARALLEL, queue.length)) }, worker));
    return {
      ok: results.every((r) => r.ok),
      service: request.service.name, image: image.ref, imageId: image.id, compression: pkg.compression,
      bytes: { image: pkg.rawBytes, package: pkg.size },
      exportedBy: pkg.exportedBy,
      layers: { total: image.diffIds.length, omitted: pkg.omittedLayers, targets: answers },
      timings: {
        package: pkg.durationMs, total: Math.round(performance.now() - started),
        negotiate: negotiateMs, save: pkg.timings.save, compress: pkg.timings.compress, hash: pkg.timings.hash,
      },
      targets: results,
    };
  } finally {
    await pkg.remove();
    await whole?.then((full) => full.remove(), () => undefined);
  }
}

async function deliver(client: ReceiverClient, pkg: BuiltPackage, request: FanoutRequest, deps: FanoutDeps, clock: Clock, policy: BackoffPolicy): Promise<TargetResult> {
  const started = performance.now();
  const url = client.url;
  const deploymentId = randomUUID();
  const manifest: ManifestInput = {
    schema: 'ferry.manifest/v1',
    deploymentId,
    createdAt: new Date().toISOString(),
    image: { ref: pkg.image.ref, id: pkg.image.id, diffIds: pkg.image.diffIds },
    package: {
      format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest,
      ...(pkg.omittedLayers.length > 0 ? { omittedLayers: pkg.omittedLayers } : {}),
    },
    service: { env: {}, network: 'bridge', ...request.service },
  };
  // One manifest text for every attempt: the receiver finds the live upload session by it.
  const manifestJson = JSON.stringify(manifest);
  const breaker = new CircuitBreaker(async (call: () => Promise<unknown>) => call(), {
    ...BREAKER,
    // A 4xx (bad key, policy, refused package) is the receiver working as meant, not failing.
    errorFilter: (err: unknown) => isFerryError(err) && !isRetryable(err),
  });
  const guarded = async <T>(call: () => Promise<T>): Promise<T> => {
    try {
      return await breaker.fire(call) as T;
    } catch (err) {
      if (breaker.opened && !isFerryError(err) && (err as { code?: string }).code === 'EOPENBREAKER') {
        throw new FerryError('FERRY_ERR_RECEIVER_CIRCUIT_OPEN', { message: `${url} kept failing; stopped trying it`, details: { target: url } });
      }
      throw err;
    }
  };
  let host: string | undefined;
  let attempts = 0;
  let sent = 0;
  const emit = <T extends EventType>(type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image' | 'imageId'>): void => {
    if (host === undefined) return;
    deps.events.publish(createEvent(type, {
      source: deps.source, host, service: request.service.name, deploymentId,
      data: { deploymentId, host, service: request.service.name, image: pkg.image.ref, imageId: pkg.image.id, ...data } as unknown as EventData[T],
    }));
  };
  try {
    const outcome = await retry(async () => {
      attempts += 1;
      host ??= await guarded(() => client.identify());
      const audience = host;
      let from = 0;
      let reached = 0;
      const transferStarted = performance.now();
      const resumable = pkg.size >= (request.resumableThreshold ?? RESUMABLE_THRESHOLD_BYTES);
      if (attempts === 1) emit('transfer.started', { target: url, bytes: pkg.size, compression: pkg.compression });
      const common = {
        url, credentials: deps.credentials, audience, client, manifestJson, packagePath: pkg.path, packageSize: pkg.size,
        onProgress: (position: number) => { reached = Math.max(reached, position); deps.onProgress?.(url, position); },
        onSent: () => {
          emit('transfer.completed', { target: url, bytes: pkg.size, compression: pkg.compression, durationMs: Math.round(performance.now() - transferStarted) });
          deps.onSent?.(url);
        },
      };
      try {
        return await guarded<UploadOutcome>(() => resumable
          // attempts: 1 — this loop owns retries; the next attempt reopens the session where it stands.
          ? uploadResumable({ ...common, attempts: 1, ...(request.partBytes ? { partBytes: request.partBytes } : {}), onSession: (offset) => { from = offset; reached = offset; } })
          : client.sendPackage(common));
      } finally {
        sent += Math.max(0, reached - from);
      }
    }, { policy, clock, onRetry: (n, delayMs, err) => deps.onRetry?.(url, n, delayMs, err) });
    if (outcome.result.state === 'COMPLETED') await deps.desired?.record({ host: host ?? outcome.result.host, url, manifest });
    return {
      url, host, deploymentId, ok: outcome.result.state === 'COMPLETED', state: outcome.result.state, attempts,
      bytes: { sent }, durationMs: Math.round(performance.now() - started), deployment: outcome.result,
    };
  } catch (err) {
    const error = isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err });
    const record = error.details?.deployment as DeploymentResult | undefined;
    return {
      url, host, deploymentId, ok: false, state: record?.state ?? 'FAILED', attempts,
      bytes: { sent }, durationMs: Math.round(performance.now() - started),
      error: { code: error.code, message: error.message }, ...(record ? { deployment: record } : {}),
    };
  } finally {
    breaker.shutdown();
  }
}
