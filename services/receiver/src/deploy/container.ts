import type { ContainerSpec } from '@ferry/docker';
import type { Logger } from '@ferry/log';
import { LABELS, configHash, routeLabelOf, type Manifest } from '@ferry/protocol';
import { DEFAULT_POLICY, checkBindSources, containerSpecFor, policyDenied, type Policy } from '../policy/index.ts';
import type { Emit } from './verdict.ts';

/**
 * The container a manifest asks for, with the receiver's labels; the policy is evaluated again
 * here (containerSpecFor), so nothing it refuses reaches the engine by any path.
 */
export function specFor(manifest: Manifest, policy: Readonly<Policy> | undefined): ContainerSpec {
  const routed = routeLabelOf(manifest.service);
  const spec = containerSpecFor(manifest, {
    [LABELS.service]: manifest.service.name,
    [LABELS.deploymentId]: manifest.deploymentId,
    [LABELS.configHash]: configHash(manifest),
    [LABELS.imageRef]: manifest.image.ref,
    [LABELS.imageId]: manifest.image.id,
    ...(routed ? { [LABELS.route]: JSON.stringify(routed) } : {}),
  }, policy);
  if (!routed) return spec;
  // The route's port on loopback only, at a port the engine picks at each start: the proxy is the
  // way in, and two containers of the service (start-first) never want the same host port.
  return { ...spec, ports: [...(spec.ports ?? []), { containerPort: routed.route.port, protocol: 'tcp', hostPort: 0, hostIp: '127.0.0.1' }] };
}

/**
 * The spec with its bind sources as found on the host now (no symbolic link in them, each
 * allowed by the policy); a refusal publishes the `policy.denied` audit event, as the gate does,
 * and throws FERRY_ERR_POLICY_DENIED.
 */
export async function bindsOnHost(spec: ContainerSpec, manifest: Manifest, deps: { policy?: Readonly<Policy> | undefined; emit: Emit; log: Logger }): Promise<ContainerSpec> {
  const { spec: resolved, violations } = await checkBindSources(spec, deps.policy ?? DEFAULT_POLICY);
  const first = violations[0];
  if (!first) return resolved;
  deps.emit('policy.denied', { ...first, violations });
  deps.log.warn({ rules: violations.map((v) => v.rule) }, 'deployment refused by policy: bind source on the host');
  throw policyDenied(violations, manifest.deploymentId);
}
