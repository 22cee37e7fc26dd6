import { sign, type KeyObject } from 'node:crypto';
import { RELEASE_HOST, projectToken, type ReleaseEventType } from '@ferry/protocol';
import { createEvent, type EventFields, type FerryEvent, type ReleaseEventFields } from './envelope.ts';
import type { EventSink } from './publisher.ts';
import type { EventSigner } from './signature.ts';

/** What a release event's data holds besides `releaseId` and `project`, which come from the release. */
export type ReleaseEventData<T extends ReleaseEventType> = Omit<EventFields[T], keyof ReleaseEventFields>;

export interface ReleaseEventInput<T extends ReleaseEventType> {
  /** `ferry://sender/<hostname>`. */
  source: string;
  releaseId: string;
  project: string;
  data: ReleaseEventData<T>;
  /** The signing key's grant, when its rights come from one (`ferrygrant`, see FerryEvent). */
  grant?: string | undefined;
}

/**
 * Builds a release event: `host` is `_release`, `service` the project's subject token, so it goes
 * to `ferry.events._release.<project token>.<type>`; `deploymentid` is empty (a release is many
 * deployments: theirs carry `data.release`).
 */
export function createReleaseEvent<T extends ReleaseEventType>(type: T, input: ReleaseEventInput<T>): FerryEvent<T> {
  const data = { releaseId: input.releaseId, project: input.project, ...input.data } as unknown as EventFields[T];
  // Same-named fields of `input.data` cannot overwrite the release's own.
  Object.assign(data, { releaseId: input.releaseId, project: input.project });
  const event = createEvent(type, { source: input.source, host: RELEASE_HOST, service: projectToken(input.project), deploymentId: '', data });
  if (input.grant !== undefined) (event as { ferrygrant?: string }).ferrygrant = input.grant;
  return event;
}

/** An {@link EventSigner} of an Ed25519 private key: the operator's key a sender signs its requests with. */
export function keySigner(keyId: string, privateKey: KeyObject): EventSigner {
  return { keyId, sign: (message) => sign(null, message, privateKey).toString('hex') };
}

export interface ReleaseEventsOptions {
  sink: EventSink;
  source: string;
  releaseId: string;
  project: string;
  /**
   * Signs every release event. The registry believes a release event only when it is signed by a
   * key its trust file gives the deploy role (docs/registry.md "Events it believes"); an unsigned
   * one still reaches the stream and `ferry events`.
   */
  signer?: EventSigner | undefined;
  grant?: string | undefined;
}

/**
 * The release events of one release, as the sender running it publishes them: one call per step,
 * fire-and-forget like every publish (a release never waits for, or fails because of, the bus).
 */
export class ReleaseEvents {
  readonly #options: ReleaseEventsOptions;

  constructor(options: ReleaseEventsOptions) {
    this.#options = options;
  }

  get releaseId(): string {
    return this.#options.releaseId;
  }

  /** Publishes one step of the release and answers the event as published. */
  publish<T extends ReleaseEventType>(type: T, data: ReleaseEventData<T>): FerryEvent<T> {
    const { sink, source, releaseId, project, signer, grant } = this.#options;
    const event = createReleaseEvent(type, { source, releaseId, project, data, grant });
    sink.publish(event, signer ? { signer } : {});
    return event;
  }
}
