import { deliver, type DeliveryDeps, type DeliveryRequest, type DeliveryResult } from './deliver.ts';
import type { ResolvedTarget } from './targets.ts';

export { DEFAULT_PARALLEL, type TargetResult } from './deliver.ts';

export interface FanoutRequest extends Omit<DeliveryRequest, 'targets' | 'prepare' | 'deploymentId'> {
  /** Receiver base URLs, or resolved targets whose `hostKey` each receiver must prove. */
  targets: (string | ResolvedTarget)[];
}

export type FanoutDeps = DeliveryDeps;
export type FanoutResult = DeliveryResult;

/**
 * `ferry push --to A --to B …`, `ferry deploy` and the sender service: the push of deliver.ts to
 * every target, each with its own deployment id, retries and breaker. Never throws for a
 * target's failure, only when the push cannot start (no such image, no target reachable at all).
 */
export async function pushMany(request: FanoutRequest, deps: FanoutDeps): Promise<FanoutResult> {
  const targets = request.targets.map((t) => (typeof t === 'string' ? { url: t } : t));
  return (await deliver({ ...request, targets }, deps)).result;
}
