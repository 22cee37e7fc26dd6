import { randomUUID } from 'node:crypto';
import { FerryError, isFerryError } from '@ferry/protocol';
import type { TargetOutcome } from '../deploy.ts';
import type { ReceiverClient } from '../receiver-client.ts';
import { DEFAULT_BACKOFF, isCallCut, retry, systemClock } from '../retry.ts';

/**
 * The release a deployment brought its service to the host with, when it did: the receiver's
 * journal record of that deployment says it completed and replaced no container there (no
 * `previousContainerId`), so there is nothing to swap back to and the service is new to the
 * host. Undefined otherwise, and when the receiver cannot say (its rollback then answers as before).
 */
export async function broughtByRelease(client: ReceiverClient, deploymentId: string | undefined): Promise<string | undefined> {
  if (deploymentId === undefined) return undefined;
  try {
    const record = await client.deployment(deploymentId);
    return record.kind === 'deploy' && record.state === 'COMPLETED' && record.previousContainerId === undefined ? record.release?.id : undefined;
  } catch (err) {
    if (isFerryError(err)) return undefined;
    throw err;
  }
}

/**
 * Takes a service the release brought to a host off it again (`DELETE /v1/services/:name?release=`,
 * docs/protocol.md §11.3), under a deployment id of its own sent again when the call was cut
 * short or the service was busy. Only what that release runs there is removed: a later release's
 * service answers FERRY_ERR_RELEASE_MISMATCH and stays. Never throws.
 */
export async function removeFromHost(client: ReceiverClient, service: string, release: string, attempts?: number): Promise<NonNullable<TargetOutcome['rollback']>> {
  const deploymentId = randomUUID();
  try {
    const result = await retry(() => client.remove(service, { deploymentId, release }), {
      policy: { ...DEFAULT_BACKOFF, attempts: attempts ?? DEFAULT_BACKOFF.attempts }, clock: systemClock,
      shouldRetry: (err) => isCallCut(err) || isFerryError(err, 'FERRY_ERR_DEPLOYMENT_IN_PROGRESS'),
    });
    if (result.state === 'ROLLED_BACK') return { deploymentId, ok: true, state: result.state, removed: true };
    return { deploymentId, ok: false, state: result.state, removed: false, error: { code: 'FERRY_ERR_ROLLBACK_FAILED', message: `The removal of ${service} ended ${result.state}` } };
  } catch (err) {
    const error = isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message, cause: err });
    return { deploymentId, ok: false, state: 'FAILED', removed: false, error: { code: error.code, message: error.message } };
  }
}
