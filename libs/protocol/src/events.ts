/**
 * The steps of a release (docs/events.md "Releases"): published by the sender that runs it, signed
 * with the operator's key, on the subject {@link releaseSubject} gives.
 */
const RELEASE_EVENT_TYPES_LIST = [
  'release.started', 'release.phase.completed', 'release.wave.completed', 'release.paused',
  'release.completed', 'release.failed', 'release.rollback.started', 'release.rolled_back',
] as const;
export const RELEASE_EVENT_TYPES: readonly ReleaseEventType[] = RELEASE_EVENT_TYPES_LIST;
export type ReleaseEventType = (typeof RELEASE_EVENT_TYPES_LIST)[number];

export function isReleaseEventType(type: string): type is ReleaseEventType {
  return (RELEASE_EVENT_TYPES_LIST as readonly string[]).includes(type);
}

/**
 * Event types of the deployment lifecycle (docs/events.md). The CloudEvents `type` is `ferry.<type>`;
 * the NATS subject is `ferry.events.<host>.<service>.<type>`.
 */
export const EVENT_TYPES = [
  'build.started', 'build.completed',
  'transfer.started', 'transfer.completed',
  'package.verified', 'image.loaded', 'container.started',
  'healthcheck.passed', 'healthcheck.failed',
  'deployment.completed', 'deployment.failed', 'deployment.switched',
  'rollback.started', 'rollback.completed', 'deployment.removed',
  'canary.started', 'canary.promoted', 'canary.rolled_back',
  'host.registered', 'host.lost', 'drift.detected',
  'policy.denied', 'grant.grace',
  ...RELEASE_EVENT_TYPES_LIST,
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

/**
 * The host token of release events. A release is not one host's: its events go to
 * `ferry.events._release.<project>.<type>`. No host can be named so (host ids start with a letter
 * or digit), in the same way as the registry's host events use the service `_host`.
 */
export const RELEASE_HOST = '_release';

/** At most this many characters of a project name reach a subject. */
const PROJECT_TOKEN_MAX = 63;

/**
 * A project's name as the service token of its release events: lower case, characters outside
 * `[a-z0-9_-]` as `-`, starting with a letter or digit, at most 63 characters: a service name
 * (SERVICE_NAME_PATTERN), so that subscribing to one project's releases is
 * `ferry.events._release.<token>.>`. The event's `data.project` keeps the name as written.
 */
export function projectToken(project: string): string {
  const name = project.toLowerCase().replace(/[^a-z0-9_-]/g, '-').replace(/^[-_]+/, '').slice(0, PROJECT_TOKEN_MAX);
  return name.length > 0 ? name : 'project';
}

/** The NATS subject of a release event of `project`. */
export function releaseSubject(project: string, type: ReleaseEventType): string {
  return eventSubject(RELEASE_HOST, projectToken(project), type);
}
