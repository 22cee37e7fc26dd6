import type { KeyObject } from 'node:crypto';
import { coversHost, coversService, hostKeyId, roleAllows, validity, verifyBytes, type HostFacts, type Scope } from '@ferry/auth';
import { eventSignature, eventTypeOf, type FerryEvent } from '@ferry/events';
import { RELEASE_HOST, RELEASE_ID_PATTERN, SERVICE_NAME_PATTERN, eventSubject, isReleaseEventType, projectToken } from '@ferry/protocol';
import { HOST_SERVICE } from './projection.ts';

/** Why an event was kept out of the projection. */
export type DropReason = 'unsigned' | 'bad-signature' | 'not-enrolled' | 'not-allowed' | 'wrong-subject' | 'bad-name';
export const DROP_REASONS: readonly DropReason[] = ['unsigned', 'bad-signature', 'not-enrolled', 'not-allowed', 'wrong-subject', 'bad-name'];

/** What the registry says itself; everything else is believed only from the host it speaks of. */
const REGISTRY_TYPES: ReadonlySet<string> = new Set(['host.registered', 'host.lost', 'drift.detected']);
const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

/** `signer`: the key id of an admitted release event (a release's events are an operator's, not a host's). */
export type Admission = { ok: true; event: FerryEvent; signer?: string } | { ok: false; reason: DropReason };

/** What a release event claims to be about: the services and hosts it names. */
export interface ReleaseClaims {
  services: string[];
  hosts: string[];
}

export interface ProvenanceKeys {
  /** The keys `host`'s events that reached the stream at `arrivalMs` may be signed with (its enrolled key). */
  hostKeysAt(host: string, arrivalMs: number): KeyObject[];
  /** The registry's own event key: its own events (host.registered, host.lost, drift.detected) carry its signature. */
  registryKey: KeyObject | undefined;
  /**
   * The keys a release event signed by `keyId` (with `grant`, its `ferrygrant`) may be verified
   * with: see {@link releaseSignerKeys}. Without it no release event is believed.
   */
  releaseKeysAt?(keyId: string, grant: string | undefined, arrivalMs: number, claims: ReleaseClaims): KeyObject[];
}

/**
 * The public keys among `scopes` (what the trust file, a stored grant or the event's grant say of
 * one key id) that may sign a release event naming `claims`: a role that may deploy, not revoked,
 * valid (or in its grace period) when the event reached the stream, and covering every service and
 * host the event names — what the same key would need to deploy them one by one.
 */
export function releaseSignerKeys(scopes: readonly Scope[], options: {
  isRevoked: (scope: Scope) => boolean; hostFacts: (host: string) => HostFacts; arrivalMs: number; claims: ReleaseClaims;
}): KeyObject[] {
  const at = Math.floor(options.arrivalMs / 1000);
  return scopes
    .filter((scope) => roleAllows(scope.role, 'deploy') && !options.isRevoked(scope))
    .filter((scope) => {
      const valid = validity(scope, at);
      return valid === 'valid' || valid === 'grace';
    })
    .filter((scope) => options.claims.services.every((service) => coversService(scope, service)))
    .filter((scope) => options.claims.hosts.every((host) => coversHost(scope, options.hostFacts(host))))
    .map((scope) => scope.publicKey);
}

/** The services and hosts a release event names (its plan, or its outcomes). */
export function releaseClaims(data: Record<string, unknown>): ReleaseClaims {
  const services = new Set<string>();
  const hosts = new Set<string>();
  const add = (set: Set<string>, value: unknown): void => {
    if (typeof value === 'string') set.add(value);
  };
  if (Array.isArray(data.services)) {
    for (const s of data.services as unknown[]) {
      const entry = (typeof s === 'object' && s !== null ? s : {}) as Record<string, unknown>;
      add(services, entry.name);
      if (Array.isArray(entry.hosts)) for (const h of entry.hosts as unknown[]) add(hosts, h);
    }
  }
  if (Array.isArray(data.waves)) for (const wave of data.waves as unknown[]) if (Array.isArray(wave)) for (const h of wave as unknown[]) add(hosts, h);
  if (typeof data.outcomes === 'object' && data.outcomes !== null) {
    for (const [host, row] of Object.entries(data.outcomes as Record<string, unknown>)) {
      hosts.add(host);
      if (typeof row === 'object' && row !== null) for (const service of Object.keys(row)) services.add(service);
    }
  }
  if (Array.isArray(data.hosts)) for (const h of data.hosts as unknown[]) add(hosts, h);
  // data.service and data.host are the envelope's (the project's token, `_release`), not claims.
  add(services, data.failedService);
  add(hosts, data.failedHost);
  return { services: [...services], hosts: [...hosts] };
}

/** A grant travels in an event as it does in a header: base64url, bounded. */
const GRANT_TEXT = /^[A-Za-z0-9_-]{1,16384}$/;

/**
 * Whether a stream message may change the registry's view, and with what time. It may when it is
 * signed by the enrolled key of the host its payload names (`data.host`, which the subject must
 * agree with), or, for the registry's own event types, by the registry's key. Its `time` is the
 * earlier of what it says and when the stream stored it (`arrivalMs`), so that no event can claim
 * to come from the future. Pure: the same message and keys give the same answer in a replay.
 */
export function admitEvent(payload: Uint8Array, event: FerryEvent, subject: string, arrivalMs: number, keys: ProvenanceKeys): Admission {
  const { host, service } = event.data;
  const type = eventTypeOf(event.type);
  if (type !== undefined && (isReleaseEventType(type) || host === RELEASE_HOST)) return admitReleaseEvent(payload, event, subject, arrivalMs, keys);
  if (!type || !HOST_ID.test(host) || (service !== HOST_SERVICE && !SERVICE_NAME_PATTERN.test(service))) return { ok: false, reason: 'bad-name' };
  if (subject !== eventSubject(host, service, type)) return { ok: false, reason: 'wrong-subject' };
  const signature = eventSignature(payload);
  if (!signature) return { ok: false, reason: 'unsigned' };
  let candidates: KeyObject[];
  if (REGISTRY_TYPES.has(type)) {
    candidates = keys.registryKey ? [keys.registryKey] : [];
  } else {
    if (signature.keyId !== hostKeyId(host)) return { ok: false, reason: 'bad-signature' };
    candidates = keys.hostKeysAt(host, arrivalMs);
    if (candidates.length === 0) return { ok: false, reason: 'not-enrolled' };
  }
  if (!candidates.some((key) => verifyBytes(key, signature.message, signature.signature))) return { ok: false, reason: 'bad-signature' };
  return { ok: true, event: atMost(event, arrivalMs) };
}

/**
 * A release event: on `ferry.events._release.<project token>.<type>` only, naming a valid release
 * id and a project whose token is its service, and signed by an operator's key that may deploy
 * every service and host it names (ProvenanceKeys.releaseKeysAt).
 */
function admitReleaseEvent(payload: Uint8Array, event: FerryEvent, subject: string, arrivalMs: number, keys: ProvenanceKeys): Admission {
  const type = eventTypeOf(event.type);
  const data = event.data as unknown as Record<string, unknown>;
  const { project, releaseId } = data;
  if (!type || !isReleaseEventType(type) || event.data.host !== RELEASE_HOST) return { ok: false, reason: 'bad-name' };
  if (typeof project !== 'string' || project.length > 128 || typeof releaseId !== 'string' || !RELEASE_ID_PATTERN.test(releaseId)) return { ok: false, reason: 'bad-name' };
  const subjectService = projectToken(project);
  if (event.data.service !== subjectService) return { ok: false, reason: 'bad-name' };
  if (subject !== eventSubject(RELEASE_HOST, event.data.service, type)) return { ok: false, reason: 'wrong-subject' };
  const signature = eventSignature(payload);
  if (!signature) return { ok: false, reason: 'unsigned' };
  const grant = (event as { ferrygrant?: unknown }).ferrygrant;
  if (grant !== undefined && (typeof grant !== 'string' || !GRANT_TEXT.test(grant))) return { ok: false, reason: 'not-allowed' };
  const candidates = keys.releaseKeysAt?.(signature.keyId, grant, arrivalMs, releaseClaims(data)) ?? [];
  if (candidates.length === 0) return { ok: false, reason: 'not-allowed' };
  if (!candidates.some((key) => verifyBytes(key, signature.message, signature.signature))) return { ok: false, reason: 'bad-signature' };
  return { ok: true, event: atMost(event, arrivalMs), signer: signature.keyId };
}

/** The event with its time no later than when the stream stored it. */
function atMost(event: FerryEvent, arrivalMs: number): FerryEvent {
  const claimed = Date.parse(event.time);
  if (Number.isFinite(claimed) && claimed <= arrivalMs) return event;
  return { ...event, time: new Date(arrivalMs).toISOString() };
}
