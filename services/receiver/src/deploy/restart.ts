import type { ContainerRunner } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import { FerryError } from '@ferry/protocol';
import type { Journal } from '../journal/journal.ts';

/** What `POST /v1/services/:name/reconcile` answers. */
export interface ReconcileResult {
  service: string;
  /** `started`: it was stopped and runs again; `none`: it was running. */
  action: 'started' | 'none';
  containerId: string;
  /** The deployment (or manual rollback) that made that container current. */
  deploymentId: string;
}

/**
 * Starts again the container the service's last successful deployment left current, when it still
 * exists under the service's name and is not running; does nothing when it runs. That container
 * was made by this receiver from a signed manifest (or is the one a rollback restored), so this
 * brings back nothing an operator did not sign: no image, spec or URL is taken from the caller.
 * Anything else — no such deployment, the container removed, renamed or replaced by hand — is
 * FERRY_ERR_NOT_RECONCILABLE: a new deployment is what puts that right.
 *
 * The caller holds the service's deployment lock.
 */
export async function startLastDeployed(deps: { journal: Journal; containers: ContainerRunner; logger: Logger }, service: string): Promise<ReconcileResult> {
  const last = deps.journal.list({ service }).find((r) => (r.kind === 'deploy' && r.state === 'COMPLETED') || (r.kind !== 'deploy' && r.state === 'ROLLED_BACK'));
  const refuse = (reason: string): FerryError => new FerryError('FERRY_ERR_NOT_RECONCILABLE', { message: `${service}: ${reason}; deploy it again`, details: { service } });
  // Taken off the host on purpose (DELETE /v1/services/:name): nothing is to run again.
  if (last?.kind === 'remove') throw refuse(`it was removed from this host (${last.deploymentId})`);
  const containerId = last?.result?.containerId ?? last?.containerId;
  if (!last || !containerId) throw refuse('no successful deployment of it is known here');
  const container = await deps.containers.inspect(containerId);
  if (!container) throw refuse(`the container of deployment ${last.deploymentId} no longer exists`);
  if (container.name !== service) throw refuse(`the container of deployment ${last.deploymentId} is not the one named ${service} any more`);
  const result = { service, containerId: container.id, deploymentId: last.deploymentId };
  if (container.running) return { ...result, action: 'none' };
  await deps.containers.start(container.id);
  if (!(await deps.containers.inspect(container.id))?.running) {
    throw new FerryError('FERRY_ERR_CONTAINER_FAILED', { message: `${service}: the container of deployment ${last.deploymentId} exited right after it started again`, details: { service } });
  }
  deps.logger.info({ service, containerId: container.id, deploymentId: last.deploymentId }, 'stopped service started again (reconcile)');
  return { ...result, action: 'started' };
}
