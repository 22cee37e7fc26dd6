import { lstat, realpath, stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import type { ContainerSpec, MountSpec } from '@ferry/docker';
import { FerryError } from '@ferry/protocol';
import { bindSourceRule, within, type Policy, type Violation } from './policy.ts';

/** A bind source as found on the host: the path to mount, or the rule it breaks. */
export type HostBindSource = { ok: true; path: string } | { ok: false; rule: string };

/**
 * Looks at a bind source on the host as it is now, without following any symbolic link: each
 * component from `/` down is read with lstat, and a link anywhere in the path is refused with
 * `bind-source-symlink:<source>` (an allowed prefix that is itself a link is refused too, so the
 * operator names the real directory). The path found is then held to the policy's bind rules again,
 * and to the engine sockets by identity: a socket that is one of them under another name (a hard
 * link), or a directory holding one's real location. A source that does not exist, or runs through
 * a file, throws FERRY_ERR_CONTAINER_FAILED, as the engine would refuse it at create.
 */
export async function resolveBindSource(policy: Readonly<Policy>, source: string): Promise<HostBindSource> {
  // Rebuilt from its components, so the path mounted is exactly the one walked.
  const components = source.split('/').filter((part) => part !== '');
  let path = '';
  let found = await inspectPath(source, '/');
  for (const component of components) {
    path += `/${component}`;
    found = await inspectPath(source, path);
    if (found.isSymbolicLink()) return { ok: false, rule: `bind-source-symlink:${source}` };
  }
  const resolved = path === '' ? '/' : path;
  const rule = bindSourceRule(policy, resolved) ?? (policy.dockerSocket ? undefined : await socketRule(policy, resolved, found));
  return rule ? { ok: false, rule } : { ok: true, path: resolved };
}

/**
 * The spec with every bind source replaced by the path resolveBindSource() found, and what it
 * refused. Called right before the engine is asked to create the container and again right
 * before it starts it (the engine mounts at start), so a link planted in between is seen.
 */
export async function checkBindSources(spec: ContainerSpec, policy: Readonly<Policy>): Promise<{ spec: ContainerSpec; violations: Violation[] }> {
  if (!spec.mounts?.some((mount) => mount.type === 'bind')) return { spec, violations: [] };
  const violations: Violation[] = [];
  const mounts: MountSpec[] = [];
  for (const mount of spec.mounts) {
    if (mount.type !== 'bind') {
      mounts.push(mount);
      continue;
    }
    const found = await resolveBindSource(policy, mount.source);
    if (found.ok) mounts.push({ ...mount, source: found.path });
    else violations.push({ rule: found.rule, field: 'service.volumes', value: mount.source });
  }
  return { spec: { ...spec, mounts }, violations };
}

async function inspectPath(source: string, path: string): Promise<Stats> {
  try {
    return await lstat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new FerryError('FERRY_ERR_CONTAINER_FAILED', {
        message: `Bind source ${source} does not exist on this host (${path}: ${code === 'ENOENT' ? 'no such file or directory' : 'not a directory'})`,
        cause: err, details: { source },
      });
    }
    throw new FerryError('FERRY_ERR_INTERNAL', { message: `Cannot inspect bind source ${source} (${path}: ${code ?? 'error'})`, cause: err });
  }
}

/** `docker-socket:<source>` when `path` is an engine socket or holds one, by what is on disk. */
async function socketRule(policy: Readonly<Policy>, path: string, found: Stats): Promise<string | undefined> {
  for (const socket of policy.protectedSockets) {
    // The socket's own name is the operator's (or the engine's), so following its links is sound.
    const real = await realpath(socket).catch(() => undefined);
    if (real === undefined) continue;
    if (within(real, path)) return `docker-socket:${path}`;
    if (found.isSocket()) {
      const target = await stat(real).catch(() => undefined);
      if (target && target.dev === found.dev && target.ino === found.ino) return `docker-socket:${path}`;
    }
  }
  return undefined;
}
