/**
 * Event types of the deployment lifecycle (docs/events.md). The CloudEvents `type` is `ferry.<type>`;
 * the NATS subject is `ferry.events.<host>.<service>.<type>`.
 */
export const EVENT_TYPES = [
  'build.started', 'build.completed',
  'transfer.started', 'transfer.completed',
  'package.verified', 'image.loaded', 'container.started',
  'healthcheck.passed', 'healthcheck.failed',
  'deployment.completed', 'deployment.failed',
  'rollback.started', 'rollback.completed',
  'host.registered', 'host.lost', 'drift.detected',
  'policy.denied', 'grant.grace',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export const EVENT_STREAM = 'FERRY_EVENTS';
export const EVENT_SUBJECT_PREFIX = 'ferry.events';

/** NATS subject tokens may not hold dots, spaces or wildcards. */
export function subjectToken(value: string): string {
  return value.replace(/[^A-Za-z0-9_-]/g, '_') || '_';
}

export function eventSubject(host: string, service: string, type: EventType): string {
  return `${EVENT_SUBJECT_PREFIX}.${subjectToken(host)}.${subjectToken(service)}.${type}`;
}
