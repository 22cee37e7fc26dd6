import type { ContainerInfo, ContainerRunner, ContainerSpec } from '@ferry/docker';
import { FerryError, LABELS } from '@ferry/protocol';

/** Names derived from the service; a dot cannot appear in a service name, so these never collide. */
export function previousName(service: string): string {
  return `${service}.ferry-previous`;
}
export function nextName(service: string): string {
  return `${service}.ferry-next`;
}
/**
 * Where a deployment keeps the previous container's predecessor until it has passed: a deployment
 * that fails puts it back as the previous one, so a failure never uses up the rollback target.
 */
export function olderName(service: string): string {
  return `${service}.ferry-older`;
}

/**
 * Called between the steps of a swap, each awaited: the deployment journals what it needs to undo
 * the swap before the step that would need undoing (and tests stop the process there).
 */
export interface SwapHooks {
  created?: (containerId: string) => Promise<void>;
  /** The running container about to be stopped and kept as the previous one. */
  replacing?: (currentId: string) => Promise<void>;
  /** The old container is stopped and named `<service>.ferry-previous`; the new is not started. */
  stoppedOld?: () => Promise<void>;
  /** The new container has the service's name and is not started yet. */
  renamedNew?: () => Promise<void>;
}

export interface Swapped {
  containerId: string;
  /** The container that ran before, stopped and kept under previousName() for rollback. */
  previousId: string | undefined;
}

/**
 * Replaces a service's container: create the new one aside (a bad config fails before anything
 * stops), stop the old one, keep it under a second name, and start the new one under the
 * service's name. Stopping first matters: with host networking both would want the same port.
 */
export async function replaceContainer(runner: ContainerRunner, spec: ContainerSpec, hooks: SwapHooks = {}): Promise<Swapped> {
  const service = spec.name;
  await runner.remove(nextName(service), { force: true });
  await settleOlder(runner, service);
  const containerId = await runner.create({ ...spec, name: nextName(service) });
  try {
    await hooks.created?.(containerId);
    const current = await runner.inspect(service);
    if (current) {
      await hooks.replacing?.(current.id);
      // Kept, not removed, until this deployment passed (dropOlder) or failed (restorePrevious).
      const previous = await runner.inspect(previousName(service));
      if (previous) await runner.rename(previous.id, olderName(service));
      await runner.stop(current.id);
      await runner.rename(current.id, previousName(service));
      await hooks.stoppedOld?.();
    }
    await runner.rename(containerId, service);
    await hooks.renamedNew?.();
    await runner.start(containerId);
    return { containerId, previousId: current?.id };
  } catch (err) {
    // The caller rolls back by name; a half-made container must not linger under the next name.
    const stillAside = await runner.inspect(nextName(service));
    if (stillAside) await runner.remove(stillAside.id, { force: true });
    throw err;
  }
}

/**
 * Puts the previous container back: the failed one is removed (its logs were read before), the
 * kept one takes the service's name again and starts, and the one kept before it is the previous
 * one again — what a rollback returns to is what it was before the failed deployment. Without a
 * previous one, nothing runs.
 */
export async function restorePrevious(runner: ContainerRunner, service: string, failedId: string | undefined): Promise<string | undefined> {
  if (failedId) await runner.remove(failedId, { force: true });
  const restored = await restoreRunning(runner, service, failedId);
  await settleOlder(runner, service);
  return restored;
}

async function restoreRunning(runner: ContainerRunner, service: string, failedId: string | undefined): Promise<string | undefined> {
  const current = await runner.inspect(service);
  if (current && current.id !== failedId) {
    // The failed container never took the name (it failed before the rename); nothing to restore.
    if (current.running) return current.id;
    await runner.start(current.id);
    return current.id;
  }
  const previous = await runner.inspect(previousName(service));
  if (!previous) return undefined;
  await runner.rename(previous.id, service);
  await runner.start(previous.id);
  return previous.id;
}

/**
 * A container kept under olderName() goes back to being the previous one when that name is free
 * (a deployment failed, or stopped half-way), and is dropped when it is not (a deployment passed
 * and stopped before it could drop it).
 */
export async function settleOlder(runner: ContainerRunner, service: string): Promise<void> {
  const older = await runner.inspect(olderName(service));
  if (!older) return;
  if (await runner.inspect(previousName(service))) await runner.remove(older.id, { force: true });
  else await runner.rename(older.id, previousName(service));
}

/** Once a deployment passed: the container it kept aside goes, as the previous one would have before. */
export async function dropOlder(runner: ContainerRunner, service: string): Promise<void> {
  await runner.remove(olderName(service), { force: true });
}

/** Where a manual rollback parks the container it replaces while the previous one takes over. */
export function parkedName(service: string): string {
  return `${service}.ferry-parked`;
}

export interface SwappedBack {
  /** The previous container, now running under the service's name. */
  restored: ContainerInfo;
  /** The container that ran before the rollback, now kept as the previous one. */
  replacedId: string | undefined;
}

/**
 * Manual rollback: the kept previous container runs again under the service's name and the one
 * it replaces becomes the previous one, so a second rollback rolls forward again. If the previous
 * container does not start, everything is put back as it was and the error is thrown.
 */
export async function swapToPrevious(runner: ContainerRunner, service: string): Promise<SwappedBack> {
  const previous = await runner.inspect(previousName(service));
  if (!previous) throw new FerryError('FERRY_ERR_NOTHING_TO_ROLL_BACK', { details: { service } });
  const current = await runner.inspect(service);
  if (current) {
    await runner.remove(parkedName(service), { force: true });
    await runner.stop(current.id);
    await runner.rename(current.id, parkedName(service));
  }
  try {
    await runner.rename(previous.id, service);
    await runner.start(previous.id);
  } catch (err) {
    await putBack(runner, service, previous.id, current?.id).catch(() => undefined);
    throw err;
  }
  if (current) await runner.rename(current.id, previousName(service));
  return { restored: previous, replacedId: current?.id };
}

async function putBack(runner: ContainerRunner, service: string, previousId: string, currentId: string | undefined): Promise<void> {
  const named = await runner.inspect(service);
  if (named?.id === previousId) {
    await runner.stop(previousId);
    await runner.rename(previousId, previousName(service));
  }
  if (currentId) {
    await runner.rename(currentId, service);
    await runner.start(currentId);
  }
}

/**
 * Undoes a swap a deployment left half-done when the process died: the new container (aside
 * under the next name, or under the service's name carrying this deployment's label) is removed
 * and the old one runs again. Undefined when there was nothing to restore.
 */
export async function undoSwap(runner: ContainerRunner, service: string, deploymentId: string, newId: string | undefined): Promise<string | undefined> {
  const aside = await runner.inspect(nextName(service));
  if (aside) await runner.remove(aside.id, { force: true });
  const current = await runner.inspect(service);
  const isNew = current !== undefined && (current.id === newId || current.labels[LABELS.deploymentId] === deploymentId);
  return restorePrevious(runner, service, isNew ? current.id : undefined);
}

/**
 * Brings back a service a manual rollback left half-done: whatever holds the service's name
 * runs; without one, the previous container takes it (the rollback completes), else the parked
 * one. A parked container becomes the previous one again.
 */
export async function finishSwapBack(runner: ContainerRunner, service: string): Promise<string | undefined> {
  let running = await runner.inspect(service);
  if (!running) {
    const candidate = (await runner.inspect(previousName(service))) ?? (await runner.inspect(parkedName(service)));
    if (candidate) {
      await runner.rename(candidate.id, service);
      running = candidate;
    }
  }
  if (running) await runner.start(running.id);
  const parked = await runner.inspect(parkedName(service));
  if (parked && parked.id !== running?.id) {
    if (await runner.inspect(previousName(service))) await runner.remove(parked.id, { force: true });
    else await runner.rename(parked.id, previousName(service));
  }
  return running?.id;
}
