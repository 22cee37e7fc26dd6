import type { DeploymentState, HealthCheckProgress } from '@ferry/protocol';
import type { ReceiverClient } from './receiver-client.ts';

/** How often the receiver's journal is asked while a deployment runs there. */
export const WATCH_INTERVAL_MS = 500;

const FINAL: readonly DeploymentState[] = ['COMPLETED', 'ROLLED_BACK', 'FAILED'];

/**
 * Follows a deployment while the sender waits for the receiver's answer (the load, the start and
 * the health check can take minutes): asks the receiver's journal (`GET /v1/deployments/ID`)
 * every `intervalMs` and tells `onState` each state the record entered since, in order
 * (VERIFYING, LOADING, DEPLOYING, VALIDATING…), once each, and VALIDATING again with the health
 * check's progress whenever it made another probe. Best effort: a question that fails or finds no record yet (the receiver
 * journals a deployment once its package is verified) is asked again at the next tick; a final
 * state ends it. Answers the function that stops it.
 */
export function watchDeployment(
  client: ReceiverClient, deploymentId: string, onState: (state: DeploymentState, healthCheck?: HealthCheckProgress) => void, intervalMs = WATCH_INTERVAL_MS,
): () => void {
  let stopped = false;
  let told = 0;
  let probes = 0;
  let timer: NodeJS.Timeout | undefined;
  const tick = async (): Promise<void> => {
    const record = await client.deployment(deploymentId).catch(() => undefined);
    if (stopped) return;
    const states = record?.states ?? [];
    for (; told < states.length; told++) onState(states[told]?.state ?? 'PENDING');
    // The probes that answered since, as the receiver counts them while its check runs.
    const check = record?.state === 'VALIDATING' ? record.healthCheck : undefined;
    if (check && check.attempts !== probes) {
      probes = check.attempts;
      onState('VALIDATING', check);
    }
    if (record && FINAL.includes(record.state)) return;
    schedule();
  };
  const schedule = (): void => {
    timer = setTimeout(() => void tick(), intervalMs);
    // Never what keeps the process alive.
    timer.unref();
  };
  schedule();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
