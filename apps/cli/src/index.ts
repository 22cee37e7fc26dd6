import { HELP, HELPS } from './help.ts';
import { line, processIo, type Io } from './io.ts';

export { HELP } from './help.ts';
export { processIo, type Io } from './io.ts';
export { report } from './report.ts';
export { serviceSpecFromFlags, splitCommand, parseLabels } from './args.ts';
export { createProgress, type Progress } from './progress.ts';

type Command = (args: string[], io: Io) => Promise<number> | number;

/**
 * Every CLI command, by name, and where its code is. A module is imported only when its command
 * runs: together they pull in Docker, NATS, HTTP clients and the schemas, and a command should
 * not wait for the others' code to load (`ferry help` loads none of it).
 */
const COMMANDS: Readonly<Record<string, () => Promise<Command>>> = {
  push: async () => (await import('./push.ts')).pushCommand,
  deploy: async () => (await import('./deploy.ts')).deployCommand,
  build: async () => (await import('./build.ts')).buildCommand,
  events: async () => (await import('./events.ts')).eventsCommand,
  status: async () => (await import('./status.ts')).statusCommand,
  rollback: async () => (await import('./rollback.ts')).rollbackCommand,
  hosts: async () => (await import('./hosts.ts')).hostsCommand,
  drift: async () => (await import('./drift.ts')).driftCommand,
  releases: async () => (await import('./releases.ts')).releasesCommand,
  release: async () => (await import('./releases.ts')).releaseCommand,
  keygen: async () => (await import('./keygen.ts')).keygenCommand,
  key: async () => (await import('./keys.ts')).keyCommand,
  trust: async () => (await import('./grants.ts')).trustCommand,
  grant: async () => (await import('./grants.ts')).grantCommand,
  bundle: async () => (await import('./bundle.ts')).bundleCommand,
  inventory: async () => (await import('./inventory.ts')).inventoryCommand,
  version: async () => (await import('./version.ts')).versionCommand,
};

/** The services `ferry` runs itself (bin/main.ts), before the CLI: named here only to suggest them. */
const SERVICE_COMMANDS = ['receiver', 'sender', 'registry'];

export async function runCli(argv: string[], io: Io = processIo): Promise<number> {
  // "ferry --version" is "ferry version", as most tools spell it.
  const [command, ...args] = argv[0] === '--version' ? ['version', ...argv.slice(1)] : argv;
  // Words after "--" belong to the container's command, not to ferry.
  const own = args.includes('--') ? args.slice(0, args.indexOf('--')) : args;
  const json = own.includes('--json');
  try {
    if (own.includes('--help') || own.includes('-h')) return help(io, command);
    if (command === undefined || command === 'help' || command === '--help' || command === '-h') return help(io, args[0]);
    const load = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
    if (!load) {
      const [{ FerryError }, { suggest }] = await Promise.all([import('@ferry/protocol'), import('./args.ts')]);
      const suggestion = suggest(command, [...Object.keys(COMMANDS), ...SERVICE_COMMANDS, 'help']);
      throw new FerryError('FERRY_ERR_USAGE', { message: `Unknown command "${command}"; ${suggestion ? `did you mean "${suggestion}"?` : 'see "ferry help"'}` });
    }
    const run = await load();
    return await run(args, io);
  } catch (err) {
    return reportError(io, err, json, command && Object.hasOwn(HELPS, command) ? command : undefined);
  }
}

/**
 * report() (report.ts), loaded only once something failed: it carries the error registry, which
 * `ferry help` and a service's start-up have no use for.
 */
export async function reportError(io: Io, err: unknown, json: boolean, command?: string): Promise<number> {
  const { report } = await import('./report.ts');
  return report(io, err, json, command);
}

function help(io: Io, command: string | undefined): number {
  line(io.stdout, (command && Object.hasOwn(HELPS, command) ? HELPS[command] : undefined) ?? HELP);
  return 0;
}
