import { FerryError, type ErrorCode } from '@ferry/protocol';
import { BUILD_HELP, buildCommand } from './build.ts';
import { DEPLOY_HELP, deployCommand } from './deploy.ts';
import { DRIFT_HELP, driftCommand } from './drift.ts';
import { EVENTS_HELP, eventsCommand } from './events.ts';
import { HOSTS_HELP, hostsCommand } from './hosts.ts';
import { line, processIo, type Io } from './io.ts';
import { KEYGEN_HELP, keygenCommand } from './keygen.ts';
import { PUSH_HELP, pushCommand } from './push.ts';
import { ROLLBACK_HELP, rollbackCommand } from './rollback.ts';
import { STATUS_HELP, statusCommand } from './status.ts';

export const HELP = `Usage: ferry COMMAND [options]

Commands:
  receiver    run a receiver in the foreground (configured by FERRY_* environment variables)
  push        package an image, send it to a receiver and deploy it
  deploy      deploy every service of a deployment file (ferry.yaml) to its targets
  sender      run the sender service (deployments over signed HTTP) in the foreground
  registry    run the registry (hosts, desired and actual state, drift, dashboard) in the foreground
  build       build a directory into an image on the build engine
  status      show a deployment, or a service's recent deployments, from a receiver's journal;
              without --to, a service's desired and actual state on every host (the registry)
  rollback    run a service's previous version again on a receiver
  hosts       list the receivers registered with the registry (FERRY_REGISTRY_URL)
  drift       list services whose running container differs from what was deployed; exit 1 if any
  events      replay (or follow) deployment events from NATS JetStream
  keygen      print a new signing key
  help        this text; "ferry help COMMAND" for one command

Exit codes: 0 success, 1 the deployment or request failed, 2 bad usage or configuration,
3 a peer (receiver, Docker, NATS) could not be reached.`;

const HELPS: Record<string, string> = { push: PUSH_HELP, deploy: DEPLOY_HELP, build: BUILD_HELP, events: EVENTS_HELP, keygen: KEYGEN_HELP, status: STATUS_HELP, rollback: ROLLBACK_HELP, hosts: HOSTS_HELP, drift: DRIFT_HELP };

/** What to do next, for the errors a user can act on. */
const NEXT_STEPS: Partial<Record<ErrorCode, string>> = {
  FERRY_ERR_UNKNOWN_KEY: 'the receiver does not know FERRY_KEY_ID: add the key to its FERRY_KEYS',
  FERRY_ERR_BAD_SIGNATURE: 'FERRY_KEY differs from the secret the receiver has for FERRY_KEY_ID',
  FERRY_ERR_STALE_TIMESTAMP: 'this machine\'s clock and the receiver\'s differ by more than 5 minutes: sync them (NTP)',
  FERRY_ERR_CHECKSUM_MISMATCH: 'the package was damaged on the way: push again, and check the network path if it repeats',
  FERRY_ERR_HEALTHCHECK_FAILED: 'the new version did not answer its health check: read its log lines above, then fix and push again',
  FERRY_ERR_RECEIVER_UNREACHABLE: 'check the --to URL and that "ferry receiver" runs there',
  FERRY_ERR_IMAGE_NOT_FOUND: 'build or tag the image on the build engine (DOCKER_HOST) first',
  FERRY_ERR_DOCKER_UNAVAILABLE: 'check DOCKER_HOST and that the Docker engine runs',
  FERRY_ERR_CONFIG: 'fix the environment variables listed above',
  FERRY_ERR_DEPLOYMENT_IN_PROGRESS: 'wait for the running deployment of this service to finish',
  FERRY_ERR_NOT_FOUND: 'check the id and that --to names the receiver that ran it; "ferry status --to URL --service S" lists what it keeps (the newest 100 per service)',
  FERRY_ERR_NOTHING_TO_ROLL_BACK: 'that host keeps no previous version of this service (only one was deployed, or it was removed): push the version you want instead',
  FERRY_ERR_ROLLBACK_FAILED: 'the previous version would not run: "ferry status ID --to URL" shows every step the receiver took, then check the container\'s log on that host',
  FERRY_ERR_REGISTRY_UNREACHABLE: 'check FERRY_REGISTRY_URL and that "ferry registry" runs there',
  FERRY_ERR_NO_MATCHING_HOSTS: '"ferry hosts --selector K=V" lists the hosts with those labels and whether they are online; a receiver gets labels from its FERRY_LABELS',
  FERRY_ERR_USAGE: 'see "ferry help COMMAND" for the options it takes',
  FERRY_ERR_RECEIVER_CIRCUIT_OPEN: 'that receiver kept failing: check that "ferry receiver" runs there and can reach its Docker engine, then push to it again',
  FERRY_ERR_POLICY_DENIED: 'drop the refused option, or have that host\'s operator allow it (FERRY_POLICY_* or FERRY_POLICY_FILE; README "Receiver policy")',
  FERRY_ERR_BAD_MANIFEST: 'the receiver refused the manifest: the problems are listed above; check the container options, or update ferry on one side if the versions differ',
  FERRY_ERR_PAYLOAD_TOO_LARGE: 'the package is over the receiver\'s limit: make the image smaller or raise the limit on that host',
  FERRY_ERR_DISK_FULL: 'free disk space on the target host (old images, its FERRY_DATA_DIR), then push again: a resumable upload goes on where it stopped',
  FERRY_ERR_REPLAY: 'push again: every attempt is signed anew',
  FERRY_ERR_AUTH_MISSING: 'set FERRY_KEY_ID and FERRY_KEY (see "ferry keygen")',
  FERRY_ERR_WRONG_AUDIENCE: 'the URL answers as another host than expected: check --to',
  FERRY_ERR_KEY_EXPIRED: 'the key is past its notAfter date: make a new one with "ferry keygen" and add it to the receiver\'s FERRY_KEYS',
  FERRY_ERR_FORBIDDEN_SOURCE: 'the receiver does not accept requests from this address: have its operator add it to its allowed sources',
  FERRY_ERR_LOAD_FAILED: 'the target\'s Docker engine could not load the image: check its disk space and its log, then push again',
  FERRY_ERR_CONTAINER_FAILED: 'the container would not start with these options: check the ports (already in use?), volumes and command',
  FERRY_ERR_DOCKER: 'the Docker engine refused a request: its message is above; check the engine\'s log',
  FERRY_ERR_EVENTS_UNAVAILABLE: 'check FERRY_NATS_URL and that nats-server runs with JetStream (-js)',
  FERRY_ERR_BUILD_FAILED: 'fix the Dockerfile or the build context; the build log is above',
  FERRY_ERR_IMAGE_TOO_LARGE: 'make the image smaller, or raise --max-image-size',
  FERRY_ERR_BAD_RESPONSE: 'the URL does not answer like this version of ferry: check --to, and that both sides run the same ferry version',
  FERRY_ERR_INTERNAL: 'this is a bug in ferry: run the command again, and report it with the lines above if it repeats',
};

const UNREACHABLE: ReadonlySet<ErrorCode> = new Set(['FERRY_ERR_RECEIVER_UNREACHABLE', 'FERRY_ERR_DOCKER_UNAVAILABLE', 'FERRY_ERR_EVENTS_UNAVAILABLE', 'FERRY_ERR_REGISTRY_UNREACHABLE']);

export async function runCli(argv: string[], io: Io = processIo): Promise<number> {
  const [command, ...args] = argv;
  // Words after "--" belong to the container's command, not to ferry.
  const own = args.includes('--') ? args.slice(0, args.indexOf('--')) : args;
  const json = own.includes('--json');
  try {
    if (own.includes('--help') || own.includes('-h')) return help(io, command);
    switch (command) {
      case 'push': return await pushCommand(args, io);
      case 'deploy': return await deployCommand(args, io);
      case 'build': return await buildCommand(args, io);
      case 'events': return await eventsCommand(args, io);
      case 'status': return await statusCommand(args, io);
      case 'rollback': return await rollbackCommand(args, io);
      case 'hosts': return await hostsCommand(args, io);
      case 'drift': return await driftCommand(args, io);
      case 'keygen': return keygenCommand(args, io);
      case undefined: case 'help': case '--help': case '-h': return help(io, args[0]);
      default: throw new FerryError('FERRY_ERR_USAGE', { message: `Unknown command "${command}"; see "ferry help"` });
    }
  } catch (err) {
    return report(io, err, json, command && HELPS[command] ? command : undefined);
  }
}

function help(io: Io, command: string | undefined): number {
  line(io.stdout, (command && HELPS[command]) ?? HELP);
  return 0;
}

/** What to do after an error: its own advice, or where to look when it has none. */
export function nextStep(code: ErrorCode, command?: string): string {
  const advice = NEXT_STEPS[code];
  if (advice) return command ? advice.replace('ferry help COMMAND', `ferry help ${command}`) : advice;
  return (UNREACHABLE.has(code)
    ? 'check that the peer runs and that its address is right, then try again'
    : '"ferry status ID --to URL" shows what the receiver recorded; fix what the message says and try again');
}

/** Prints an error the way the user asked for output, and maps it to an exit code. */
export function report(io: Io, err: unknown, json: boolean, command?: string): number {
  const error = err instanceof FerryError ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message ?? String(err), cause: err });
  if (json) {
    line(io.stdout, JSON.stringify({ ok: false, ...error.toJSON(), next: nextStep(error.code, command) }));
  } else {
    line(io.stderr, `✖ ${error.message} [${error.code}]`);
    const deployment = error.details?.deployment as { state?: string; deploymentId?: string; host?: string } | undefined;
    const deploymentId = deployment?.deploymentId ?? error.details?.deploymentId;
    if (typeof deploymentId === 'string') line(io.stderr, `  deployment  ${deploymentId}${deployment?.state ? ` (${deployment.state})` : ''}`);
    const facts = (error.details?.deployment as { error?: { details?: { probes?: { status?: number; error?: string }[]; logs?: string[] } } } | undefined)?.error?.details;
    const last = facts?.probes?.at(-1);
    if (last) line(io.stderr, `  last probe  ${last.status !== undefined ? `HTTP ${last.status}` : (last.error ?? '?')} (${facts?.probes?.length} probes)`);
    if (facts?.logs?.length) {
      line(io.stderr, '  container log (last lines):');
      for (const text of facts.logs.slice(-10)) line(io.stderr, `    ${text}`);
    }
    line(io.stderr, `  next: ${nextStep(error.code, command)}`);
    if (error.code === 'FERRY_ERR_INTERNAL' && error.cause instanceof Error) line(io.stderr, `  cause: ${error.cause.message}`);
  }
  if (error.code === 'FERRY_ERR_USAGE' || error.code === 'FERRY_ERR_CONFIG' || error.code === 'FERRY_ERR_BAD_DEPLOYMENT_FILE') return 2;
  if (UNREACHABLE.has(error.code)) return 3;
  return 1;
}
