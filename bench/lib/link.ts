import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, waitForPort } from './net.ts';
import type { Meter, WireBytes } from './proxy.ts';
import { exited, run, runAllowingFailure, sleep, type Processes } from './proc.ts';

/**
 * A link between the build side (the root network namespace, where the bench, the build engine
 * and the sender run) and the target side. `loopback` is no link at all; every other profile is
 * a network namespace of the bench's own, joined to the root namespace by a veth pair whose two
 * ends are shaped to `rateBits` (HTB, both directions), with `rttMs` of round trip added.
 */
export interface LinkProfile {
  /** As given on the command line: `loopback`, `100mbit`, `20mbit-20ms`. */
  name: string;
  /** Bits per second in each direction; undefined for loopback. */
  rateBits?: number;
  /** Round-trip time added to the link, in milliseconds (0: what the veth pair has, ~0.05 ms). */
  rttMs: number;
}

/** Namespaces (and, through them, veth pairs) the bench made carry this prefix and its pid. */
export const NAMESPACE_PREFIX = 'ferrybench-';
/** The bench's veth pairs live in 10.187.X.0/30: one /30 per link, outside what the test helpers use. */
const SUBNET_PREFIX = '10.187';

const UNITS: Record<string, number> = { kbit: 1e3, mbit: 1e6, gbit: 1e9 };

export function parseLink(spec: string): LinkProfile {
  const name = spec.trim().toLowerCase();
  if (name === 'loopback') return { name, rttMs: 0 };
  const match = /^(\d+(?:\.\d+)?)(kbit|mbit|gbit)(?:-(\d+)ms)?$/.exec(name);
  const rateBits = match ? Number(match[1]) * (UNITS[match[2] ?? ''] ?? 0) : 0;
  const rttMs = Number(match?.[3] ?? 0);
  if (!match || rateBits < 1e6 || rateBits > 10e9 || rttMs > 1000) {
    throw new Error(`--links: "${spec}" is not loopback or RATE[-RTTms] with RATE from 1mbit to 10gbit (e.g. 100mbit, 20mbit-20ms)`);
  }
  return { name, rateBits, rttMs };
}

/** `4x100mbit`: that many targets, each behind a link of its own with that profile. */
export function parseFanout(spec: string): { targets: number; link: LinkProfile } {
  const match = /^(\d+)x(.+)$/.exec(spec.trim().toLowerCase());
  const targets = Number(match?.[1] ?? 0);
  if (!match || targets < 2 || targets > 8) throw new Error(`--fanout: "${spec}" is not NxLINK with N from 2 to 8 (e.g. 4x100mbit)`);
  const link = parseLink(match[2] ?? '');
  if (link.rateBits === undefined) throw new Error('--fanout: the targets need a shaped link, not loopback');
  return { targets, link };
}

/** The busier direction: a transfer over a full-duplex link of rate R takes at least that / R. */
export function busier(bytes: WireBytes): number {
  return Math.max(bytes.up, bytes.down);
}

/** Seconds that `bytes` (in the busier direction) take at the link's rate: no method can be faster. */
export function wireLimitSeconds(bytes: number, profile: LinkProfile): number | undefined {
  return profile.rateBits === undefined ? undefined : (bytes * 8) / profile.rateBits;
}

/**
 * Whether this kernel has the netem qdisc (some container kernels do not), tried in a scratch
 * namespace so nothing of the machine's own is touched.
 */
export async function hasNetem(procs: Processes): Promise<boolean> {
  const ns = `${NAMESPACE_PREFIX}${process.pid}-probe`;
  await run(procs, 'ip', ['netns', 'add', ns]);
  try {
    await run(procs, 'ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    return (await runAllowingFailure(procs, 'ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms'])).code === 0;
  } finally {
    await runAllowingFailure(procs, 'ip', ['netns', 'del', ns]);
  }
}

/**
 * Removes the namespaces an earlier bench left behind (it was killed before its clean-up): those
 * with the bench's prefix whose pid no longer runs. Their processes are ended first, by pid; the
 * veth pairs go with the namespace.
 */
export async function removeStaleNamespaces(procs: Processes, log: (message: string) => void): Promise<void> {
  const listed = await runAllowingFailure(procs, 'ip', ['netns', 'list']);
  for (const line of listed.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const owner = new RegExp(`^${NAMESPACE_PREFIX}(\\d+)-`).exec(name)?.[1];
    if (owner === undefined || alive(Number(owner))) continue;
    log(`removing ${name}, left by bench process ${owner}`);
    await removeNamespace(procs, name);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function removeNamespace(procs: Processes, ns: string): Promise<void> {
  const pids = (await runAllowingFailure(procs, 'ip', ['netns', 'pids', ns])).stdout.split('\n').map(Number).filter((n) => n > 0);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
  await runAllowingFailure(procs, 'ip', ['netns', 'del', ns]);
}

/** Where a service on the target side binds, and where the build side reaches it. */
export interface Endpoint {
  port: number;
  bind: string;
  reach: string;
}

/** The target side of a link: where the receiver, sshd, the registry and the pipe's far end run. */
export interface Site {
  profile: LinkProfile;
  /** The command that runs `command` on the target side. */
  wrap(command: string, args: string[]): [string, string[]];
  /** A port for a target-side service. */
  expose(): Promise<Endpoint>;
  waitListening(port: number, what: string): Promise<void>;
  /**
   * Where the target side reaches a container started with `--network host` on the target engine:
   * the engine runs in the root namespace, so from a namespace that is the root end of the veth.
   */
  readonly hostAddress: string;
  /** The link's own byte counters; undefined on loopback, where each method counts through a proxy. */
  readonly meter: Meter | undefined;
  unshaped<T>(fn: () => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** No link: everything on 127.0.0.1 in the root namespace, as the bench always ran. */
export const loopback: Site = {
  profile: { name: 'loopback', rttMs: 0 },
  wrap: (command, args) => [command, args],
  expose: async () => ({ port: await freePort(), bind: '127.0.0.1', reach: '127.0.0.1' }),
  waitListening: (port, what) => waitForPort(port, what),
  hostAddress: '127.0.0.1',
  meter: undefined,
  unshaped: (fn) => fn(),
  close: () => Promise.resolve(),
};

/**
 * One shaped link: namespace `ferrybench-<pid>-<index>`, veth `fb<pid>r<index>` (root end,
 * 10.187.X.1) to `fb<pid>n<index>` (namespace end, 10.187.X.2), HTB at the profile's rate on
 * both ends. The round trip is netem's (half on each end) where the kernel has it; otherwise a
 * delaying relay inside the namespace fronts each service (see delay-relay.ts).
 */
export class ShapedLink implements Site, Meter {
  readonly profile: LinkProfile;
  readonly ns: string;
  readonly rootIf: string;
  readonly nsIf: string;
  readonly rootAddr: string;
  readonly nsAddr: string;
  readonly #procs: Processes;
  readonly #netem: boolean;
  readonly #relays: Array<{ stop(): Promise<void> }> = [];
  #nextPort = 20000;
  #counted = { tx: 0, rx: 0 };

  private constructor(procs: Processes, profile: LinkProfile, index: number, subnet: string, netem: boolean) {
    this.#procs = procs;
    this.profile = profile;
    this.ns = `${NAMESPACE_PREFIX}${process.pid}-${index}`;
    const tag = `fb${process.pid % 10_000_000}`;
    this.rootIf = `${tag}r${index}`;
    this.nsIf = `${tag}n${index}`;
    this.rootAddr = `${subnet}.1`;
    this.nsAddr = `${subnet}.2`;
    this.#netem = netem;
  }

  get hostAddress(): string {
    return this.rootAddr;
  }

  get meter(): Meter {
    return this;
  }

  /** Whether the round trip comes from relays in front of each service rather than from the kernel. */
  get relayed(): boolean {
    return this.profile.rttMs > 0 && !this.#netem;
  }

  static async create(procs: Processes, profile: LinkProfile, index: number, netem: boolean): Promise<ShapedLink> {
    const link = new ShapedLink(procs, profile, index, await freeSubnet(procs), netem);
    try {
      await link.#setUp();
    } catch (err) {
      await link.close();
      throw err;
    }
    return link;
  }

  async #setUp(): Promise<void> {
    const ip = (args: string[]): Promise<unknown> => run(this.#procs, 'ip', args);
    const inNs = (args: string[]): Promise<unknown> => run(this.#procs, 'ip', ['netns', 'exec', this.ns, ...args]);
    await ip(['netns', 'add', this.ns]);
    await ip(['link', 'add', this.rootIf, 'type', 'veth', 'peer', 'name', this.nsIf, 'netns', this.ns]);
    // Router solicitations and the like would add stray bytes to the counters.
    await runAllowingFailure(this.#procs, 'sysctl', ['-qw', `net.ipv6.conf.${this.rootIf}.disable_ipv6=1`]);
    await runAllowingFailure(this.#procs, 'ip', ['netns', 'exec', this.ns, 'sysctl', '-qw', `net.ipv6.conf.${this.nsIf}.disable_ipv6=1`]);
    await ip(['addr', 'add', `${this.rootAddr}/30`, 'dev', this.rootIf]);
    await ip(['link', 'set', this.rootIf, 'up']);
    await inNs(['ip', 'addr', 'add', `${this.nsAddr}/30`, 'dev', this.nsIf]);
    await inNs(['ip', 'link', 'set', this.nsIf, 'up']);
    await inNs(['ip', 'link', 'set', 'lo', 'up']);
    await this.#shape(true);
    this.take();
  }

  /** `tc` on both ends: HTB at the rate, netem's half round trip under it where there is netem. */
  async #shape(on: boolean): Promise<void> {
    const rate = this.profile.rateBits ?? 0;
    // A bucket of ~4 ms of the rate (at least 32 KiB, so a 64 KiB segmentation-offload packet is not
    // held back): HTB then keeps the average without stalling between timer ticks.
    const burst = Math.max(32 * 1024, Math.round(rate / 8 / 250));
    const ends: Array<[string, (args: string[]) => Promise<unknown>]> = [
      [this.rootIf, (args) => run(this.#procs, 'tc', args)],
      [this.nsIf, (args) => run(this.#procs, 'ip', ['netns', 'exec', this.ns, 'tc', ...args])],
    ];
    for (const [dev, tc] of ends) {
      if (!on) {
        await tc(['qdisc', 'del', 'dev', dev, 'root']);
        continue;
      }
      await tc(['qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default', '10']);
      await tc(['class', 'add', 'dev', dev, 'parent', '1:', 'classid', '1:10', 'htb', 'rate', `${rate}bit`, 'ceil', `${rate}bit`, 'burst', String(burst), 'cburst', String(burst)]);
      if (this.profile.rttMs > 0 && this.#netem) {
        await tc(['qdisc', 'add', 'dev', dev, 'parent', '1:10', 'handle', '10:', 'netem', 'delay', `${this.profile.rttMs / 2}ms`, 'limit', '100000']);
      }
    }
  }

  /** Untimed set-up (e.g. v1 into a registry for the warm phase) at full speed: no shaping while `fn` runs. */
  async unshaped<T>(fn: () => Promise<T>): Promise<T> {
    await this.#shape(false);
    try {
      return await fn();
    } finally {
      await this.#shape(true);
      this.take();
    }
  }

  /** The command that runs `command` on the target side of the link. */
  wrap(command: string, args: string[]): [string, string[]] {
    return ['ip', ['netns', 'exec', this.ns, command, ...args]];
  }

  /**
   * A port for a service on the target side. Without netem but with a round trip, the service
   * binds the namespace's loopback and a delaying relay listens on the veth address in front of it.
   */
  async expose(): Promise<Endpoint> {
    const port = this.#nextPort++;
    if (!this.relayed) return { port, bind: this.nsAddr, reach: this.nsAddr };
    const [command, args] = this.wrap(process.execPath, [join(import.meta.dirname, 'delay-relay.ts'), `${this.nsAddr}:${port}`, `127.0.0.1:${port}`, String(this.profile.rttMs / 2)]);
    const child = this.#procs.spawn(command, args);
    let said = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => { said += chunk; });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { said += chunk; });
    const gone = exited(child);
    const deadline = Date.now() + 20_000;
    while (!said.includes('relaying')) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the delaying relay for port ${port} did not start: ${said}`);
      await sleep(20);
    }
    this.#relays.push({
      stop: async () => {
        if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(-child.pid, 'SIGTERM');
        await gone;
      },
    });
    return { port, bind: '127.0.0.1', reach: this.nsAddr };
  }

  /** Waits until something in the namespace listens on TCP `port` (asked of the kernel: no connection is made). */
  async waitListening(port: number, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const listed = await runAllowingFailure(this.#procs, 'ip', ['netns', 'exec', this.ns, 'ss', '-Hltn', `sport = :${port}`]);
      if (listed.stdout.trim() !== '') return;
      if (Date.now() > deadline) throw new Error(`${what} does not listen on port ${port} in ${this.ns}`);
      await sleep(50);
    }
  }

  /** Bytes through the root end since the last call: up = toward the target side, down = back. */
  take(): WireBytes {
    const read = (what: string): number => Number(readFileSync(`/sys/class/net/${this.rootIf}/statistics/${what}`, 'utf8').trim());
    const now = { tx: read('tx_bytes'), rx: read('rx_bytes') };
    const bytes = { up: now.tx - this.#counted.tx, down: now.rx - this.#counted.rx };
    this.#counted = now;
    return bytes;
  }

  async close(): Promise<void> {
    for (const relay of this.#relays.splice(0)) await relay.stop().catch(() => undefined);
    await removeNamespace(this.#procs, this.ns);
    // The root end goes with the namespace's end; this only matters if the namespace never got it.
    await runAllowingFailure(this.#procs, 'ip', ['link', 'del', this.rootIf]);
  }
}

/** A 10.187.X /30 that no address or route of the root namespace is in. */
async function freeSubnet(procs: Processes): Promise<string> {
  const seen = (await runAllowingFailure(procs, 'ip', ['-4', '-o', 'addr', 'show'])).stdout + (await runAllowingFailure(procs, 'ip', ['-4', 'route', 'show'])).stdout;
  for (let x = 0; x < 256; x += 1) {
    const third = (process.pid + x * 7) % 256;
    if (!seen.includes(`${SUBNET_PREFIX}.${third}.`)) return `${SUBNET_PREFIX}.${third}`;
  }
  throw new Error(`no free /30 left in ${SUBNET_PREFIX}.0.0/16`);
}
