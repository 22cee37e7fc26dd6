import type { FerryEvent } from './envelope.ts';

/**
 * Signs events as they are published: a receiver's host key, the registry's own key. `sign` answers
 * the Ed25519 signature of the bytes as 128 lowercase hex characters (@ferry/auth `signBytes`).
 */
export interface EventSigner {
  keyId: string;
  sign(message: Buffer): string;
}

/** Put in front of the event's bytes before signing, so that no other Ferry signature can pass for one. */
export const EVENT_SIGNATURE_SCHEME = 'FERRY-EVENT-V1';

/** The two CloudEvents extension attributes a signed event carries. */
export const EVENT_KEY_ID_ATTRIBUTE = 'ferrykeyid';
export const EVENT_SIGNATURE_ATTRIBUTE = 'ferrysig';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
// The signature is the last member of the published JSON, so what it covers is exactly the bytes before it.
const TAIL = /,"ferrysig":"([0-9a-f]{128})"\}$/;

/**
 * The message bytes of a signed event: `{...event, ferrykeyid}` as JSON.stringify writes it, with
 * `ferrysig` (the signature of `FERRY-EVENT-V1` LF those bytes) appended as its last member. A
 * verifier needs no canonical form: it cuts the signature off the bytes it received.
 */
export function signedEventPayload(event: FerryEvent, signer: EventSigner): Uint8Array {
  const unsigned = JSON.stringify({ ...event, [EVENT_KEY_ID_ATTRIBUTE]: signer.keyId });
  const signature = signer.sign(signedMessage(unsigned));
  return encoder.encode(`${unsigned.slice(0, -1)},"${EVENT_SIGNATURE_ATTRIBUTE}":"${signature}"}`);
}

/** What a verifier checks: the key id the event names, the signature, and the bytes it covers. */
export interface EventSignature {
  keyId: string;
  signature: string;
  /** `FERRY-EVENT-V1` LF the event's JSON without its signature. */
  message: Buffer;
}

/**
 * Takes a published event's signature apart; undefined for an event that carries none (or not
 * in the form {@link signedEventPayload} writes). Checking the signature is the caller's part.
 */
export function eventSignature(payload: Uint8Array): EventSignature | undefined {
  const text = decoder.decode(payload);
  const match = TAIL.exec(text);
  if (!match?.[1]) return undefined;
  const unsigned = `${text.slice(0, match.index)}}`;
  let keyId: unknown;
  try {
    keyId = (JSON.parse(unsigned) as Record<string, unknown>)[EVENT_KEY_ID_ATTRIBUTE];
  } catch {
    return undefined;
  }
  if (typeof keyId !== 'string') return undefined;
  return { keyId, signature: match[1], message: signedMessage(unsigned) };
}

function signedMessage(unsigned: string): Buffer {
  return Buffer.from(`${EVENT_SIGNATURE_SCHEME}\n${unsigned}`, 'utf8');
}
