import { randomUUID } from 'node:crypto';
import CircuitBreaker from 'opossum';
import { createEvent, type EventData, type EventSink } from '@ferry/events';
import {
  FerryError, isFerryError,
  type Compression, type DeploymentResult, type DeploymentState, type EventType, type HealthCheckProgress, type ManifestInput, type ReleaseRef, type ServiceSpec,
} from '@ferry/protocol';
import { chooseCompression, type CompressionDecision } from './compression.ts';
import { watchDeployment } from './deploy-watch.ts';
import type { DesiredRecorder } from './desired.ts';
import { layersToOmit, type CompressionChoice } from './negotiate.ts';
import { inspectImage, meteredSize, type BuiltPackage, type ExportedBy, type ImageFacts, type ImageSource, type PackageTimings, type ProductionMeter } from './package.ts';
import { Spools, type Producer, type Reads, type Source } from './productions.ts';
import { ReceiverClient, type Credentials, type TargetLayers, type UploadOutcome } from './receiver-client.ts';
import { uploadResumable } from './resumable.ts';
import { DEFAULT_BACKOFF, isCallCut, isRetryable, pause, retry, systemClock, type BackoffPolicy, type Clock } from './retry.ts';
import { streamRound, type Participant, type RoundOutcome } from './round.ts';
import type { ResolvedTarget } from './targets.ts';

export const DEFAULT_PARALLEL = 5;

/** Packages this large or larger go over the resumable protocol, which survives a cut link. */
export const RESUMABLE_THRESHOLD_BYTES = 64 * 1024 ** 2;

/** A target whose stream stays behind the others this long takes the spooled copy instead. */
export const DEFAULT_SLOW_AFTER_MS = 10_000;

/**
 * How long an uncompressed stream runs, from its first acknowledged part, before its link is
 * judged (and judged again each time that doubles). Measuring by time rather than by the first
 * few MiB: on a slow link those go into the sender's socket buffers and the queues on the way in a
 * blink, and acknowledged a moment later; over two seconds the receiver's acknowledgements show
 * the link's own pace, and a restart with zstd throws away two seconds of it.
 */
export const DEFAULT_PROBE_MS = 2000;

/** What the window must carry besides: two parts of 2 MiB, so a link too slow for that in the window waits for them. */
export const DEFAULT_PROBE_BYTES = 4 * 1024 ** 2;

/** NATS being down must not stall a push: events wait in the sink's queue past this. */
const EVENT_FLUSH_WAIT_MS = 2000;

/**
 * Breaker settings per receiver: it opens once at least 5 calls were made within the window and
 * half of them failed, so a receiver that restarts mid-transfer (one or two failures) is resumed,
 * while one that stays down stops costing the push its whole backoff schedule.
 */
const BREAKER = { volumeThreshold: 5, errorThresholdPercentage: 50, rollingCountTimeout: 120_000, resetTimeout: 60_000, timeout: false } as const;

export interface DeliveryRequest {
  image: string;
  targets: ResolvedTarget[];
  service: Omit<ServiceSpec, 'env' | 'network'> & Partial<Pick<ServiceSpec, 'env' | 'network'>>;
  /** `auto`: chosen for the link (see compression.ts). */
  compression: CompressionChoice;
  /** Ask each target which layers it holds and leave out what all hold; default true. */
  negotiateLayers?: boolean;
  /** Spooled packages this large or larger go over the resumable upload; default RESUMABLE_THRESHOLD_BYTES. */
  resumableThreshold?: number;
  /** Stream while the image is read (docs/protocol.md §10.6); default true. */
  stream?: boolean;
  /** Read the image from the engine's layer store when it can be; default true. */
  layerStore?: boolean;
  /** Targets served at once; default DEFAULT_PARALLEL. */
  parallel?: number;
  /** Attempts per target and the pauses between them; default DEFAULT_BACKOFF. */
  policy?: BackoffPolicy;
  /** Resumable part size. */
  partBytes?: number;
  /** The first target's deployment id; default a fresh UUID (each target has its own). */
  deploymentId?: string;
  /** The release this push is part of (`ferry deploy`): every target's manifest names it, under the signature. */
  release?: ReleaseRef;
  /** See DEFAULT_SLOW_AFTER_MS. */
  slowAfterMs?: number;
  /** Milliseconds of acknowledgements from every streamed target before the link is judged; default DEFAULT_PROBE_MS. */
  probeMs?: number;
  /** Package bytes every streamed target must have acknowledged in that time besides; default DEFAULT_PROBE_BYTES. */
  probeBytes?: number;
  /**
   * Runs once the first target proved its identity and before the image is looked up (a build);
   * its events share that target's deployment id. A failure ends the push with that error.
   */
  prepare?: (context: { deploymentId: string; host: string }) => Promise<void>;
  /**
   * Interrupts the push (Ctrl-C): requests in flight are cut off, a stream is deleted on its
   * receiver, and no step starts any more; every target not done ends FERRY_ERR_SENDER_INTERRUPTED.
   */
  signal?: AbortSignal;
}

/** A package's size as far as it is known: a stream's is only estimated (from the image's) until its last byte. */
export interface PackageTotal {
  bytes: number;
  estimated: boolean;
}

export interface DeliveryDeps {
  images: ImageSource;
  events: EventSink;
  credentials: Credentials;
  /** CloudEvents source of the sender, e.g. ferry://sender/<hostname>. */
  source: string;
  /** Records each successful deployment as the registry's desired state. */
  desired?: DesiredRecorder | undefined;
  clock?: Clock;
  /** Told what the targets hold, before anything is packaged (tests change a target then). */
  onNegotiated?: (layers: TargetLayers[]) => Promise<void> | void;
  onStage?: (stage: 'package' | 'transfer', detail: { bytes?: number }) => void;
  /** Package bytes this target holds or was handed so far, and the package's size when known. */
  onProgress?: (url: string, position: number, total?: PackageTotal) => void;
  /** Every package byte reached this target; its receiver now loads and starts the image. */
  onSent?: (url: string) => void;
  /**
   * A state the receiver's deployment entered meanwhile (LOADING, DEPLOYING, VALIDATING…), from its
   * journal; VALIDATING again with the health check's progress after each probe.
   */
  onDeployState?: (url: string, state: DeploymentState, healthCheck?: HealthCheckProgress) => void;
  /** A target's attempt failed and will be tried again after `delayMs`. */
  onRetry?: (url: string, attempt: number, delayMs: number, err: unknown) => void;
  /** This target is finished, one way or the other. */
  onDone?: (result: TargetResult) => void;
}

/** The states a target passes through; `path` in its result lists them in order. */
export type TargetState = 'probe' | 'stream' | 'spool' | 'whole' | 'retry' | 'done' | 'failed';

export interface TargetResult {
  url: string;
  /** The receiver's host id, once it proved it. */
  host?: string;
  /** Kept by every attempt at one package, so a retried upload never deploys twice. */
  deploymentId: string;
  ok: boolean;
  /** The receiver's deployment state (`COMPLETED`, `FAILED`, `ROLLED_BACK`…), or `FAILED` when it never got one. */
  state: string;
  attempts: number;
  /** Package bytes handed to this target's sockets over all attempts (resent ones included). */
  bytes: { sent: number };
  durationMs: number;
  error?: { code: string; message: string };
  deployment?: DeploymentResult;
  /** The partial package was refused (a layer went away) and the whole one was sent after it. */
  fullAfterRefusal?: boolean;
  /** Whether the package that deployed went as a stream rather than a spooled upload. */
  streamed: boolean;
  /** The states this target went through, e.g. probe, stream, spool, retry, spool, done. */
  path: TargetState[];
}

export interface DeliveryResult {
  ok: boolean;
  service: string;
  image: string;
  imageId: string;
  compression: Compression;
  /** What compression was chosen for the links, and why. */
  compressionChoice: CompressionDecision;
  /** The planned package: the image's archive bytes, and what went on the wire once compressed. */
  bytes: { image: number; package: number };
  exportedBy: ExportedBy;
  layers: { total: number; omitted: string[]; targets: TargetLayers[] };
  /** Milliseconds; the package's stages overlap (see PushResult.timings). */
  timings: { package: number; total: number; negotiate: number; save: number; compress: number; hash: number };
  /** How often the image was read and compressed: once each, unless a fallback had to read it again. */
  reads: Reads;
  targets: TargetResult[];
}

/** What {@link deliver} adds for the single-target `push`: the error a failed target ended with, and its own package's facts. */
export interface Delivered {
  result: DeliveryResult;
  failures: Map<string, unknown>;
  packages: Map<string, DeliveredPackage>;
}

/** The package that reached one target (or the last one tried). */
export interface DeliveredPackage {
  size: number;
  rawBytes: number;
  compression: Compression;
  omitted: string[];
  exportedBy: ExportedBy;
  timings: PackageTimings;
  packageMs: number;
  sendMs: number;
  present: number;
}

/**
 * Every push goes through here, to one target or two hundred (`ferry push`, `ferry deploy`, the
 * sender service): identities are proven and layers asked of every target at once, compression is
 * chosen for the links, then each target runs its own state machine (probe → stream | spool →
 * whole package → retry → done | failed). Targets that stream share one read of the image (a
 * round, round.ts); those that leave it, or come after it, share one spooled copy. One target's
 * failure never stops another. Throws only when the push cannot start at all (no such image, a
 * failed `prepare`).
 */
export async function deliver(request: DeliveryRequest, deps: DeliveryDeps): Promise<Delivered> {
  const started = performance.now();
  const clock = deps.clock ?? systemClock;
  const policy = request.policy ?? DEFAULT_BACKOFF;
  const machines = request.targets.map((target, index) => new TargetMachine(target, index === 0 && request.deploymentId ? request.deploymentId : randomUUID(), request, deps, clock, policy));

  const negotiateStarted = performance.now();
  await Promise.all(machines.map((m) => m.identify()));
  // No target proved who it is and none gets another attempt: nothing is worth packaging.
  if (policy.attempts <= 1 && machines.every((m) => m.probeError !== undefined) && machines[0]) throw machines[0].probeError as Error;
  const first = machines[0];
  if (request.prepare && first) {
    if (first.probeError !== undefined) throw first.probeError as Error;
    await request.prepare({ deploymentId: first.deploymentId, host: first.host ?? '' });
  }
  const image = await inspectImage(deps.images, request.image);
  const answers = await Promise.all(machines.map((m) => m.negotiate(image.diffIds)));
  await deps.onNegotiated?.(answers);
  const omit = layersToOmit(image.diffIds, answers);
  let decision = await chooseCompression(request.compression, {
    urls: request.targets.map((t) => t.url), omitted: omit.length, layers: image.diffIds.length, streamed: request.stream !== false,
  });
  const negotiateMs = Math.round(performance.now() - negotiateStarted);

  const reads: Reads = { exports: 0, compressions: 0 };
  // The streamed production running now, which tells how large its package is likely to be.
  let meter: ProductionMeter | undefined;
  const producer: Producer = { images: deps.images, image, compression: decision.compression, level: decision.level, reads, onMeter: (m) => { meter = m; }, signal: request.signal };
  const planned: Source = { omit, layerStore: request.layerStore !== false };
  const spools = new Spools(producer, planned);
  let transferring = false;
  const transferStage = (bytes: number): void => {
    if (transferring) return;
    transferring = true;
    deps.onStage?.('transfer', { bytes });
  };
  const plan: Plan = { transferStage, image, producer, planned, spools, answers, started, meter: () => meter };
  for (const m of machines) m.plan = plan;
  deps.onStage?.('package', {});
  try {
    // The first `parallel` targets whose identity is proven stream together from one read; the
    // others (and any that leave the round) take the spooled copy it writes on the way.
    const parallel = Math.max(1, Math.min(request.parallel ?? DEFAULT_PARALLEL, machines.length));
    const streaming = request.stream === false ? [] : machines.filter((m) => m.host !== undefined).slice(0, parallel);
    const participants = streaming.map((m) => m.asParticipant());
    const round = participants.length === 0 ? undefined : streamRound(participants, {
      producer, source: planned, spoolKind: 'planned', slowAfterMs: request.slowAfterMs ?? DEFAULT_SLOW_AFTER_MS,
      spools: machines.length > 1 ? spools : undefined, signal: request.signal,
      beforeFirstByte: () => flushWithin(deps.events, EVENT_FLUSH_WAIT_MS),
      measure: decision.measureLink ? {
        probeMs: request.probeMs ?? DEFAULT_PROBE_MS, probeBytes: request.probeBytes ?? DEFAULT_PROBE_BYTES,
        onDecision: (measured) => { decision = { compression: measured.compression, ...(measured.level === undefined ? {} : { level: measured.level }), reason: measured.reason, measured: true }; },
      } : undefined,
    });
    round?.catch(() => undefined);
    streaming.forEach((m, i) => { m.joined = round?.then((outcomes) => (participants[i] ? outcomes.get(participants[i]) : undefined)); });

    const queue = [...machines];
    const worker = async (): Promise<void> => {
      for (let m = queue.shift(); m; m = queue.shift()) {
        const result = await m.run();
        deps.onDone?.(result);
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    await round;
    if (decision.measureLink) {
      decision = { compression: decision.compression, reason: 'private addresses, uncompressed: the push ended before its link could be measured', measured: false };
    }

    const main = mainPackage(plan, machines);
    const results = machines.map((m) => m.result());
    return {
      result: {
        ok: results.every((r) => r.ok), service: request.service.name, image: image.ref, imageId: image.id,
        compression: main?.compression ?? decision.compression, compressionChoice: decision,
        bytes: { image: main?.rawBytes ?? 0, package: main?.size ?? 0 },
        exportedBy: main?.exportedBy ?? (planned.layerStore ? 'layer-store' : 'docker-save'),
        layers: { total: image.diffIds.length, omitted: main?.omitted ?? omit, targets: answers },
        timings: {
          package: main?.packageMs ?? 0, total: Math.round(performance.now() - started), negotiate: negotiateMs,
          save: main?.timings.save ?? 0, compress: main?.timings.compress ?? 0, hash: main?.timings.hash ?? 0,
        },
        reads, targets: results,
      },
      failures: new Map(machines.flatMap((m) => (m.failure === undefined ? [] : [[m.url, m.failure] as [string, unknown]]))),
      packages: new Map(machines.flatMap((m) => (m.delivered ? [[m.url, m.delivered] as [string, DeliveredPackage]] : []))),
    };
  } finally {
    await spools.remove();
  }
}

interface Plan {
  /** Tells the caller the transfer stage began, once for the whole push. */
  transferStage(bytes: number): void;
  image: ImageFacts;
  producer: Producer;
  planned: Source;
  spools: Spools;
  answers: TargetLayers[];
  started: number;
  meter(): ProductionMeter | undefined;
}

/** The package most targets got: the first delivered one, else the planned spool if one was made. */
function mainPackage(plan: Plan, machines: TargetMachine[]): DeliveredPackage | undefined {
  return machines.find((m) => m.delivered && m.delivered.omitted.length === plan.planned.omit.length)?.delivered
    ?? machines.find((m) => m.delivered)?.delivered;
}

type Step =
  | { state: 'probe' }
  | { state: 'stream'; whole: boolean }
  | { state: 'spool'; whole: boolean }
  | { state: 'retry'; next: Step; err: unknown }
  | { state: 'done'; deployment: DeploymentResult }
  | { state: 'failed'; err: unknown };

/**
 * One target's delivery, as an explicit state machine: every fallback is a transition here, not
 * an exception type caught elsewhere. probe (prove the identity) → stream (a round, or a stream
 * of its own for the whole image) | spool (the spooled package, one-shot or resumable) → whole
 * (after the receiver refused a partial package) → retry (pause by the backoff, breaker
 * permitting) → done | failed.
 */
class TargetMachine {
  readonly url: string;
  readonly #client: ReceiverClient;
  readonly #request: DeliveryRequest;
  readonly #deps: DeliveryDeps;
  readonly #clock: Clock;
  readonly #policy: BackoffPolicy;
  readonly #breaker: CircuitBreaker<[() => Promise<unknown>], unknown>;
  readonly #started = performance.now();
  plan!: Plan;
  /** The streamed round this target was planned into, if any: its first stream step joins it. */
  joined: Promise<RoundOutcome | undefined> | undefined;
  host: string | undefined;
  probeError: unknown;
  deploymentId: string;
  failure: unknown;
  delivered: DeliveredPackage | undefined;
  #present = 0;
  #attempts = 1;
  #sent = 0;
  #path: TargetState[] = [];
  #deployment: DeploymentResult | undefined;
  #fullAfterRefusal = false;
  #streamed = false;
  #announced = false;
  #unwatch: (() => void) | undefined;
  /** One manifest text per spooled package, reused by every attempt: the receiver finds a live upload by it. */
  readonly #manifests = new Map<BuiltPackage, string>();

  constructor(target: ResolvedTarget, deploymentId: string, request: DeliveryRequest, deps: DeliveryDeps, clock: Clock, policy: BackoffPolicy) {
    this.url = target.url;
    this.deploymentId = deploymentId;
    this.#client = new ReceiverClient({ url: target.url, credentials: deps.credentials, hostKey: target.hostKey, signal: request.signal });
    this.#request = request;
    this.#deps = deps;
    this.#clock = clock;
    this.#policy = policy;
    this.#breaker = new CircuitBreaker(async (call: () => Promise<unknown>) => call(), {
      ...BREAKER,
      // A 4xx (bad key, policy, refused package) is the receiver working as meant, not failing.
      errorFilter: (err: unknown) => isFerryError(err) && !isRetryable(err),
    });
  }

  /** The planning probe: its failure is not final, the target's own probe state tries again. */
  async identify(): Promise<void> {
    try {
      this.host = await this.#client.identify();
    } catch (err) {
      // A malformed URL is the caller's mistake, whichever target it is.
      if (isFerryError(err, 'FERRY_ERR_USAGE')) throw err;
      this.probeError = err;
    }
  }

  async negotiate(diffIds: readonly string[]): Promise<TargetLayers> {
    if (this.#request.negotiateLayers === false) return { url: this.url, present: 0, unanswered: 'negotiation off' };
    if (this.host === undefined) return { url: this.url, present: 0, unanswered: (this.probeError as Error | undefined)?.message ?? 'no identity' };
    const answer = await this.#client.layers(diffIds);
    this.#present = answer.present;
    return answer;
  }

  async run(): Promise<TargetResult> {
    let step: Step = this.host === undefined ? { state: 'probe' } : this.joined ? { state: 'stream', whole: false } : { state: 'spool', whole: false };
    try {
      for (;;) {
        this.#stopWatching();
        if (this.#request.signal?.aborted && step.state !== 'done' && !(step.state === 'failed' && isFerryError(step.err))) step = { state: 'failed', err: interrupted(step) };
        this.#path.push(step.state === 'stream' || step.state === 'spool' ? (step.whole && this.#fullAfterRefusal ? 'whole' : step.state) : step.state);
        switch (step.state) {
          case 'probe': step = await this.#probe(); break;
          case 'stream': step = await this.#stream(step.whole); break;
          case 'spool': step = await this.#spool(step.whole); break;
          case 'retry': step = await this.#retry(step); break;
          case 'done':
            this.#deployment = step.deployment;
            return this.result();
          case 'failed':
            this.failure = step.err;
            return this.result();
        }
      }
    } finally {
      this.#stopWatching();
      this.#breaker.shutdown();
    }
  }

  result(): TargetResult {
    const error = this.failure === undefined ? undefined
      : isFerryError(this.failure) ? this.failure : new FerryError('FERRY_ERR_INTERNAL', { message: (this.failure as Error).message, cause: this.failure });
    const record = this.#deployment ?? (error?.details?.deployment as DeploymentResult | undefined);
    return {
      // A failed deployment renews the id for an attempt that may follow: the one to report (and
      // that `ferry status ID` finds) is the id the receiver recorded.
      url: this.url, ...(this.host ? { host: this.host } : {}), deploymentId: record?.deploymentId ?? this.deploymentId,
      ok: error === undefined && record?.state === 'COMPLETED', state: record?.state ?? 'FAILED', attempts: this.#attempts,
      bytes: { sent: this.#sent }, durationMs: Math.round(performance.now() - this.#started),
      ...(error ? { error: { code: error.code, message: error.message } } : {}), ...(record ? { deployment: record } : {}),
      ...(this.#fullAfterRefusal ? { fullAfterRefusal: true } : {}), streamed: this.#streamed, path: this.#path,
    };
  }

  async #probe(): Promise<Step> {
    try {
      this.host = await this.#guarded(() => this.#client.identify());
      return { state: 'spool', whole: false };
    } catch (err) {
      return this.#failed(err, { state: 'probe' });
    }
  }

  /** The planned round on the first stream step; a stream of its own (the whole image) after a refused partial one. */
  async #stream(whole: boolean): Promise<Step> {
    const joined = this.joined;
    this.joined = undefined;
    const host = this.host ?? '';
    const solo = this.#participant(host);
    const outcome = joined && !whole ? await joined : (await streamRound([solo], {
      producer: this.plan.producer, source: { ...this.plan.planned, omit: [] }, spoolKind: 'whole',
      beforeFirstByte: () => flushWithin(this.#deps.events, EVENT_FLUSH_WAIT_MS), signal: this.#request.signal,
    })).get(solo);
    if (!outcome) return { state: 'spool', whole };
    switch (outcome.kind) {
      case 'done': {
        const { outcome: streamed, omit } = outcome;
        this.#sent += streamed.bodyBytes;
        this.#streamed = true;
        this.#record(streamed.produced, streamed.packageMs, streamed.sendMs);
        if (streamed.result.state === 'COMPLETED') {
          const opening = JSON.parse(this.#openingOf(omit)) as ManifestInput;
          await this.#deps.desired?.record({ host, url: this.url, manifest: { ...opening, package: { ...opening.package, size: streamed.produced.size, digest: streamed.produced.digest } } });
        }
        return { state: 'done', deployment: streamed.result };
      }
      case 'spool':
        if (!outcome.idFree) this.#renewId();
        return { state: 'spool', whole };
      case 'failed':
        if (!outcome.idFree) this.#renewId();
        if (this.#refusedPartial(outcome.err, whole ? [] : this.plan.planned.omit)) return { state: 'stream', whole: true };
        return this.#failed(outcome.err, { state: 'spool', whole });
    }
  }

  async #spool(whole: boolean): Promise<Step> {
    let pkg: BuiltPackage;
    try {
      pkg = await this.plan.spools.get(whole ? 'whole' : 'planned');
    } catch (err) {
      // The package itself cannot be made: no retry changes that.
      return { state: 'failed', err };
    }
    const host = this.host ?? '';
    const manifestJson = this.#manifestOf(pkg);
    const resumable = pkg.size >= (this.#request.resumableThreshold ?? RESUMABLE_THRESHOLD_BYTES);
    // Where the package stands on the way to the receiver: each step forward was handed to its
    // socket, and a call sent again after a cut goes back to where the receiver stands (the
    // session's offset, or 0 for a one-shot upload), so resent bytes count again.
    let position = 0;
    const transferStarted = performance.now();
    this.#announce(pkg.size, pkg.compression);
    this.plan.transferStage(pkg.size);
    const common = {
      manifestJson, packagePath: pkg.path, packageSize: pkg.size,
      onProgress: (at: number) => {
        this.#sent += Math.max(0, at - position);
        position = at;
        this.#deps.onProgress?.(this.url, at, { bytes: pkg.size, estimated: false });
      },
      onSent: () => {
        this.#emit('transfer.completed', { target: this.url, bytes: pkg.size, compression: pkg.compression, durationMs: Math.round(performance.now() - transferStarted) });
        this.#deployStarted();
      },
    };
    try {
      // A call cut short by a lost connection or a restarting receiver is sent again within this
      // attempt, with the one retry policy, whatever the attempts allowed (--retries): the
      // resumable upload's calls go on from where the receiver's session stands, and a deploy
      // call the receiver's stop cut short runs that deployment again (docs/protocol.md §10.4); a
      // one-shot upload is sent again whole under the same deployment id, which the receiver
      // answers from its journal if it got that far. The next attempt, if any, reopens the session.
      const outcome = await this.#guarded<UploadOutcome>(() => (resumable
        ? uploadResumable({
          ...common, url: this.url, credentials: this.#deps.credentials, audience: host, client: this.#client, clock: this.#clock,
          ...(this.#request.partBytes ? { partBytes: this.#request.partBytes } : {}), onSession: (offset) => { position = offset; },
        })
        : retry(() => this.#client.sendPackage(common), { policy: DEFAULT_BACKOFF, clock: this.#clock, shouldRetry: isCallCut })));
      this.#record(pkg, pkg.durationMs, Math.round(performance.now() - transferStarted));
      if (outcome.result.state === 'COMPLETED') await this.#deps.desired?.record({ host, url: this.url, manifest: JSON.parse(manifestJson) as ManifestInput });
      return { state: 'done', deployment: outcome.result };
    } catch (err) {
      this.#record(pkg, pkg.durationMs, Math.round(performance.now() - transferStarted));
      if (this.#refusedPartial(err, pkg.omittedLayers)) {
        // A new package: a new manifest, under a new id if the receiver recorded this one.
        if (isFerryError(err) && err.details?.deployment !== undefined) this.#renewId();
        return { state: 'spool', whole: true };
      }
      return this.#failed(err, { state: 'spool', whole });
    }
  }

  async #retry(step: Extract<Step, { state: 'retry' }>): Promise<Step> {
    await pause(this.#attempts, { policy: this.#policy, clock: this.#clock, onRetry: (n, delayMs, err) => this.#deps.onRetry?.(this.url, n, delayMs, err) }, step.err);
    this.#attempts += 1;
    return step.next;
  }

  /** After a failure: another attempt if it can help and the policy allows one, else the end. */
  #failed(err: unknown, next: Step): Step {
    if (this.#attempts >= this.#policy.attempts || !isRetryable(err)) return { state: 'failed', err };
    return { state: 'retry', next, err };
  }

  /** A partial package refused because a layer it leaves out went away meanwhile: the whole one follows. */
  #refusedPartial(err: unknown, omitted: readonly string[]): boolean {
    if (omitted.length === 0 || !isFerryError(err, 'FERRY_ERR_LAYERS_MISSING')) return false;
    this.#fullAfterRefusal = true;
    return true;
  }

  async #guarded<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await this.#breaker.fire(call) as T;
    } catch (err) {
      if (this.#breaker.opened && !isFerryError(err) && (err as { code?: string }).code === 'EOPENBREAKER') {
        throw new FerryError('FERRY_ERR_RECEIVER_CIRCUIT_OPEN', { message: `${this.url} kept failing; stopped trying it`, details: { target: this.url } });
      }
      throw err;
    }
  }

  #renewId(): void {
    this.deploymentId = randomUUID();
    this.#manifests.clear();
  }

  /** This target as a round sees it. */
  #participant(host: string): Participant {
    const participant: Participant = {
      client: this.#client, host,
      opening: (omit) => this.#openingOf(omit),
      renewId: () => this.#renewId(),
      onOpened: () => {
        this.plan.transferStage(0);
        // The size is not known before the last byte: the event says 0.
        this.#announce(0, this.plan.producer.compression);
      },
      onProgress: (acknowledged) => this.#deps.onProgress?.(this.url, acknowledged, this.#streamEstimate()),
      onSent: (bytes) => {
        this.#emit('transfer.completed', { target: this.url, bytes, compression: this.plan.producer.compression, durationMs: Math.round(performance.now() - this.#started) });
        this.#deployStarted();
      },
    };
    return participant;
  }

  /** A stream's size before its last byte, as far as its production tells (see meteredSize). */
  #streamEstimate(): PackageTotal | undefined {
    const meter = this.plan.meter();
    return meter ? meteredSize(meter) : undefined;
  }

  /** Every byte is there: the receiver deploys now, and its journal says how far it got until it answers. */
  #deployStarted(): void {
    this.#deps.onSent?.(this.url);
    const onState = this.#deps.onDeployState;
    if (!onState) return;
    this.#stopWatching();
    this.#unwatch = watchDeployment(this.#client, this.deploymentId, (state, check) => onState(this.url, state, check));
  }

  #stopWatching(): void {
    this.#unwatch?.();
    this.#unwatch = undefined;
  }

  /** The participant the planned round knows this target by. */
  asParticipant(): Participant {
    return this.#participant(this.host ?? '');
  }

  #openingOf(omit: readonly string[]): string {
    return JSON.stringify(this.#manifest({ format: 'docker-archive', compression: this.plan.producer.compression, ...(omit.length > 0 ? { omittedLayers: [...omit] } : {}) }));
  }

  #manifestOf(pkg: BuiltPackage): string {
    let text = this.#manifests.get(pkg);
    if (text === undefined) {
      text = JSON.stringify(this.#manifest({
        format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest,
        ...(pkg.omittedLayers.length > 0 ? { omittedLayers: pkg.omittedLayers } : {}),
      }));
      this.#manifests.set(pkg, text);
    }
    return text;
  }

  #manifest(pkg: Record<string, unknown>): ManifestInput {
    const image = this.plan.image;
    return {
      schema: 'ferry.manifest/v1', deploymentId: this.deploymentId, createdAt: new Date().toISOString(),
      image: { ref: image.ref, id: image.id, diffIds: image.diffIds },
      package: pkg as ManifestInput['package'],
      service: { env: {}, network: 'bridge', ...this.#request.service },
      ...(this.#request.release ? { release: this.#request.release } : {}),
    };
  }

  #record(pkg: { size: number; rawBytes: number; compression: Compression; omittedLayers: string[]; exportedBy: ExportedBy; timings: PackageTimings }, packageMs: number, sendMs: number): void {
    this.delivered = {
      size: pkg.size, rawBytes: pkg.rawBytes, compression: pkg.compression, omitted: pkg.omittedLayers, exportedBy: pkg.exportedBy,
      timings: pkg.timings, packageMs, sendMs, present: this.#present,
    };
  }

  /** transfer.started, once per target: watchers see one transfer whatever the fallbacks. */
  #announce(bytes: number, compression: Compression): void {
    if (this.#announced) return;
    this.#announced = true;
    this.#emit('transfer.started', { target: this.url, bytes, compression });
  }

  #emit<T extends EventType>(type: T, data: Omit<EventData[T], 'deploymentId' | 'host' | 'service' | 'image' | 'imageId'>): void {
    const host = this.host;
    if (host === undefined) return;
    const image = this.plan.image;
    const service = this.#request.service.name;
    const release = this.#request.release;
    this.#deps.events.publish(createEvent(type, {
      source: this.#deps.source, host, service, deploymentId: this.deploymentId,
      data: {
        deploymentId: this.deploymentId, host, service, image: image.ref, imageId: image.id,
        ...(release ? { release: { id: release.id, phase: release.phase, ...(release.wave === undefined ? {} : { wave: release.wave }) } } : {}), ...data,
      } as unknown as EventData[T],
    }));
  }
}

/** How a target ends once the push was interrupted before it was done; what cut it off is the cause. */
function interrupted(step: Step): FerryError {
  const cause = step.state === 'failed' ? step.err : undefined;
  return new FerryError('FERRY_ERR_SENDER_INTERRUPTED', { message: 'The push was interrupted before this target was done', ...(cause === undefined ? {} : { cause }) });
}

async function flushWithin(events: EventSink, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([events.flush(), new Promise<void>((resolve) => { timer = setTimeout(resolve, ms); })]);
  clearTimeout(timer);
}
