import { ReleaseEvents, keySigner, type EventSink } from '@ferry/events';
import type { Credentials } from '../receiver-client.ts';

/** What publishing a release's events takes: the bus, the sender's CloudEvents source, the operator's key. */
export interface ReleaseEventDeps {
  events: EventSink;
  source: string;
  credentials: Credentials;
}

/**
 * The release events of one release, signed with the operator's key the sender signs its
 * requests with (and its grant): the registry believes a release event only so signed.
 */
export function releaseEventsOf(deps: ReleaseEventDeps, releaseId: string, project: string): ReleaseEvents {
  return new ReleaseEvents({
    sink: deps.events, source: deps.source, releaseId, project,
    signer: keySigner(deps.credentials.keyId, deps.credentials.privateKey), grant: deps.credentials.grant,
  });
}
