import { randomUUID } from 'node:crypto';
import { FerryError, isFerryError } from '@ferry/protocol';
import type { DeployDeps, DeployOptions, ServiceOutcome, TargetOutcome } from '../deploy.ts';
import { ReceiverClient } from '../receiver-client.ts';
import { DEFAULT_BACKOFF, isCallCut, retry, systemClock } from '../retry.ts';
import type { ResolvedTarget } from '../targets.ts';
import { eachLimited } from './limit.ts';

/** One target a release deployed a service to, to be put back. */
export interface RollbackTarget {
  service: ServiceOutcome;
  target: TargetOutcome;
  resolved: ResolvedTarget;
  phase: number;
}

/**
 * Rolls back what a halted release deployed: every service on every target where its deployment
 * completed, the last phase first (a client goes back before the service it depends on), the
 * targets of one phase at once, at most `parallel`. Each request is the receiver's rollback of the
 * service (docs/protocol.md §11.3) under its own deployment id, sent again under that id when the
 * call was cut short or the service was busy, so a retry never swaps twice. Never throws: each
 * target's outcome is in its `rollback`.
 */
export async function rollbackRelease(targets: readonly RollbackTarget[], deps: DeployDeps, options: DeployOptions, onDone: (item: RollbackTarget) => void): Promise<void> {
  const phases = [...new Set(targets.map((t) => t.phase))].sort((a, b) => b - a);
  for (const phase of phases) {
    await eachLimited(targets.filter((t) => t.phase === phase), options.parallel ?? 5, async (item) => {
      const deploymentId = randomUUID();
      const client = new ReceiverClient({
        url: item.resolved.url, credentials: deps.credentials,
        ...(item.target.host ? { audience: item.target.host } : {}), ...(item.resolved.hostKey ? { hostKey: item.resolved.hostKey } : {}),
      });
      try {
        const result = await retry(() => client.rollback(item.service.service, deploymentId), {
          policy: { ...DEFAULT_BACKOFF, attempts: options.attempts ?? DEFAULT_BACKOFF.attempts }, clock: systemClock,
          shouldRetry: (err) => isCallCut(err) || isFerryError(err, 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS'),
        });
        item.target.rollback = { deploymentId: result.deploymentId, ok: result.state === 'ROLLED_BACK', state: result.state };
      } catch (err) {
        const error = isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err });
        item.target.rollback = { deploymentId, ok: false, state: 'FAILED', error: { code: error.code, message: error.message } };
      }
      onDone(item);
    });
  }
}
