import { FerryError, type ErrorCode } from '@ferry/protocol';
import { BUILD_HELP, buildCommand } from './build.ts';
import { EVENTS_HELP, eventsCommand } from './events.ts';
import { line, processIo, type Io } from './io.ts';
import { KEYGEN_HELP, keygenCommand } from './keygen.ts';
import { PUSH_HELP, pushCommand } from './push.ts';
import { ROLLBACK_HELP, rollbackCommand } from './rollback.ts';
import { STATUS_HELP, statusCommand } from './status.ts';

export const HELP = `Usage: ferry COMMAND [options]

Commands:
  receiver    run a receiver in the foreground (configured by FERRY_* environment variables)
  push        package an image, send it to a receiver and deploy it
  build       build a directory into an image on the build engine
  status      show a deployment, or a service's recent deployments, from a receiver's journal
  rollback    run a service's previous version again on a receiver
  events      replay (or follow) deployment events from NATS JetStream
  keygen      print a new signing key
  help        this text; "ferry help COMMAND" for one command

Exit codes: 0 success, 1 the deployment or request failed, 2 bad usage or configuration,
3 a peer (receiver, Docker, NATS) could not be reached.`;

const HELPS: Record<string, string> = { push: PUSH_HELP, build: BUILD_HELP, events: EVENTS_HELP, keygen: KEYGEN_HELP, status: STATUS_HELP, rollback: ROLLBACK_HELP };

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
};

const UNREACHABLE: ReadonlySet<ErrorCode> = new Set(['FERRY_ERR_RECEIVER_UNREACHABLE', 'FERRY_ERR_DOCKER_UNAVAILABLE', 'FERRY_ERR_EVENTS_UNAVAILABLE']);

export async function runCli(argv: string[], io: Io = processIo): Promise<number> {
  const [command, ...args] = argv;
  const json = args.includes('--json');
  try {
    if (args.includes('--help') || args.includes('-h')) return help(io, command);
    switch (command) {
      case 'push': return await pushCommand(args, io);
      case 'build': return await buildCommand(args, io);
      case 'events': return await eventsCommand(args, io);
      case 'status': return await statusCommand(args, io);
      case 'rollback': return await rollbackCommand(args, io);
      case 'keygen': return keygenCommand(args, io);
      case undefined: case 'help': case '--help': case '-h': return help(io, args[0]);
      default: throw new FerryError('FERRY_ERR_USAGE', { message: `Unknown command "${command}"; see "ferry help"` });
    }
  } catch (err) {
    return report(io, err, json);
  }
}

function help(io: Io, command: string | undefined): number {
  line(io.stdout, (command && HELPS[command]) ?? HELP);
  return 0;
}

/** Prints an error the way the user asked for output, and maps it to an exit code. */
export function report(io: Io, err: unknown, json: boolean): number {
  const error = err instanceof FerryError ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message ?? String(err), cause: err });
  if (json) {
    line(io.stdout, JSON.stringify({ ok: false, ...error.toJSON() }));
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
    const next = NEXT_STEPS[error.code];
    if (next) line(io.stderr, `  next: ${next}`);
    if (error.code === 'FERRY_ERR_INTERNAL' && error.cause instanceof Error) line(io.stderr, `  cause: ${error.cause.message}`);
  }
  if (error.code === 'FERRY_ERR_USAGE' || error.code === 'FERRY_ERR_CONFIG') return 2;
  if (UNREACHABLE.has(error.code)) return 3;
  return 1;
}
