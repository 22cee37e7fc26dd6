import { createInterface } from 'node:readline';
import { FerryError } from '@ferry/protocol';
import { namePath, type ContainerCreateBody, type DockerEngine, type HealthInspect, type HostConfig } from './engine.ts';
import { statusOf, toFerryError } from './errors.ts';
import { splitLogLines } from './logs.ts';

export interface ContainerInfo {
  id: string;
  /** Without the leading slash the engine reports. */
  name: string;
  running: boolean;
  /** The engine's state word: created, running, restarting, exited, … */
  status: string;
  /** The image reference the container was created from, as written at create time. */
  image: string;
  /** The `sha256:…` id that reference resolved to at create time. */
  imageId: string;
  labels: Record<string, string>;
  exitCode: number;
  /** Restarts by its restart policy: a container that crashed is running again, but it crashed. */
  restarts: number;
  /** Absent when the container has no health check. */
  health?: ContainerHealth;
  /** The ports published now; empty while the container is stopped (an ephemeral port is chosen at each start). */
  ports: PublishedPort[];
}

/** A container port as the engine published it on the host. */
export interface PublishedPort {
  containerPort: number;
  protocol: 'tcp' | 'udp';
  hostIp: string;
  hostPort: number;
}

export type NetworkMode = 'host' | 'bridge' | 'none';
export type RestartPolicy = 'no' | 'unless-stopped' | 'on-failure' | 'always';

/**
 * Everything Ferry lets a deployment decide about a container. It is an allowlist: the create
 * request is built from these fields alone, so nothing a caller adds (privileged, binds, caps…)
 * can reach the engine.
 */
export interface ContainerSpec {
  name: string;
  image: string;
  env: Record<string, string>;
  network: NetworkMode;
  labels: Record<string, string>;
  /** Defaults to `unless-stopped`: a deployed service survives engine restarts. */
  restart?: RestartPolicy;
  /** Published ports; the engine refuses them outside the bridge network. */
  ports?: PortBinding[];
  mounts?: MountSpec[];
  memoryBytes?: number;
  /** Fractional CPUs, as `docker run --cpus`. */
  cpus?: number;
  command?: string[];
  entrypoint?: string[];
  user?: string;
  capAdd?: string[];
  // The fields below widen what the container may do to its host; callers decide them through a
  // policy before they get here.
  privileged?: boolean;
  pidMode?: 'host';
  ipcMode?: 'private' | 'shareable' | 'host';
  devices?: DeviceSpec[];
  securityOpt?: string[];
  /** Overrides the timings of the image's HEALTHCHECK; its test command stays the image's. */
  healthcheck?: HealthcheckTimings;
}

export interface PortBinding {
  containerPort: number;
  protocol: 'tcp' | 'udp';
  /** 0: a free port the engine chooses at each start (`-p 127.0.0.1::80`); read it back with {@link publishedPort}. */
  hostPort: number;
  hostIp?: string;
}

export interface MountSpec {
  type: 'bind' | 'volume';
  /** An absolute host path for a bind, a volume name for a volume. */
  source: string;
  target: string;
  readOnly: boolean;
}

export interface DeviceSpec {
  host: string;
  container: string;
  permissions: string;
}

export interface HealthcheckTimings {
  intervalMs: number;
  timeoutMs: number;
  retries: number;
  startPeriodMs: number;
}

/** Docker's health state of a container whose image (or spec) declares a HEALTHCHECK. */
export interface ContainerHealth {
  /** `starting`, `healthy` or `unhealthy` (a newer engine may add states). */
  status: string;
  failingStreak: number;
  /** Docker keeps the last five runs of the check. */
  log: { start: string; end: string; exitCode: number; output: string }[];
}

export interface RemoveContainerOptions {
  force?: boolean;
}

const NETWORKS: readonly string[] = ['host', 'bridge', 'none'] satisfies NetworkMode[];
const RESTART_POLICIES: readonly string[] = ['no', 'unless-stopped', 'on-failure', 'always'] satisfies RestartPolicy[];
// POSIX-ish names; anything with `=` would be split differently by the engine than we meant.
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_.-]*$/;

/** Container lifecycle on one engine, with Ferry's error codes. */
export class ContainerRunner {
  readonly #docker: DockerEngine;

  constructor(docker: DockerEngine) {
    this.#docker = docker;
  }

  /** Undefined when there is no such container; every other failure throws. */
  async inspect(nameOrId: string): Promise<ContainerInfo | undefined> {
    try {
      const info = await this.#docker.inspectContainer(nameOrId);
      return {
        id: info.Id,
        name: info.Name.replace(/^\//, ''),
        running: info.State.Running,
        status: info.State.Status,
        image: info.Config.Image,
        imageId: info.Image,
        labels: info.Config.Labels ?? {},
        exitCode: info.State.ExitCode,
        restarts: info.RestartCount ?? 0,
        ...(info.State.Health ? { health: healthOf(info.State.Health) } : {}),
        ports: portsOf(info.NetworkSettings?.Ports),
      };
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `inspect container ${nameOrId}`);
    }
  }

  /** Creates (does not start) the container; resolves to its id. */
  async create(spec: ContainerSpec): Promise<string> {
    const restart = spec.restart ?? 'unless-stopped';
    if (!NETWORKS.includes(spec.network)) throw invalidSpec(spec, `unknown network mode "${String(spec.network)}"`);
    if (!RESTART_POLICIES.includes(restart)) throw invalidSpec(spec, `unknown restart policy "${String(restart)}"`);
    const env = Object.entries(spec.env).map(([name, value]) => {
      if (!ENV_NAME.test(name)) throw invalidSpec(spec, `invalid environment variable name "${name}"`);
      return `${name}=${value}`;
    });
    const ports = spec.ports ?? [];
    if (ports.length > 0 && spec.network !== 'bridge') throw invalidSpec(spec, 'ports are published only with the bridge network');
    const exposed: Record<string, object> = {};
    const bindings: Record<string, { HostIp: string; HostPort: string }[]> = {};
    for (const port of ports) {
      const key = `${port.containerPort}/${port.protocol}`;
      exposed[key] = {};
      if (!Number.isInteger(port.hostPort) || port.hostPort < 0 || port.hostPort > 65535) throw invalidSpec(spec, `invalid host port ${String(port.hostPort)}`);
      // An empty HostPort asks the engine for a free one.
      (bindings[key] ??= []).push({ HostIp: port.hostIp ?? '', HostPort: port.hostPort === 0 ? '' : String(port.hostPort) });
    }
    // Each field is copied by name: a spec object carrying anything else (a smuggled HostConfig,
    // Binds, CapAdd under another spelling) has no way into the request.
    const hostConfig: HostConfig = {
      NetworkMode: spec.network,
      RestartPolicy: { Name: restart },
      ...(ports.length > 0 ? { PortBindings: bindings } : {}),
      ...(spec.mounts?.length ? { Mounts: spec.mounts.map((m) => ({ Type: m.type, Source: m.source, Target: m.target, ReadOnly: m.readOnly })) } : {}),
      ...(spec.memoryBytes !== undefined ? { Memory: spec.memoryBytes } : {}),
      ...(spec.cpus !== undefined ? { NanoCpus: Math.round(spec.cpus * 1e9) } : {}),
      ...(spec.capAdd?.length ? { CapAdd: [...spec.capAdd] } : {}),
      ...(spec.privileged === true ? { Privileged: true } : {}),
      ...(spec.pidMode === 'host' ? { PidMode: 'host' } : {}),
      ...(spec.ipcMode !== undefined ? { IpcMode: spec.ipcMode } : {}),
      ...(spec.devices?.length ? { Devices: spec.devices.map((d) => ({ PathOnHost: d.host, PathInContainer: d.container, CgroupPermissions: d.permissions })) } : {}),
      ...(spec.securityOpt?.length ? { SecurityOpt: [...spec.securityOpt] } : {}),
    };
    const health = spec.healthcheck;
    try {
      const created = await this.#docker.json<{ Id: string }>({ method: 'POST', path: '/containers/create', query: { name: spec.name }, body: {
        Image: spec.image,
        Env: env,
        Labels: { ...spec.labels },
        ...(ports.length > 0 ? { ExposedPorts: exposed } : {}),
        ...(spec.command ? { Cmd: [...spec.command] } : {}),
        ...(spec.entrypoint ? { Entrypoint: [...spec.entrypoint] } : {}),
        ...(spec.user !== undefined ? { User: spec.user } : {}),
        // No Test: the engine keeps the image's command and takes only these timings.
        ...(health ? {
          Healthcheck: {
            Interval: health.intervalMs * 1e6, Timeout: health.timeoutMs * 1e6,
            Retries: health.retries, StartPeriod: health.startPeriodMs * 1e6,
          },
        } : {}),
        HostConfig: hostConfig,
      } satisfies ContainerCreateBody });
      if (!created?.Id) throw new Error('the engine created the container without naming it');
      return created.Id;
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_CONTAINER_FAILED', `create container ${spec.name}`);
    }
  }

  /** Starting a running container is not an error (the engine answers 304). */
  async start(id: string): Promise<void> {
    try {
      await this.#docker.json({ method: 'POST', path: `/containers/${namePath(id)}/start` });
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_CONTAINER_FAILED', `start container ${id}`);
    }
  }

  /** Sends the stop signal, then kills after `timeoutSeconds`. Stopping a stopped container is not an error. */
  async stop(id: string, timeoutSeconds = 10): Promise<void> {
    try {
      await this.#docker.json({ method: 'POST', path: `/containers/${namePath(id)}/stop`, query: { t: timeoutSeconds } });
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `stop container ${id}`);
    }
  }

  /** Removing a container that is already gone is not an error. */
  async remove(id: string, options: RemoveContainerOptions = {}): Promise<void> {
    try {
      await this.#docker.json({ method: 'DELETE', path: `/containers/${namePath(id)}`, query: { force: options.force ?? false } });
    } catch (err) {
      if (statusOf(err) === 404) return;
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `remove container ${id}`);
    }
  }

  async rename(id: string, newName: string): Promise<void> {
    try {
      await this.#docker.json({ method: 'POST', path: `/containers/${namePath(id)}/rename`, query: { name: newName } });
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `rename container ${id} to ${newName}`);
    }
  }

  /** The last `tail` lines of stdout and stderr, interleaved as the engine logged them. */
  async logs(id: string, tail = 50): Promise<string[]> {
    try {
      const output = await this.#readLogs(id, tail);
      return splitLogLines(output).slice(-tail);
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `read the logs of container ${id}`);
    }
  }

  /**
   * The exit code of the container's last run that ended, from the engine's `die` events; undefined
   * when the engine no longer holds such an event (it keeps its newest few hundred). Inspect says 0
   * once a restart policy started the container again, which hides why it had to.
   */
  async lastExitCode(id: string): Promise<number | undefined> {
    try {
      // `until` now: the engine answers with the events it holds and ends the answer.
      const stream = await this.#docker.stream({
        path: '/events', query: { since: 0, until: (Date.now() / 1000).toFixed(3), filters: { container: [id], type: ['container'], event: ['die'] } },
      });
      let last: number | undefined;
      for await (const text of createInterface({ input: stream, crlfDelay: Infinity })) {
        const code = Number((JSON.parse(text) as { Actor?: { Attributes?: { exitCode?: string } } }).Actor?.Attributes?.exitCode);
        if (Number.isInteger(code)) last = code;
      }
      return last;
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_DOCKER', `read the events of container ${id}`);
    }
  }

  // Raw bytes, never parsed: a TTY container's output is whatever the program wrote, JSON or not.
  async #readLogs(id: string, tail: number): Promise<Buffer> {
    const stream = await this.#docker.stream({ path: `/containers/${namePath(id)}/logs`, query: { stdout: true, stderr: true, follow: false, tail } });
    const chunks: Buffer[] = [];
    for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
    return Buffer.concat(chunks);
  }
}

/**
 * The host port the engine published `containerPort` (tcp) on, at `hostIp`; undefined when it is
 * not published there (a stopped container publishes nothing).
 */
export function publishedPort(info: Pick<ContainerInfo, 'ports'>, containerPort: number, hostIp = '127.0.0.1'): number | undefined {
  return info.ports.find((p) => p.containerPort === containerPort && p.protocol === 'tcp' && p.hostIp === hostIp)?.hostPort;
}

const PORT_KEY = /^(\d{1,5})\/(tcp|udp)$/;

function portsOf(ports: Record<string, { HostIp: string; HostPort: string }[] | null> | null | undefined): PublishedPort[] {
  const out: PublishedPort[] = [];
  for (const [key, bindings] of Object.entries(ports ?? {})) {
    const match = PORT_KEY.exec(key);
    if (!match) continue;
    for (const binding of bindings ?? []) {
      const hostPort = Number(binding.HostPort);
      if (!Number.isInteger(hostPort) || hostPort < 1 || hostPort > 65535) continue;
      out.push({ containerPort: Number(match[1]), protocol: match[2] === 'udp' ? 'udp' : 'tcp', hostIp: binding.HostIp, hostPort });
    }
  }
  return out;
}

function healthOf(health: HealthInspect): ContainerHealth {
  return {
    status: health.Status,
    failingStreak: health.FailingStreak,
    log: (health.Log ?? []).map((entry) => ({ start: entry.Start, end: entry.End, exitCode: entry.ExitCode, output: entry.Output })),
  };
}

function invalidSpec(spec: ContainerSpec, why: string): FerryError {
  return new FerryError('FERRY_ERR_CONTAINER_FAILED', { message: `Invalid container spec for ${spec.name}: ${why}` });
}
