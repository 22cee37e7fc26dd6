import type Dockerode from 'dockerode';

/** Removes a service's containers as Ferry names them: current, kept previous, and those set aside mid-swap. */
export async function removeService(docker: Dockerode, service: string): Promise<void> {
  for (const name of [service, `${service}.ferry-previous`, `${service}.ferry-next`, `${service}.ferry-older`, `${service}.ferry-parked`]) {
    await docker.getContainer(name).remove({ force: true }).catch(() => undefined);
  }
}

/** Removes images by reference or id; absent ones (or undefined) are skipped. */
export async function removeImages(docker: Dockerode, refs: (string | undefined)[]): Promise<void> {
  for (const ref of refs) if (ref) await docker.getImage(ref).remove({ force: true }).catch(() => undefined);
}
