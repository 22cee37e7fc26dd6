import type { Actual, Desired, DriftField, DriftReason } from './view.ts';

const FIELDS: readonly DriftField[] = ['imageId', 'configHash', 'state', 'restarts', 'missing'];

/** One FERRY_DRIFT_IGNORE entry: `field` ignores it for every service, `service:field` for one. */
export interface DriftIgnoreRule {
  service?: string;
  field: DriftField;
}

/**
 * Parses FERRY_DRIFT_IGNORE (`configHash,web:state`).
 *
 * @throws Error naming the entry that is not a known field.
 */
export function parseDriftIgnore(value: string): DriftIgnoreRule[] {
  const rules: DriftIgnoreRule[] = [];
  for (const entry of value.split(',').map((s) => s.trim()).filter(Boolean)) {
    const colon = entry.lastIndexOf(':');
    const service = colon === -1 ? undefined : entry.slice(0, colon);
    const field = colon === -1 ? entry : entry.slice(colon + 1);
    if (!(FIELDS as readonly string[]).includes(field) || service === '') {
      throw new Error(`"${entry}": expected FIELD or SERVICE:FIELD, FIELD one of ${FIELDS.join(', ')}`);
    }
    rules.push({ ...(service === undefined ? {} : { service }), field: field as DriftField });
  }
  return rules;
}

/**
 * How what runs differs from what was deployed, minus the ignored fields. A field the actual state
 * does not carry (an event-built actual has no config hash) is not compared: unknown is not drift.
 * Restarts count for the deployment's own container only (one labelled with another deployment is
 * not what the desired record vouches for): a container its restart policy restarted even once
 * crashed after its deployment passed, while its state may read `running` between two crashes.
 */
export function driftReasons(service: string, desired: Desired | null, actual: Actual | null, ignore: readonly DriftIgnoreRule[]): DriftReason[] {
  if (!desired || !actual) return [];
  const ignored = (field: DriftField): boolean => ignore.some((r) => r.field === field && (r.service === undefined || r.service === service));
  const reasons: DriftReason[] = [];
  if (actual.state === 'missing') {
    if (!ignored('missing')) reasons.push({ field: 'missing', desired: desired.imageId, actual: null });
    return reasons;
  }
  if (actual.state !== 'running' && !ignored('state')) reasons.push({ field: 'state', desired: 'running', actual: actual.state });
  if (actual.imageId !== undefined && actual.imageId !== desired.imageId && !ignored('imageId')) {
    reasons.push({ field: 'imageId', desired: desired.imageId, actual: actual.imageId });
  }
  if (actual.configHash !== undefined && actual.configHash !== desired.configHash && !ignored('configHash')) {
    reasons.push({ field: 'configHash', desired: desired.configHash, actual: actual.configHash });
  }
  const deployed = actual.deploymentId === undefined || actual.deploymentId === desired.deploymentId;
  if (deployed && actual.restarts !== undefined && actual.restarts > 0 && !ignored('restarts')) {
    reasons.push({ field: 'restarts', desired: 0, actual: actual.restarts });
  }
  return reasons;
}

/** Whether two lists of reasons name the same differences (order and values included). */
export function sameReasons(a: readonly DriftReason[], b: readonly DriftReason[]): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
