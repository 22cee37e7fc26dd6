import { rm } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import { isFerryError } from '@ferry/protocol';
import { Broadcast, SlowBranch } from './broadcast.ts';
import { LinkProbe, cpuShare, decideFromMeasure, sampleZstd, type MeasuredDecision } from './compression.ts';
import { spoolPath, spooled, type BuiltPackage, type ProducedPackage } from './package.ts';
import { produceInto, sourceFallback, type Producer, type Source, type SpoolKind, type Spools } from './productions.ts';
import type { ReceiverClient } from './receiver-client.ts';
import { StreamUnavailable, StreamUpload, type StreamOutcome } from './stream.ts';

/** Bytes of the image kept to try zstd's levels on when the link is measured. */
const SAMPLE_BYTES = 4 * 1024 ** 2;

/** What a streamed round needs of one target. */
export interface Participant {
  client: ReceiverClient;
  host: string;
  /** The opening manifest (docs/protocol.md §10.6) of a package that leaves out `omit`, under the target's current deployment id. */
  opening(omit: readonly string[]): string;
  /** The id may still be held by the receiver (a stream not known to be aborted): the next package needs another. */
  renewId(): void;
  onOpened(): void;
  onProgress(acknowledged: number): void;
  /** Every part is acknowledged; `bytes` is the package's size, known now. */
  onSent(bytes: number): void;
}

/** How a round ended for one target. */
export type RoundOutcome =
  | { kind: 'done'; outcome: StreamOutcome<ProducedPackage>; omit: readonly string[] }
  /** The stream cannot carry it (not offered, went away) or it was slower than the rest: the spooled package can. */
  | { kind: 'spool'; reason: 'unavailable' | 'vanished' | 'slow'; err: unknown; idFree: boolean }
  | { kind: 'failed'; err: unknown; idFree: boolean };

export interface RoundOptions {
  producer: Producer;
  source: Source;
  /** Where a spooled copy is offered, for targets that leave the round or come after it; none for a round of one. */
  spools?: Spools | undefined;
  spoolKind: SpoolKind;
  /** See BroadcastOptions.slowAfterMs; none for a round of one, which has no one to be slower than. */
  slowAfterMs?: number | undefined;
  /** Awaited once every stream is open, before the first byte: lets event watchers see the transfers start first. */
  beforeFirstByte?: () => Promise<void>;
  /**
   * Measure the link while an uncompressed round runs (a {@link LinkProbe} of `probeMs` and
   * `probeBytes`) and let {@link decideFromMeasure} choose: a compression that ends the push
   * sooner, even from the first byte again, restarts the round with it (once). Every judgement
   * goes to `onDecision`; the last one stands.
   */
  measure?: { probeMs: number; probeBytes: number; onDecision: (decision: MeasuredDecision) => void } | undefined;
  /** Ends the round: the production stops and every stream fails (and is deleted on its receiver). */
  signal?: AbortSignal | undefined;
}

/** The round is started again with another compression: not a failure of anyone's. */
class Recompress extends Error {
  override readonly name = 'Recompress';
}

/**
 * Streams one package to several targets from one read of the image (docs/protocol.md §10.6):
 * one export, one compression, one BLAKE3, fanned out through a {@link Broadcast} with
 * backpressure, while a spooled copy is written for whoever leaves the round. A target's own
 * trouble (no streams, a slow or failed link) ends only its part of the round. A production the
 * source cannot finish (held layers that cannot be left out, an unreadable layer store) starts the
 * round again for the targets it stopped, from the source {@link sourceFallback} names.
 */
export async function streamRound(participants: readonly Participant[], options: RoundOptions): Promise<Map<Participant, RoundOutcome>> {
  const outcomes = new Map<Participant, RoundOutcome>();
  let source = options.source;
  let active = [...participants];
  let measure = options.measure;
  for (;;) {
    const { results, productionError, recompressed } = await attempt(active, source, { ...options, measure });
    if (recompressed) measure = undefined;
    const again: Participant[] = [];
    for (const [participant, result] of results) {
      if (productionError !== undefined && result.kind === 'failed' && (recompressed || causedBy(result.err, productionError))) again.push(participant);
      else outcomes.set(participant, result);
    }
    const next = productionError === undefined ? undefined : recompressed ? source : sourceFallback(productionError, source);
    if (!next || again.length === 0) {
      for (const participant of again) outcomes.set(participant, { kind: 'failed', err: productionError, idFree: true });
      return outcomes;
    }
    for (const participant of again) {
      const result = results.get(participant);
      if (result?.kind !== 'done' && result?.idFree === false) participant.renewId();
    }
    source = next;
    active = again;
  }
}

async function attempt(participants: readonly Participant[], source: Source, options: RoundOptions): Promise<{ results: Map<Participant, RoundOutcome>; productionError: unknown; recompressed: boolean }> {
  const path = options.spools ? spoolPath(options.producer.image, options.producer.compression) : undefined;
  let measure = options.producer.compression === 'none' ? options.measure : undefined;
  const broadcast = new Broadcast({ slowAfterMs: options.slowAfterMs, ...(path ? { spoolPath: path } : {}), ...(measure ? { sampleBytes: SAMPLE_BYTES } : {}) });
  // Acknowledged bytes per target: the slowest one's pace is what the link carries.
  const acknowledged = new Map<Participant, number>(participants.map((p) => [p, 0]));
  let productionStarted = 0;
  let recompressed = false;
  const probe = measure ? new LinkProbe({ windowMs: measure.probeMs, minBytes: measure.probeBytes }) : undefined;
  let samples: ReturnType<typeof sampleZstd> | undefined;
  const checkpoint = (): void => {
    if (!measure || !probe || recompressed || broadcast.writableFinished) return;
    const slowest = Math.min(...acknowledged.values());
    const now = performance.now();
    const reading = probe.observe(now, slowest);
    if (!reading) return;
    const elapsed = Math.max(1, now - productionStarted);
    const total = Math.max(options.producer.image.size ?? 0, slowest);
    // Tried once, on the first bytes: the sample is what it is, and zstd costs the event loop time.
    samples ??= sampleZstd(broadcast.sample);
    const decision = decideFromMeasure({
      linkBytesPerSecond: reading.bytesPerSecond,
      exportBytesPerSecond: (broadcast.bytes * 1000) / Math.max(1, elapsed - broadcast.waitedMs),
      remainingBytes: total - slowest, totalBytes: total, sentBytes: slowest, samples,
      cpuShare: cpuShare(availableParallelism(), loadavg()[0] ?? 0),
    });
    measure.onDecision(decision);
    if (!decision.restart) return;
    measure = undefined;
    recompressed = true;
    options.producer.compression = decision.compression;
    options.producer.level = decision.level;
    broadcast.destroy(new Recompress(decision.reason));
  };
  const interrupt = (): void => { broadcast.destroy(options.signal?.reason as Error); };
  options.signal?.addEventListener('abort', interrupt, { once: true });
  if (options.signal?.aborted) interrupt();
  let startProduction!: () => void;
  const gate = new Promise<void>((resolve) => { startProduction = resolve; });
  // Settles once every stream opened or failed to: the production starts then, so no stream's
  // first bytes wait on another's opening, and nothing is read for no one.
  const ready: Promise<void>[] = [];
  const production = gate.then(() => produceInto(options.producer, broadcast, source));
  production.catch(() => undefined);
  // Registered before any stream waits on the production, so it is set when their onSent runs.
  let size = 0;
  production.then((produced) => { size = produced.size; }, () => undefined);
  if (path) {
    options.spools?.offer(options.spoolKind, production.then((produced): BuiltPackage => spooled(path, produced), async (err: unknown) => {
      // What a failed production wrote is a partial copy no one may take: it goes.
      await rm(path, { force: true });
      throw err;
    }));
  }

  const runs = participants.map(async (participant): Promise<[Participant, RoundOutcome]> => {
    const branch = broadcast.attach();
    let opened!: () => void;
    ready.push(new Promise<void>((resolve) => { opened = resolve; }));
    const upload = new StreamUpload({
      url: participant.client.url, credentials: participant.client.credentials, audience: participant.host, client: participant.client,
      manifestJson: participant.opening(source.omit),
      onOpened: () => participant.onOpened(),
      onProgress: (bytes) => {
        acknowledged.set(participant, bytes);
        participant.onProgress(bytes);
        checkpoint();
      },
      onSent: () => participant.onSent(size),
    });
    try {
      const outcome = await upload.run(async (destination) => {
        // Given before the gate opens: the production's first chunk already waits for it.
        const fed = branch.feed(destination);
        fed.catch(() => undefined);
        opened();
        await gate;
        await fed;
        return production;
      });
      return [participant, { kind: 'done', outcome, omit: source.omit }];
    } catch (err) {
      acknowledged.delete(participant);
      broadcast.detach(branch);
      const idFree = upload.idFree && !(isFerryError(err) && err.details?.deployment !== undefined);
      if (err instanceof StreamUnavailable) return [participant, { kind: 'spool', reason: err.reason, err, idFree }];
      if (err instanceof SlowBranch) return [participant, { kind: 'spool', reason: 'slow', err, idFree }];
      return [participant, { kind: 'failed', err, idFree }];
    } finally {
      // A stream that never opened is no one to wait for.
      opened();
    }
  });
  await Promise.all(ready);
  await options.beforeFirstByte?.();
  productionStarted = performance.now();
  startProduction();
  const settled = await Promise.all(runs);
  const productionError = await production.then(() => undefined, (err: unknown) => err);
  options.signal?.removeEventListener('abort', interrupt);
  return { results: new Map(settled), productionError, recompressed };
}

/**
 * Whether a target's failure came from the production rather than from its receiver: the error
 * itself, or one the stream carried from it (the receiver's answers are FerryErrors with a status).
 */
function causedBy(err: unknown, productionError: unknown): boolean {
  if (err === productionError) return true;
  return !isFerryError(err) && !(err instanceof SlowBranch) && !(err instanceof StreamUnavailable);
}
