import { pipeline } from 'node:stream/promises';
import { isFerryError } from '@ferry/protocol';
import { Broadcast, SlowBranch } from './broadcast.ts';
import { spoolPath, spooled, type BuiltPackage, type ProducedPackage } from './package.ts';
import { produceInto, sourceFallback, type Producer, type Source, type SpoolKind, type Spools } from './productions.ts';
import type { ReceiverClient } from './receiver-client.ts';
import { StreamUnavailable, StreamUpload, type StreamOutcome } from './stream.ts';

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
  onSent(): void;
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
  slowAfterMs: number;
  /** Awaited once every stream is open, before the first byte: lets event watchers see the transfers start first. */
  beforeFirstByte?: () => Promise<void>;
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
  for (;;) {
    const { results, productionError } = await attempt(active, source, options);
    const again: Participant[] = [];
    for (const [participant, result] of results) {
      if (productionError !== undefined && result.kind === 'failed' && causedBy(result.err, productionError)) again.push(participant);
      else outcomes.set(participant, result);
    }
    const next = productionError === undefined ? undefined : sourceFallback(productionError, source);
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

async function attempt(participants: readonly Participant[], source: Source, options: RoundOptions): Promise<{ results: Map<Participant, RoundOutcome>; productionError: unknown }> {
  const path = options.spools ? spoolPath(options.producer.image, options.producer.compression) : undefined;
  const broadcast = new Broadcast({ slowAfterMs: options.slowAfterMs, ...(path ? { spoolPath: path } : {}) });
  let startProduction!: () => void;
  const gate = new Promise<void>((resolve) => { startProduction = resolve; });
  // Settles once every stream opened or failed to: the production starts then, so no stream's
  // first bytes wait on another's opening, and nothing is read for no one.
  const ready: Promise<void>[] = [];
  const production = gate.then(() => produceInto(options.producer, broadcast, source));
  production.catch(() => undefined);
  if (path) options.spools?.offer(options.spoolKind, production.then((produced): BuiltPackage => spooled(path, produced)));

  const runs = participants.map(async (participant): Promise<[Participant, RoundOutcome]> => {
    const branch = broadcast.attach();
    let opened!: () => void;
    ready.push(new Promise<void>((resolve) => { opened = resolve; }));
    const upload = new StreamUpload({
      url: participant.client.url, credentials: participant.client.credentials, audience: participant.host, client: participant.client,
      manifestJson: participant.opening(source.omit),
      onOpened: () => participant.onOpened(),
      onProgress: (acknowledged) => participant.onProgress(acknowledged),
      onSent: () => participant.onSent(),
    });
    try {
      const outcome = await upload.run(async (destination) => {
        opened();
        await gate;
        await pipeline(branch, destination);
        return production;
      });
      return [participant, { kind: 'done', outcome, omit: source.omit }];
    } catch (err) {
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
  startProduction();
  const settled = await Promise.all(runs);
  const productionError = await production.then(() => undefined, (err: unknown) => err);
  return { results: new Map(settled), productionError };
}

/**
 * Whether a target's failure came from the production rather than from its receiver: the error
 * itself, or one the stream carried from it (the receiver's answers are FerryErrors with a status).
 */
function causedBy(err: unknown, productionError: unknown): boolean {
  if (err === productionError) return true;
  return !isFerryError(err) && !(err instanceof SlowBranch) && !(err instanceof StreamUnavailable);
}
