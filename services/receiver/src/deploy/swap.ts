import type { ContainerRunner, ContainerSpec } from '@ferry/docker';

/** Names derived from the service; a dot cannot appear in a service name, so these never collide. */
export function previousName(service: string): string {
  return `${service}.ferry-previous`;
}
function nextName(service: string): string {
  return `${service}.ferry-next`;
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
export async function replaceContainer(runner: ContainerRunner, spec: ContainerSpec): Promise<Swapped> {
  const service = spec.name;
  await runner.remove(nextName(service), { force: true });
  const containerId = await runner.create({ ...spec, name: nextName(service) });
  try {
    const current = await runner.inspect(service);
    if (current) {
      await runner.remove(previousName(service), { force: true });
      await runner.stop(current.id);
      await runner.rename(current.id, previousName(service));
    }
    await runner.rename(containerId, service);
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
 * kept one takes the service's name again and starts. Without a previous one, nothing runs.
 */
export async function restorePrevious(runner: ContainerRunner, service: string, failedId: string | undefined): Promise<string | undefined> {
  if (failedId) await runner.remove(failedId, { force: true });
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
