/*
 * What to do after an error, one line of advice per code a user can act on.
 */
import type { ErrorCode } from '@ferry/protocol';

/** What to do next, for the errors a user can act on. */
const NEXT_STEPS: Partial<Record<ErrorCode, string>> = {
  FERRY_ERR_UNKNOWN_KEY: 'the receiver does not know FERRY_KEY_ID: give the sender its grant (FERRY_GRANT_FILE, "ferry grant issue") or add the key to the receiver\'s trust file ("ferry trust add")',
  FERRY_ERR_BAD_SIGNATURE: 'FERRY_KEY_FILE is not the private key of the public key the receiver trusts for FERRY_KEY_ID',
  FERRY_ERR_BAD_GRANT: 'the grant is not signed by an admin key the receiver trusts, or was altered: "ferry grant show FILE" says who signed it',
  FERRY_ERR_NOT_GRANTED: 'the key\'s grant does not cover this service or host: have an admin issue one that does ("ferry grant issue")',
  FERRY_ERR_GRANT_EXPIRED: 'the key\'s grant is past its notAfter date and its grace: have an admin issue a new one ("ferry grant issue")',
  FERRY_ERR_GRANT_NOT_YET_VALID: 'the key\'s grant starts later (notBefore), or the clocks differ: wait, or sync the clocks',
  FERRY_ERR_KEY_REVOKED: 'this key or its grant was revoked: make a new key ("ferry key new") and have an admin grant it',
  FERRY_ERR_HOST_KEY_MISMATCH: 'the host answered with another host key than the one known for it: someone may be in the way; check the URL and the host\'s key ("ferry key show" on it)',
  FERRY_ERR_STALE_TIMESTAMP: 'this machine\'s clock and the receiver\'s differ by more than 5 minutes: sync them (NTP)',
  FERRY_ERR_CHECKSUM_MISMATCH: 'the package was damaged on the way: push again, and check the network path if it repeats',
  FERRY_ERR_HEALTHCHECK_FAILED: 'the new version did not pass its health check: "ferry status ID --to URL" shows what the probes got and what the container wrote; fix it and push again',
  FERRY_ERR_RECEIVER_UNREACHABLE: 'check the --to URL and that "ferry receiver" runs there',
  FERRY_ERR_IMAGE_NOT_FOUND: 'build or tag the image on the build engine (DOCKER_HOST) first',
  FERRY_ERR_DOCKER_UNAVAILABLE: 'check DOCKER_HOST and that the Docker engine runs',
  FERRY_ERR_CONFIG: 'fix what the message names: an environment variable, or the file one points to (a trust file, a key)',
  FERRY_ERR_DEPLOYMENT_IN_PROGRESS: 'wait for the running deployment of this service to finish',
  FERRY_ERR_NOT_FOUND: 'check the id and that --to names the receiver that ran it; "ferry status --to URL --service S" lists what it keeps (the newest 100 per service)',
  FERRY_ERR_NOTHING_TO_ROLL_BACK: 'that host keeps no previous version of this service (only one was deployed, or it was removed): push the version you want instead',
  FERRY_ERR_ROLLBACK_FAILED: 'the previous version would not run: "ferry status ID --to URL" shows every step the receiver took, then check the container\'s log on that host',
  FERRY_ERR_REGISTRY_UNREACHABLE: 'check FERRY_REGISTRY_URL and that "ferry registry" runs there',
  FERRY_ERR_NO_MATCHING_HOSTS: '"ferry hosts --selector K=V" lists the hosts with those labels and whether they are online; a receiver gets labels from its FERRY_LABELS',
  FERRY_ERR_USAGE: 'see "ferry help COMMAND" for the options it takes',
  FERRY_ERR_RECEIVER_CIRCUIT_OPEN: 'that receiver kept failing: check that "ferry receiver" runs there and can reach its Docker engine, then push to it again',
  FERRY_ERR_POLICY_DENIED: 'drop the refused option, or have that host\'s operator allow it (FERRY_POLICY_* or FERRY_POLICY_FILE; docs/receiver.md "Policy")',
  FERRY_ERR_BAD_MANIFEST: 'the receiver refused the manifest: the problems are listed above; check the container options, or update ferry on one side if the versions differ',
  FERRY_ERR_PAYLOAD_TOO_LARGE: 'the package is over the receiver\'s limit: make the image smaller or raise the limit on that host',
  FERRY_ERR_DISK_FULL: 'free disk space on the target host (old images, its FERRY_DATA_DIR), then push again: a resumable upload goes on where it stopped',
  FERRY_ERR_REPLAY: 'push again: every attempt is signed anew',
  FERRY_ERR_AUTH_MISSING: 'set FERRY_KEY_ID and FERRY_KEY_FILE (see "ferry key new")',
  FERRY_ERR_WRONG_AUDIENCE: 'the URL answers as another host than expected: check --to',
  FERRY_ERR_FORBIDDEN_SOURCE: 'the receiver does not accept requests from this address: have its operator add it to its allowed sources',
  FERRY_ERR_LOAD_FAILED: 'the target\'s Docker engine could not load the image: check its disk space and its log, then push again',
  FERRY_ERR_CONTAINER_FAILED: 'the container would not start with these options: check the ports (already in use?), volumes and command',
  FERRY_ERR_UNSTABLE: 'the container stopped after its check passed, so something else may answer its health address: its log lines say why it stopped; fix that and push again',
  FERRY_ERR_DOCKER: 'the Docker engine refused a request: its message is above; check the engine\'s log',
  FERRY_ERR_EVENTS_UNAVAILABLE: 'check FERRY_NATS_URL and that nats-server runs with JetStream (-js)',
  FERRY_ERR_BUILD_FAILED: 'fix the Dockerfile or the build context; the build log is above',
  FERRY_ERR_IMAGE_TOO_LARGE: 'make the image smaller, or raise --max-image-size',
  FERRY_ERR_BAD_RESPONSE: 'the URL does not answer like this version of ferry: check --to, and that both sides run the same ferry version',
  FERRY_ERR_INTERNAL: 'this is a bug in ferry: run the command again, and report it with the lines above if it repeats',
  FERRY_ERR_BUNDLE_MALFORMED: 'the file is not a whole Ferry bundle: copy it again from its source, or ask for it again',
  FERRY_ERR_BUNDLE_DIGEST: 'the bundle (or the part named) was damaged or altered on the way: copy it again and check it with "ferry bundle verify"',
  FERRY_ERR_BUNDLE_SIGNATURE: 'the bundle is not signed by a key this host trusts, or was altered: check who made it ("ferry bundle verify FILE" names the key), and that FERRY_TRUST_FILE trusts that key or the admin key of its grant',
  FERRY_ERR_DATA_DIR_LOCKED: 'stop the receiver that runs on this data directory (it resumes from its journal when started again), or give "ferry bundle apply" its own FERRY_DATA_DIR',
  FERRY_ERR_BUNDLE_BASE_MISSING: 'apply the bundle this one was made against (the release or inventory named above), or ask for a full bundle',
  FERRY_ERR_BAD_INVENTORY: 'give the file "ferry inventory -o FILE" wrote on the host, unchanged',
  FERRY_ERR_LICENCE_EXPIRED: 'the bundle\'s grant ended and its grace is over: ask the vendor for a bundle with a new grant',
};

export const UNREACHABLE: ReadonlySet<ErrorCode> = new Set(['FERRY_ERR_RECEIVER_UNREACHABLE', 'FERRY_ERR_DOCKER_UNAVAILABLE', 'FERRY_ERR_EVENTS_UNAVAILABLE', 'FERRY_ERR_REGISTRY_UNREACHABLE']);

/** What to do after an error: its own advice, or where to look when it has none. */
export function nextStep(code: ErrorCode, command?: string): string {
  const advice = NEXT_STEPS[code];
  if (advice) return command ? advice.replace('ferry help COMMAND', `ferry help ${command}`) : advice;
  return (UNREACHABLE.has(code)
    ? 'check that the peer runs and that its address is right, then try again'
    : '"ferry status ID --to URL" shows what the receiver recorded; fix what the message says and try again');
}
