import type { ContainerInfo, ContainerRunner } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import type { Proxy } from '@ferry/proxy';
import { FerryError, LABELS, type DeploymentResult, type DeploymentState } from '@ferry/protocol';
import type { DeploymentHeader, DeploymentRecord, Journal, JournalEntry } from '../journal/journal.ts';
import { asFerryError, failure, since } from './outcome.ts';
import { nextName, olderName, parkedName, previousName } from './swap.ts';
import type { Emit } from './verdict.ts';

export interface RemovalDeps {
  containers: ContainerRunner;
  journal: Journal;
  hostId: string;
  logger: Logger;
  /** The host's proxy, when it runs one: a routed service's route goes with the service. */
  proxy?: Proxy | undefined;
  /** Publishes the removal's events under its own deployment id (and the removed one's release). */
  emitFor: (header: DeploymentHeader) => Emit;
}

export interface RemovalAsk {
  service: string;
  /** The removal's own id in the journal: asking again under it answers the stored outcome. */
  deploymentId: string;
  /**
   * Remove only if what runs of the service was deployed by this release (a deployment of it, or a
   * rollback back to it): a late or replayed call then cannot take away what a later release put there.
   */
  release?: string | undefined;
}

/**
 * Every name a service's containers take on this host (swap.ts): the one that runs, the one a
 * deployment creates aside, the previous one kept for a rollback, the one before it and the one a
 * manual rollback parks. Removing a service removes all of them, so nothing of it can come back.
 */
export function containerNames(service: string): string[] {
  return [service, nextName(service), previousName(service), olderName(service), parkedName(service)];
}

/**
 * `DELETE /v1/services/:name`: takes the service's route out of the proxy (if it has one), then
 * stops the service's running container and removes it and every other container of the service
 * (containerNames), journalled as a record of kind `remove`
 * (PENDING → ROLLING_BACK → ROLLED_BACK) before anything is touched, so that a receiver that
 * stops half-way finishes the removal when it starts again (finishRemoval). Images stay: image
 * retention decides about them, and a retained release keeps its own. The caller holds the
 * service's lock, so no deployment of it runs meanwhile.
 *
 * @throws FerryError FERRY_ERR_RELEASE_MISMATCH (nothing removed) when `release` is asked and what
 *   runs was not deployed by it; the engine's error, with the record FAILED, when a removal fails.
 */
export async function removeService(deps: RemovalDeps, ask: RemovalAsk): Promise<DeploymentResult> {
  const { service, deploymentId } = ask;
  const found = await present(deps.containers, service);
  const current = found.find((c) => c.name === service);
  const runningRecord = current ? deps.journal.get(current.labels[LABELS.deploymentId] ?? '') : undefined;
  if (ask.release !== undefined) assertFromRelease(service, ask.release, found, current, runningRecord);
  const shown = current ?? found[0];
  const header: DeploymentHeader = {
    deploymentId, kind: 'remove', host: deps.hostId, service,
    image: shown ? (shown.labels[LABELS.imageRef] ?? shown.image) : '', imageId: shown ? (shown.labels[LABELS.imageId] ?? shown.imageId) : '',
    ...(runningRecord?.release ? { release: runningRecord.release } : {}), bytes: 0,
  };
  const entry = await deps.journal.begin(header, []);
  // Written before the first container goes: a restart finishes the removal from here.
  await entry.enter('ROLLING_BACK', { event: 'removal.started', ...(current ? { previousContainerId: current.id } : {}) });
  return finish(deps, entry, header, found, runningRecord?.deploymentId);
}

/**
 * A removal the receiver stopped in the middle of (its record not final): the decision to remove
 * was journalled before anything was touched, so it is carried through — whatever of the service
 * is left goes — and the record ends as any removal does. An engine that cannot be reached now
 * leaves the record unfinished and throws, for the start-up's retry.
 */
export async function finishRemoval(deps: RemovalDeps, record: DeploymentRecord, entry: JournalEntry): Promise<void> {
  try {
    if (record.state !== 'ROLLING_BACK') await entry.enter('ROLLING_BACK', { event: 'removal.started' });
    const left = await present(deps.containers, record.service);
    const removedDeploymentId = left.find((c) => c.id === record.previousContainerId)?.labels[LABELS.deploymentId];
    const ids = [...new Set([...(record.previousContainerId ? [record.previousContainerId] : []), ...left.map((c) => c.id)])];
    await removeAll(deps, record.service, left);
    await completed(deps, entry, record, ids, removedDeploymentId);
  } catch (err) {
    await entry.close();
    throw err;
  }
}

async function finish(deps: RemovalDeps, entry: JournalEntry, header: DeploymentHeader, found: readonly ContainerInfo[], removedDeploymentId: string | undefined): Promise<DeploymentResult> {
  const started = performance.now();
  try {
    await removeAll(deps, header.service, found);
  } catch (err) {
    const error = asFerryError(err);
    deps.logger.error({ err, deploymentId: header.deploymentId, service: header.service }, 'removing the service failed');
    const failed = resultOf(deps, header, 'FAILED', since(started), error);
    await entry.finish(failed);
    deps.emitFor(header)('deployment.failed', { code: error.code, reason: `Removing ${header.service} failed: ${error.message}`, state: 'FAILED' });
    throw failure(failed);
  }
  return completed(deps, entry, header, found.map((c) => c.id), removedDeploymentId, since(started));
}

/**
 * Takes the route out of the proxy, then stops and removes `found`, the one that serves first,
 * then whatever of the service is still there. The route goes first: a request for it is answered
 * 404 by the proxy from then on, never sent to a container that is stopping. A service without a
 * route leaves the proxy untouched (removeRoute finds nothing), even one that does not answer.
 */
async function removeAll(deps: Pick<RemovalDeps, 'containers' | 'proxy'>, service: string, found: readonly ContainerInfo[]): Promise<void> {
  const { containers, proxy } = deps;
  await proxy?.removeRoute(service);
  for (const container of found) {
    // With its stop signal and grace, as a deployment stops the container it replaces.
    if (container.running) await containers.stop(container.id);
    await containers.remove(container.id, { force: true });
  }
  // A name missed or taken since (by nothing of Ferry's: the lock is held): none may be left.
  for (const left of await present(containers, service)) await containers.remove(left.id, { force: true });
}

async function completed(deps: RemovalDeps, entry: JournalEntry, header: DeploymentHeader, ids: string[], removedDeploymentId: string | undefined, durationMs = 0): Promise<DeploymentResult> {
  await entry.note({ event: 'removal.completed' });
  const done = resultOf(deps, header, 'ROLLED_BACK', durationMs);
  await entry.finish(done);
  deps.emitFor(header)('deployment.removed', { removedContainerIds: ids, ...(removedDeploymentId ? { removedDeploymentId } : {}), durationMs });
  deps.logger.info({ deploymentId: header.deploymentId, service: header.service, removed: ids.length }, 'service removed');
  return done;
}

function resultOf(deps: RemovalDeps, header: DeploymentHeader, state: DeploymentState, total: number, error?: FerryError): DeploymentResult {
  return {
    deploymentId: header.deploymentId, host: deps.hostId, service: header.service, image: header.image, imageId: header.imageId,
    state, bytes: 0, timings: { total }, ...(error ? { error: { code: error.code, message: error.message } } : {}),
  };
}

/** The service's containers on the engine, under any of its names. */
async function present(containers: ContainerRunner, service: string): Promise<ContainerInfo[]> {
  const found: ContainerInfo[] = [];
  for (const name of containerNames(service)) {
    const info = await containers.inspect(name);
    if (info && !found.some((c) => c.id === info.id)) found.push(info);
  }
  return found;
}

/**
 * What runs must be the release's: the container under the service's name carries the id of the
 * deployment (or rollback to a release) that made it, and the journal knows that one's release.
 * Containers of the service that do not run under its name were not made current by that
 * release; nothing at all is no mismatch (a retried removal finds the service gone).
 */
function assertFromRelease(service: string, release: string, found: readonly ContainerInfo[], current: ContainerInfo | undefined, record: DeploymentRecord | undefined): void {
  if (found.length === 0) return;
  const running = record?.release?.id;
  if (current && running === release) return;
  throw new FerryError('FERRY_ERR_RELEASE_MISMATCH', {
    message: current
      ? `${service} runs ${running === undefined ? 'a deployment of no release' : `release ${running}`}, not ${release}; nothing was removed`
      : `${service} has no running container of release ${release}; nothing was removed`,
    details: { service, release, running: running ?? null, ...(current ? { containerId: current.id } : {}) },
  });
}
