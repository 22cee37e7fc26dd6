import { normalizeCapability, parseDevice, parseVolume, type Manifest } from '@ferry/protocol';

/**
 * What a receiver's operator lets deployments ask for. Everything not granted here is refused,
 * except the two things an edge deployer is expected to do out of the box: run any image it is
 * sent and use the host network.
 */
export interface Policy {
  /** Globs over the image repository (the reference without its tag); `**` allows any. */
  images: readonly string[];
  /**
   * Host path prefixes a bind mount may come from, compared by whole path segments; on the host,
   * no component of a bind source may be a symbolic link (see checkBindSources()).
   */
  bindSources: readonly string[];
  /** Capabilities `capAdd` may name, normalised (`NET_ADMIN`, `ALL`). */
  capabilities: readonly string[];
  /** Host device paths `devices` may map. */
  devices: readonly string[];
  hostNetwork: boolean;
  privileged: boolean;
  hostPid: boolean;
  hostIpc: boolean;
  /** Binding the engine's socket, or a directory holding it, hands out root on the host. */
  dockerSocket: boolean;
  /** Binding `/` itself. */
  rootBind: boolean;
  seccompUnconfined: boolean;
  apparmorUnconfined: boolean;
  /** Sockets guarded by `dockerSocket`: the usual engine sockets plus the one DOCKER_HOST names. */
  protectedSockets: readonly string[];
}

export const ENGINE_SOCKETS: readonly string[] = [
  '/var/run/docker.sock', '/run/docker.sock', '/var/run/containerd/containerd.sock', '/run/containerd/containerd.sock',
];

export const DEFAULT_POLICY: Readonly<Policy> = Object.freeze({
  images: ['**'],
  bindSources: [],
  capabilities: [],
  devices: [],
  hostNetwork: true,
  privileged: false,
  hostPid: false,
  hostIpc: false,
  dockerSocket: false,
  rootBind: false,
  seccompUnconfined: false,
  apparmorUnconfined: false,
  protectedSockets: ENGINE_SOCKETS,
});

/** One refused request: `rule` is the stable name shown to users, e.g. `cap_add:SYS_ADMIN`. */
export interface Violation {
  rule: string;
  /** Where in the manifest, e.g. `service.capAdd`. */
  field: string;
  value: string;
}

/** Every violation of `policy` in the manifest, in manifest order; empty when it may run. */
export function evaluate(policy: Policy, manifest: Manifest): Violation[] {
  const found: Violation[] = [];
  const deny = (rule: string, field: string, value: string): void => {
    found.push({ rule, field, value });
  };
  const service = manifest.service;

  const repository = repositoryOf(manifest.image.ref);
  if (!policy.images.some((glob) => globMatch(glob, repository))) deny(`image-repository:${repository}`, 'image.ref', manifest.image.ref);
  if (service.network === 'host' && !policy.hostNetwork) deny('network:host', 'service.network', 'host');
  if (service.privileged === true && !policy.privileged) deny('privileged', 'service.privileged', 'true');
  if (service.pid === 'host' && !policy.hostPid) deny('pid:host', 'service.pid', 'host');
  if (service.ipc === 'host' && !policy.hostIpc) deny('ipc:host', 'service.ipc', 'host');

  for (const spec of service.volumes ?? []) {
    const volume = parseVolume(spec);
    if (volume?.kind !== 'bind') continue;
    const rule = bindSourceRule(policy, volume.source);
    if (rule) deny(rule, 'service.volumes', spec);
  }

  const allowedCaps = new Set(policy.capabilities.map(normalizeCapability));
  for (const cap of service.capAdd ?? []) {
    const name = normalizeCapability(cap);
    if (!allowedCaps.has(name) && !allowedCaps.has('ALL')) deny(`cap_add:${name}`, 'service.capAdd', cap);
  }

  for (const spec of service.devices ?? []) {
    const device = parseDevice(spec);
    if (device && !policy.devices.includes(device.host)) deny(`devices:${device.host}`, 'service.devices', spec);
  }

  for (const option of service.securityOpt ?? []) {
    if (option === 'seccomp=unconfined' && !policy.seccompUnconfined) deny('security_opt:seccomp=unconfined', 'service.securityOpt', option);
    if (option === 'apparmor=unconfined' && !policy.apparmorUnconfined) deny('security_opt:apparmor=unconfined', 'service.securityOpt', option);
  }
  return found;
}

/**
 * The rule a bind of `source` breaks as the path is spelled, or undefined when the policy allows
 * it; one rule per mount, the most dangerous first. What the path is on the host is checked by
 * checkBindSources() before the container is created.
 */
export function bindSourceRule(policy: Readonly<Policy>, source: string): string | undefined {
  if (source === '/' && !policy.rootBind) return 'bind-source:/';
  if (!policy.dockerSocket && policy.protectedSockets.some((socket) => within(socket, source))) return `docker-socket:${source}`;
  if (!policy.bindSources.some((prefix) => within(source, prefix))) return `bind-source:${source}`;
  return undefined;
}

/** `localhost:5000/team/app:1.2` → `localhost:5000/team/app`: a colon after the last slash starts the tag. */
export function repositoryOf(ref: string): string {
  const colon = ref.lastIndexOf(':');
  return colon > ref.lastIndexOf('/') ? ref.slice(0, colon) : ref;
}

/**
 * `*` and `?` stay within one path segment, `**` crosses them: `team/*` allows `team/web` but
 * not `team/web/admin`, and `evil.example.com/**` a whole registry.
 */
export function globMatch(glob: string, value: string): boolean {
  let pattern = '';
  for (let i = 0; i < glob.length; i++) {
    const char = glob.charAt(i);
    if (char === '*' && glob.charAt(i + 1) === '*') {
      pattern += '.*';
      i++;
    } else if (char === '*') pattern += '[^/]*';
    else if (char === '?') pattern += '[^/]';
    else pattern += char.replace(/[\\^$.|+(){}[\]]/g, '\\$&');
  }
  return new RegExp(`^${pattern}$`).test(value);
}

/** True when `path` is `prefix` or lies below it; `/srv/data` does not cover `/srv/database`. */
export function within(path: string, prefix: string): boolean {
  if (prefix === '/') return path.startsWith('/');
  return path === prefix || path.startsWith(`${prefix}/`);
}
