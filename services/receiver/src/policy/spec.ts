import type { ContainerSpec, MountSpec } from '@ferry/docker';
import { normalizeCapability, parseDevice, parsePort, parseVolume, parseMemory, type Manifest } from '@ferry/protocol';
import { policyDenied } from './gate.ts';
import { DEFAULT_POLICY, evaluate, type Policy } from './policy.ts';

/**
 * The container a manifest asks for, field by field from its service spec. The policy is
 * evaluated once more here, so a path that forgot the gate still cannot run what it refuses.
 * `ferryLabels` are the receiver's own labels; they win over the user's (whose `ferry.*` keys the
 * manifest schema refuses anyway).
 */
export function containerSpecFor(manifest: Manifest, ferryLabels: Record<string, string>, policy: Readonly<Policy> = DEFAULT_POLICY): ContainerSpec {
  const violations = evaluate(policy, manifest);
  if (violations.length > 0) throw policyDenied(violations, manifest.deploymentId);
  const service = manifest.service;
  const mounts: MountSpec[] = [];
  for (const spec of service.volumes ?? []) {
    const volume = parseVolume(spec);
    if (volume) mounts.push({ type: volume.kind, source: volume.source, target: volume.target, readOnly: volume.readOnly });
  }
  const ports = (service.ports ?? []).map(parsePort).filter((p) => p !== undefined);
  const devices = (service.devices ?? []).map(parseDevice).filter((d) => d !== undefined);
  const memoryBytes = service.memory !== undefined ? parseMemory(service.memory) : undefined;
  return {
    name: service.name,
    image: manifest.image.ref,
    env: service.env,
    network: service.network,
    labels: { ...service.labels, ...ferryLabels },
    ...(service.restart ? { restart: service.restart } : {}),
    ...(ports.length > 0 ? { ports } : {}),
    ...(mounts.length > 0 ? { mounts } : {}),
    ...(memoryBytes !== undefined ? { memoryBytes } : {}),
    ...(service.cpus !== undefined ? { cpus: service.cpus } : {}),
    ...(service.command ? { command: service.command } : {}),
    ...(service.entrypoint ? { entrypoint: service.entrypoint } : {}),
    ...(service.user !== undefined ? { user: service.user } : {}),
    ...(service.capAdd?.length ? { capAdd: service.capAdd.map(normalizeCapability) } : {}),
    ...(service.privileged === true ? { privileged: true } : {}),
    ...(service.pid === 'host' ? { pidMode: 'host' as const } : {}),
    ...(service.ipc !== undefined ? { ipcMode: service.ipc } : {}),
    ...(devices.length > 0 ? { devices } : {}),
    ...(service.securityOpt?.length ? { securityOpt: service.securityOpt } : {}),
    // With a `cmd` check Docker runs the image's HEALTHCHECK, at the pace the manifest asks for.
    ...(service.health?.type === 'cmd' ? {
      healthcheck: {
        intervalMs: service.health.intervalMs, timeoutMs: service.health.timeoutMs,
        retries: service.health.retries, startPeriodMs: service.health.startPeriodMs,
      },
    } : {}),
  };
}
