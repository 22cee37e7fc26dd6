import type { KeyObject } from 'node:crypto';
import { hostKeyId, verifyBytes } from '@ferry/auth';
import { eventSignature, eventTypeOf, type FerryEvent } from '@ferry/events';
import { SERVICE_NAME_PATTERN, eventSubject } from '@ferry/protocol';
import { HOST_SERVICE } from './projection.ts';

/** Why an event was kept out of the projection. */
export type DropReason = 'unsigned' | 'bad-signature' | 'not-enrolled' | 'wrong-subject' | 'bad-name';
export const DROP_REASONS: readonly DropReason[] = ['unsigned', 'bad-signature', 'not-enrolled', 'wrong-subject', 'bad-name'];

/** What the registry says itself; everything else is believed only from the host it speaks of. */
const REGISTRY_TYPES: ReadonlySet<string> = new Set(['host.registered', 'host.lost', 'drift.detected']);
const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

export type Admission = { ok: true; event: FerryEvent } | { ok: false; reason: DropReason };

export interface ProvenanceKeys {
  /** The keys `host`'s events that reached the stream at `arrivalMs` may be signed with (its enrolled key). */
  hostKeysAt(host: string, arrivalMs: number): KeyObject[];
  /** The registry's own event key: its own events (host.registered, host.lost, drift.detected) carry its signature. */
  registryKey: KeyObject | undefined;
}

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
  const claimed = Date.parse(event.time);
  if (Number.isFinite(claimed) && claimed <= arrivalMs) return { ok: true, event };
  return { ok: true, event: { ...event, time: new Date(arrivalMs).toISOString() } };
}
