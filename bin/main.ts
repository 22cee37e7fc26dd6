/** The long-running services, each configured by FERRY_* variables only and loaded on demand. */
const SERVICES: Record<string, () => Promise<{ run: (env: NodeJS.ProcessEnv) => Promise<void>; help: string }>> = {
  receiver: async () => ({ run: (await import('@ferry/receiver')).runReceiver, help: RECEIVER_HELP }),
  sender: async () => { const m = await import('@ferry/sender/service'); return { run: m.runSenderService, help: m.SENDER_SERVICE_HELP }; },
  registry: async () => { const m = await import('@ferry/registry'); return { run: (env) => m.runRegistry(env), help: m.REGISTRY_HELP }; },
};

/** The `ferry` command: `receiver`, `sender` and `registry` run a service; the rest is the CLI. */
export async function main(args: string[]): Promise<number> {
  // "ferry help registry" is "ferry registry --help": a service's help lives with the service.
  const argv = args[0] === 'help' && args[1] !== undefined && Object.hasOwn(SERVICES, args[1]) ? [args[1], '--help'] : args;
  const [command = ''] = argv;
  // `ferry push` scavenges on a timer instead (libs/memory/src/gc.ts): a second start
  // would cost a short push ~0.1 s.
  if (command === 'receiver') withStreamingRuntime();
  const load = Object.hasOwn(SERVICES, command) ? SERVICES[command] : undefined;
  // The CLI is a package of its own (@ferry/cli), loaded for its commands only; each command
  // loads its own code when it runs. A service loads the CLI's error report only if it fails.
  if (!load) return (await import('@ferry/cli')).runCli(argv);
  try {
    const service = await load();
    if (argv.includes('--help') || argv.includes('-h')) {
      process.stdout.write(service.help);
      return 0;
    }
    if (argv.length > 1) {
      const { FerryError } = await import('@ferry/protocol');
      throw new FerryError('FERRY_ERR_USAGE', { message: `"ferry ${command}" takes no arguments: configure it with FERRY_* variables (see "ferry ${command} --help")` });
    }
    await service.run(process.env);
    return 0;
  } catch (err) {
    const { reportError, processIo } = await import('@ferry/cli');
    return await reportError(processIo, err, false);
  }
}

/**
 * The receiver streams gigabytes in 64 KiB socket buffers. With V8's default 16 MiB semi-spaces
 * those buffers pile up between scavenges and add ~60 MiB to its peak memory; 1 MiB semi-spaces
 * keep it flat (bench/resume-large.ts measures both); one V8 worker thread instead of one per
 * core saves a few more, for a service that waits on disks and sockets. `--expose-gc` lets it run
 * a full collection once the buffers that outlived their scavenges pile up (@ferry/memory), which
 * V8 itself only does past ~64 MiB of them. glibc gives buffers larger than those 64 KiB socket
 * reads their own mappings (MALLOC_MMAP_THRESHOLD_), so that the memory a push used goes back to
 * the system once they are freed: by default it raises that threshold as such buffers are freed,
 * serves them from its heap instead, and a long-lived receiver then kept ~50 MiB after its first
 * large push. The socket reads themselves stay below it: mapped one by one, each 64 KiB cost a
 * mmap, a munmap and 16 page faults, ~4 s of CPU per GB received (half the receiver's).
 * The flags only work at start-up, so the process replaces itself (same pid, same descriptors)
 * unless the operator chose a semi-space size; a malloc setting of the operator's own is kept.
 */
function withStreamingRuntime(): void {
  const chosen = [...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((flag) => flag.includes('semi-space-size'));
  const script = process.argv[1];
  if (chosen || script === undefined || typeof process.execve !== 'function') return;
  const env = Object.keys(process.env).some((name) => name.startsWith('MALLOC_') || name === 'GLIBC_TUNABLES')
    ? process.env
    : { ...process.env, MALLOC_MMAP_THRESHOLD_: String(128 * 1024) };
  process.execve(process.execPath, [process.execPath, '--max-semi-space-size=1', '--v8-pool-size=1', '--expose-gc', ...process.execArgv, script, ...process.argv.slice(2)], env);
}

export const RECEIVER_HELP = `Usage: ferry receiver

Runs a receiver in the foreground until SIGINT/SIGTERM. Configuration (environment):
  FERRY_TRUST_FILE the keys, grants and revocations it accepts (default FERRY_DATA_DIR/trust.json;
                   required to start: "ferry trust add"); FERRY_LABELS k=v,… are its labels, which
                   grants' host selectors match
  FERRY_LISTEN     host:port to listen on (default 127.0.0.1:7701)
  DOCKER_HOST      the engine containers run on (default: the local socket)
  FERRY_NATS_URL   nats://host:port for events (optional; without it events are only logged)
  FERRY_DATA_DIR   where uploads are spooled (default /var/lib/ferry)
  FERRY_HOST_ID    this host's name in events (default: the hostname)
  FERRY_LOG_LEVEL  fatal|error|warn|info|debug|trace (default info)
  FERRY_REDIS_URL  redis://host:port for nonces that survive restarts (optional)
  FERRY_ALLOW_CIDRS, FERRY_TRUSTED_PROXIES, FERRY_TLS_CERT/FERRY_TLS_KEY, FERRY_POLICY_FILE,
  FERRY_POLICY_*, FERRY_RETAIN_IMAGES, FERRY_MIN_FREE_BYTES, FERRY_UPLOAD_TTL_SECONDS, limits and
  timeouts: docs/receiver.md, "Settings".
  FERRY_REGISTRY_URL   register with the registry and heartbeat to it (optional; signs with its own
                   host key, FERRY_DATA_DIR/host.key, enrolled once with FERRY_JOIN_TOKEN from
                   "ferry hosts join-token"; FERRY_ADVERTISE_URL, FERRY_HEARTBEAT_SECONDS: see the
                   docs/receiver.md, "Registering with the registry")
Endpoints: GET /healthz, /readyz, /metrics, /v1/identity (signed by the host key); signed POST
/v1/packages, /v1/uploads…,
GET /v1/deployments[/ID], POST /v1/services/NAME/rollback (docs/protocol.md).
`;
