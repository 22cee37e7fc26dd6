import { randomUUID } from 'node:crypto';
import { FerryError, isFerryError, type DeploymentResult } from '@ferry/protocol';
import type { DeployDeps, DeployOptions, ServiceOutcome, TargetOutcome } from '../deploy.ts';
import { ReceiverClient } from '../receiver-client.ts';
import { DEFAULT_BACKOFF, isCallCut, retry, systemClock } from '../retry.ts';
import type { ResolvedTarget } from '../targets.ts';
import { eachLimited } from './limit.ts';
import { broughtByRelease, removeFromHost } from './removal.ts';

/** One target a release deployed a service to, to be put back. */
export interface RollbackTarget {
  service: ServiceOutcome;
  target: TargetOutcome;
  resolved: ResolvedTarget;
  phase: number;
  /** The retained release the service ran on that host before (previous.ts); absent: the kept container. */
  toRelease?: string | undefined;
}

/** What one rollback request came to. */
export type RollbackAnswer =
  | { ok: true; deploymentId: string; result: DeploymentResult }
  | { ok: false; deploymentId: string; error: FerryError };

/**
 * One rollback of `service` on a receiver (docs/protocol.md §11.3) under a deployment id of its
 * own, sent again under that id when the call was cut short or the service was busy, so a retry
 * never swaps twice. With `toRelease`, a retained release runs again. Never throws.
 */
export async function rollbackService(client: ReceiverClient, service: string, options: { toRelease?: string | undefined; attempts?: number | undefined } = {}): Promise<RollbackAnswer> {
  const deploymentId = randomUUID();
  try {
    const result = await retry(() => client.rollback(service, { deploymentId, ...(options.toRelease ? { toRelease: options.toRelease } : {}) }), {
      policy: { ...DEFAULT_BACKOFF, attempts: options.attempts ?? DEFAULT_BACKOFF.attempts }, clock: systemClock,
      shouldRetry: (err) => isCallCut(err) || isFerryError(err, 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS'),
    });
    return result.state === 'ROLLED_BACK'
      ? { ok: true, deploymentId: result.deploymentId, result }
      : { ok: false, deploymentId: result.deploymentId, error: new FerryError('FERRY_ERR_ROLLBACK_FAILED', { message: `The rollback of ${service} ended ${result.state}` }) };
  } catch (err) {
    return { ok: false, deploymentId, error: isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err }) };
  }
}

/**
 * Rolls back what a halted release deployed: every service on every target where its deployment
 * completed, the last phase first (a client goes back before the service it depends on), the
 * targets of one phase at once, at most `parallel`. Each goes back to the release it ran before
 * on that host when the host retains it, else to the container the receiver kept (a host that
 * no longer retains that release falls back to it too); a service the release brought to a host
 * is removed from it. Never throws: each target's outcome is
 * in its `rollback`.
 */
export async function rollbackRelease(targets: readonly RollbackTarget[], deps: DeployDeps, options: DeployOptions, onDone: (item: RollbackTarget) => void): Promise<void> {
  const phases = [...new Set(targets.map((t) => t.phase))].sort((a, b) => b - a);
  for (const phase of phases) {
    await eachLimited(targets.filter((t) => t.phase === phase), options.parallel ?? 5, async (item) => {
      const client = new ReceiverClient({
        url: item.resolved.url, credentials: deps.credentials,
        ...(item.target.host ? { audience: item.target.host } : {}), ...(item.resolved.hostKey ? { hostKey: item.resolved.hostKey } : {}),
      });
      const service = item.service.service;
      let toRelease = item.toRelease;
      // New to the host with this release: going back is taking it off (removal.ts).
      const brought = toRelease === undefined ? await broughtByRelease(client, item.target.deploymentId) : undefined;
      if (brought !== undefined) {
        item.target.rollback = await removeFromHost(client, service, brought, options.attempts);
        onDone(item);
        return;
      }
      let answer = await rollbackService(client, service, { toRelease, attempts: options.attempts });
      if (!answer.ok && toRelease !== undefined && answer.error.code === 'FERRY_ERR_RELEASE_NOT_RETAINED') {
        // Dropped since the release started (its image pruned for space): the kept container is
        // still what ran before this release's deployment.
        toRelease = undefined;
        answer = await rollbackService(client, service, { attempts: options.attempts });
      }
      item.target.rollback = answer.ok
        ? { deploymentId: answer.deploymentId, ok: true, state: answer.result.state, ...(toRelease ? { toRelease } : {}) }
        : { deploymentId: answer.deploymentId, ok: false, state: 'FAILED', error: { code: answer.error.code, message: answer.error.message }, ...(toRelease ? { toRelease } : {}) };
      onDone(item);
    });
  }
}
