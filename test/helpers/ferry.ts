import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { NatsConnection } from 'nats';
import { EventWatcher } from './events.ts';
import { trustFile, type TestKey } from './keys.ts';
import { natsConnect, stack } from './stack.ts';

export const ROOT = resolve(import.meta.dirname, '../..');
const FERRY = join(ROOT, 'bin/ferry.js');

/** Environment for child processes: the test's own, minus FERRY_* so each test says what it means. */
export function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('FERRY_') && key !== 'DOCKER_HOST') env[key] = value;
  }
  return env;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the real `ferry` command, as a user would, with the Node that runs the tests. */
export function runFerry(args: string[], env: Record<string, string>): Promise<RunResult> {
  return capture(process.execPath, [FERRY, ...args], { ...baseEnv(), ...env });
}

/** Runs a command to its end (in `cwd`, default the test's own) and keeps what it printed. */
export function capture(command: string, args: string[], env: Record<string, string | undefined> = process.env, cwd?: string): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'], ...(cwd === undefined ? {} : { cwd }) });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk; });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    child.once('error', reject);
    child.once('close', (code) => resolvePromise({ code: code ?? -1, stdout, stderr }));
  });
}

export interface ReceiverProcess {
  url: string;
  hostId: string;
  dataDir: string;
  child: ChildProcess;
  /** Every JSON log line the receiver wrote so far. */
  logs: Record<string, unknown>[];
  stop(): Promise<void>;
}

export interface FerryProcess {
  url: string;
  child: ChildProcess;
  /** Every JSON log line it wrote so far. */
  logs: Record<string, unknown>[];
  /** SIGTERMs it (if it still runs) and waits until it exited. */
  stop(): Promise<void>;
}

/** How a test starts `ferry`: the checkout's, on the Node that runs the tests, unless it says otherwise. */
export interface FerryLauncher {
  /** The program and the arguments before the command, e.g. an installed release's `bin/ferry`. */
  argv: string[];
  cwd?: string;
}

/**
 * Starts a long-running `ferry <command>` (receiver, sender, registry) with the test's environment
 * minus FERRY_* plus `env`, and waits for its "<command> listening" line.
 */
export async function startFerryProcess(command: 'receiver' | 'sender' | 'registry', env: Record<string, string>, launcher: FerryLauncher = { argv: [process.execPath, FERRY] }): Promise<FerryProcess> {
  const [program = process.execPath, ...before] = launcher.argv;
  const child = spawn(program, [...before, command], { env: { ...baseEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'], ...(launcher.cwd === undefined ? {} : { cwd: launcher.cwd }) });
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
  const url = await new Promise<string>((resolvePromise, reject) => {
    createInterface({ input: child.stdout }).on('line', (text) => {
      try {
        const entry = JSON.parse(text) as Record<string, unknown>;
        logs.push(entry);
        if (entry.msg === `${command} listening` && typeof entry.url === 'string') resolvePromise(entry.url);
      } catch {
        logs.push({ text });
      }
    });
    child.once('exit', (code) => reject(new Error(`ferry ${command} exited with ${code}: ${stderr}${JSON.stringify(logs)}`)));
  });
  return { url, child, logs, stop: () => terminate(child) };
}

/**
 * Starts `ferry receiver` on a free loopback port and waits until it says it listens. Its
 * stability window is half a second unless `env` says otherwise: every deployment a test makes
 * still has one, without the default's 5 s each.
 */
export async function startReceiverProcess(env: Record<string, string>, launcher?: FerryLauncher): Promise<ReceiverProcess> {
  const dataDir = env.FERRY_DATA_DIR ?? await mkdtemp(join(tmpdir(), 'ferry-rx-'));
  const { url, child, logs } = await startFerryProcess('receiver', { FERRY_LISTEN: '127.0.0.1:0', FERRY_DATA_DIR: dataDir, FERRY_STABILITY_WINDOW_MS: '500', ...env }, launcher);
  return {
    url, dataDir, child, logs, hostId: env.FERRY_HOST_ID ?? '',
    stop: async () => {
      await terminate(child);
      if (!env.FERRY_DATA_DIR) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export interface WatchedReceiver {
  receiver: ReceiverProcess;
  watcher: EventWatcher;
  nc: NatsConnection;
}

/**
 * A `ferry receiver` on the stack's target engine publishing to the stack's NATS, with a watcher on
 * its host's events subscribed before it starts, so no event is missed. `trust` is a trust file's
 * path, or a key the receiver then trusts to deploy anything. The caller stops the receiver and
 * drains `nc`.
 */
export async function startWatchedReceiver(hostId: string, trust: string | TestKey, extraEnv: Record<string, string> = {}): Promise<WatchedReceiver> {
  const s = stack();
  const nc = await natsConnect(s.natsReaderUrl);
  const watcher = new EventWatcher(nc, `ferry.events.${hostId}.>`);
  const receiver = await startReceiverProcess({
    DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: typeof trust === 'string' ? trust : trustFile(trust), FERRY_NATS_URL: s.natsUrl,
    FERRY_HOST_ID: hostId, ...extraEnv,
  });
  return { receiver, watcher, nc };
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const address = server.address();
  await new Promise((r) => server.close(r));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** Builds the FROM-scratch busybox test image on an engine and returns its id. */
export async function buildTestImage(dockerHost: string, tag: string, variant: string): Promise<string> {
  const result = await capture('bash', [join(ROOT, 'deploy/lib/test-image.sh'), dockerHost, tag, variant]);
  const id = result.stdout.trim().split('\n').at(-1) ?? '';
  if (result.code !== 0 || !/^sha256:[0-9a-f]{64}$/.test(id)) throw new Error(`test-image.sh failed (${result.code}): ${result.stderr}`);
  return id;
}

/**
 * busybox, then a layer of `base` bytes (one only the caller has, so what a target holds of it is
 * known whatever other tests do), then a small top file; it runs `busybox sleep`, so a deployment
 * without a health check completes once it started. Answers the image id.
 */
export async function buildLayeredImage(dockerHost: string, ref: string, base: Buffer, top: string, label = ''): Promise<string> {
  const context = await mkdtemp(join(tmpdir(), 'ferry-img-'));
  try {
    await copyFile(process.env.FERRY_BUSYBOX ?? '/bin/busybox', join(context, 'busybox'));
    await writeFile(join(context, 'base.bin'), base);
    await writeFile(join(context, 'top.txt'), top);
    await writeFile(join(context, 'Dockerfile'), [
      'FROM scratch', 'COPY busybox /bin/busybox', 'COPY base.bin /base.bin', 'COPY top.txt /top.txt',
      'ENTRYPOINT ["/bin/busybox", "sleep", "86400"]', '',
    ].join('\n'));
    const env = { ...process.env, DOCKER_HOST: dockerHost, DOCKER_BUILDKIT: '0' };
    const built = await capture('docker', ['build', '-q', ...(label ? ['--label', label] : []), '-t', ref, context], env);
    if (built.code !== 0) throw new Error(`docker build failed: ${built.stderr}`);
    const id = (await capture('docker', ['image', 'inspect', '--format', '{{.Id}}', ref], env)).stdout.trim();
    if (!/^sha256:[0-9a-f]{64}$/.test(id)) throw new Error(`${ref} was not built`);
    return id;
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

/** SIGTERMs a child process that still runs and waits until it exited. */
export async function terminate(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

/**
 * Installs the release once with the network, as a build host would, so that npm's cache holds
 * the registry's documents of its packages' versions as well as the tarballs the checkout's own
 * install fetched: an install of the release looks those documents up, and the tests then install
 * it again with no network but loopback's.
 */
export async function warmReleaseCache(tarball: string, scratch: string): Promise<void> {
  const prefix = join(scratch, 'warm-install');
  const warm = await capture('npm', ['install', '--global', '--prefix', prefix, '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error', tarball]);
  await rm(prefix, { recursive: true, force: true });
  if (warm.code !== 0) throw new Error(`npm could not install ${tarball} with the network: ${warm.stderr}`);
}
