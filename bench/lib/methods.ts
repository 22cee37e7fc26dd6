import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BenchImage, BenchImages } from '../images.ts';
import type { Engine } from './docker.ts';
import { freePort, waitForHttp } from './net.ts';
import { busier, type Endpoint, type Site } from './link.ts';
import { PeakSampler, exited, peakKb, resetPeak, type Processes } from './proc.ts';
import type { CountingProxy, Meter, WireBytes } from './proxy.ts';
import { startRegistry, type LocalRegistry } from './registry.ts';
import type { FerryEntry } from './release.ts';
import { signedRequestsOf } from './signing.ts';
import { shellQuote, type PrivateSshd } from './sshd.ts';
import { keyEnv, type TestKey } from '../../test/helpers/keys.ts';

/** Health probes of every method poll at the same pace, so none gains from a shorter interval. */
export const PROBE_INTERVAL_MS = 100;
const HEALTH_TIMEOUT_MS = 120_000;

export type MethodId = 'pipe' | 'ssh' | 'registry' | 'ferry';
export type Phase = 'cold' | 'warm';

/** One measured run of one method. */
export interface Measurement {
  /** Until the image is on the target engine (for ferry: the push minus the receiver's deploy and health stages). */
  moveSeconds: number;
  /** Container started and /healthz answering (for ferry: the receiver's deploy + health stages). */
  startSeconds: number;
  /** Wall time of both (for ferry: the whole `ferry push`). */
  totalSeconds: number;
  /** Bytes on the wire, both directions. */
  wireBytes: number;
  wireDetail: string;
  /**
   * Over a shaped link: the bytes of the busier direction, summed over the method's steps that run
   * one after another (the registry's push, then its pull). Divided by the link's rate, the
   * shortest time the method could take.
   */
  limitBytes?: number;
  /** For the registry: the larger of its two hops (push, pull), what one host-to-host move costs. */
  oneHopBytes?: number;
  senderPeakKb?: number;
  receiverPeakKb?: number;
  /** For ferry: wall time the push's own clock does not see (starting Node, loading the CLI, exiting). */
  outsideSeconds?: number;
  /** For ferry: from its result line to the end of the process. */
  exitLagSeconds?: number;
  /** Where the time went, when the method says (ferry's own stage timings). */
  detail?: string;
  /** For ferry: how many requests the push signed (and the receiver checked). */
  signedRequests?: number;
}

export interface ReceiverHandle {
  url: string;
  pid: number | undefined;
}

/** Where a method's client connects, and what counts the bytes it moves. */
export interface Route {
  host: string;
  port: number;
  meter: Meter;
}

/** Everything a method needs; one per link profile. */
export interface MethodContext {
  procs: Processes;
  build: Engine;
  target: Engine;
  tmp: string;
  root: string;
  nodePath: string;
  /** The `ferry` measured (the installed release unless --ferry checkout). */
  ferry: FerryEntry;
  /** The target side: loopback, or a shaped link's namespace where sshd, the registry, the receiver and the pipe's far end run. */
  site: Site;
  sshd: PrivateSshd;
  /** On loopback a counting proxy in front of sshd; over a link sshd itself, counted by the link. */
  ssh: Route;
  /** The address the engines push to and pull from (a forwarder on 127.0.0.1); `registry` is where the registry listens. */
  registryProxy: CountingProxy;
  registry: Endpoint;
  registryMeter: Meter;
  receiver: ReceiverHandle;
  receiverMeter: Meter;
  /** Where the target side reaches a `--network host` container on the target engine (for ferry's health check). */
  healthHost: string;
  /** The key `ferry push` signs with; the receiver's trust file trusts it. */
  credentials: TestKey;
  log: (message: string) => void;
}

export interface Method {
  id: MethodId;
  title: string;
  /** The commands as a user would type them, for the report. */
  commands: string[];
  /** Untimed: what the warm phase needs before its runs (v1 on the target by this method's own route). */
  prepareWarm?(images: BenchImages): Promise<void>;
  /** Measures moving `image` to the target and starting it there. */
  measure(image: BenchImage, images: BenchImages, phase: Phase): Promise<Measurement>;
  close?(): Promise<void>;
}

export function methods(ctx: MethodContext): Method[] {
  return [pipeMethod(ctx), sshMethod(ctx), registryMethod(ctx), ferryMethod(ctx)];
}

const seconds = (fromMs: number): number => (performance.now() - fromMs) / 1000;

/** Starts the image as a user would after moving it, and waits for its health endpoint. */
async function startAndProbe(ctx: MethodContext, ref: string): Promise<number> {
  const started = performance.now();
  const port = await freePort();
  const name = `ferry-bench-run-${randomBytes(4).toString('hex')}`;
  await ctx.target.docker(['run', '-d', '--name', name, '--network', 'host', '-e', `PORT=${port}`, ref]);
  if (!await waitForHttp(`http://127.0.0.1:${port}/healthz`, PROBE_INTERVAL_MS, HEALTH_TIMEOUT_MS)) {
    throw new Error(`${ref} started as ${name} but http://127.0.0.1:${port}/healthz never answered`);
  }
  return seconds(started);
}

class ByteCounter extends Transform {
  bytes = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    callback(null, chunk);
  }
}

/** 1) `docker save | docker load` straight between the engines: nothing added, the floor. */
function pipeMethod(ctx: MethodContext): Method {
  if (ctx.site.meter) return linkPipeMethod(ctx, ctx.site.meter);
  return {
    id: 'pipe',
    title: 'docker save | docker load (pipe)',
    commands: [`docker -H ${ctx.build.host} save IMAGE | docker -H ${ctx.target.host} load`, `docker -H ${ctx.target.host} run -d --network host -e PORT=P IMAGE  # then poll /healthz`],
    measure: async (image) => {
      const started = performance.now();
      const save = ctx.procs.spawn('docker', ['-H', ctx.build.host, 'save', image.ref], { stdio: ['ignore', 'pipe', 'pipe'] });
      const load = ctx.procs.spawn('docker', ['-H', ctx.target.host, 'load'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let errors = '';
      save.stderr?.setEncoding('utf8').on('data', (c: string) => { errors += c; });
      load.stderr?.setEncoding('utf8').on('data', (c: string) => { errors += c; });
      load.stdout?.resume();
      const counter = new ByteCounter();
      if (!save.stdout || !load.stdin) throw new Error('docker save/load without pipes');
      const [, saveCode, loadCode] = await Promise.all([pipeline(save.stdout, counter, load.stdin), exited(save), exited(load)]);
      if (saveCode !== 0 || loadCode !== 0) throw new Error(`save exited ${saveCode}, load exited ${loadCode}: ${errors.trim()}`);
      const moveSeconds = seconds(started);
      const startSeconds = await startAndProbe(ctx, image.ref);
      return { moveSeconds, startSeconds, totalSeconds: moveSeconds + startSeconds, wireBytes: counter.bytes, wireDetail: 'tar through the pipe' };
    },
  };
}

/**
 * 1) over a link: `docker save | socat` to a `socat | docker load` on the target side, listening
 * before the clock starts (as a person would have started it first): the bare pipe through the link.
 */
function linkPipeMethod(ctx: MethodContext, meter: Meter): Method {
  let endpoint: Endpoint | undefined;
  const far = (port: number, bind: string): string => `socat -u TCP-LISTEN:${port},bind=${bind},reuseaddr STDOUT | docker -H ${ctx.target.host} load`;
  const near = (ref: string, port: number, host: string): string => `docker -H ${ctx.build.host} save ${shellQuote(ref)} | socat -u STDIN TCP:${host}:${port}`;
  return {
    id: 'pipe',
    title: 'docker save | docker load (pipe)',
    commands: [
      `${ctx.site.wrap('bash', ['-c', `'${far(0, 'NS_ADDR').replace(':0,', ':PORT,')}'`]).flat().join(' ')}  # the target side, started first`,
      `${near('IMAGE', 0, 'NS_ADDR').replace(':0', ':PORT')}`,
      `docker -H ${ctx.target.host} run -d --network host -e PORT=P IMAGE  # then poll /healthz`,
    ],
    measure: async (image) => {
      endpoint ??= await ctx.site.expose();
      const { port, bind, reach } = endpoint;
      const load = ctx.procs.spawn(...ctx.site.wrap('bash', ['-o', 'pipefail', '-c', far(port, bind)]), { stdio: ['ignore', 'pipe', 'pipe'] });
      let errors = '';
      load.stderr?.setEncoding('utf8').on('data', (c: string) => { errors += c; });
      load.stdout?.resume();
      const loaded = exited(load);
      await ctx.site.waitListening(port, 'socat | docker load');
      meter.take();
      const started = performance.now();
      const save = ctx.procs.spawn('bash', ['-o', 'pipefail', '-c', near(image.ref, port, reach)], { stdio: ['ignore', 'pipe', 'pipe'] });
      save.stderr?.setEncoding('utf8').on('data', (c: string) => { errors += c; });
      const [saveCode, loadCode] = await Promise.all([exited(save), loaded]);
      if (saveCode !== 0 || loadCode !== 0) throw new Error(`save | socat exited ${saveCode}, socat | load exited ${loadCode}: ${errors.trim()}`);
      const moveSeconds = seconds(started);
      const wire = meter.take();
      const startSeconds = await startAndProbe(ctx, image.ref);
      return { moveSeconds, startSeconds, totalSeconds: moveSeconds + startSeconds, ...linkBytes(wire), wireDetail: `tar through the link: ${directions(wire)}` };
    },
  };
}

/** Bytes both ways, and the busier direction as the link's limit. */
function linkBytes(...steps: WireBytes[]): { wireBytes: number; limitBytes: number } {
  return { wireBytes: steps.reduce((sum, w) => sum + w.up + w.down, 0), limitBytes: steps.reduce((sum, w) => sum + busier(w), 0) };
}

function directions(wire: WireBytes): string {
  return `${mb(wire.up)} up, ${mb(wire.down)} down`;
}

/** 2) The classic script: save, gzip, ssh to the host, gunzip, load. */
function sshMethod(ctx: MethodContext): Method {
  const remote = `gunzip | DOCKER_HOST=${ctx.target.host} docker load`;
  const script = (ref: string): string => `docker -H ${ctx.build.host} save ${shellQuote(ref)} | gzip | ${ctx.sshd.sshCommand(ctx.ssh.host, ctx.ssh.port)} ${shellQuote(remote)}`;
  const where = ctx.site.meter ? `in the link's namespace ${ctx.sshd.host}` : 'on a random loopback port';
  return {
    id: 'ssh',
    title: 'docker save | gzip | ssh … docker load',
    commands: [
      `docker -H ${ctx.build.host} save IMAGE | gzip | ssh -p PORT ${process.env.USER ?? 'root'}@${ctx.ssh.host} '${remote}'`,
      `(private sshd ${where}; ssh options: ${ctx.sshd.sshArgs(ctx.ssh.host, ctx.ssh.port).slice(0, -1).join(' ')})`,
    ],
    measure: async (image) => {
      ctx.ssh.meter.take();
      const started = performance.now();
      const child = ctx.procs.spawn('bash', ['-o', 'pipefail', '-c', script(image.ref)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let errors = '';
      child.stderr?.setEncoding('utf8').on('data', (c: string) => { errors += c; });
      child.stdout?.resume();
      const code = await exited(child);
      if (code !== 0) throw new Error(`the ssh pipeline exited with ${code}: ${errors.trim()}`);
      const moveSeconds = seconds(started);
      const wire = ctx.ssh.meter.take();
      const startSeconds = await startAndProbe(ctx, image.ref);
      return { moveSeconds, startSeconds, totalSeconds: moveSeconds + startSeconds, ...linkBytes(wire), wireDetail: `ssh stream ${directions(wire)}` };
    },
  };
}

/**
 * 3) A local registry: tag, push from the build engine, pull on the target. The engines reach it
 * through one counting proxy whose address stays the same all along, so the engines' own
 * bookkeeping of what a registry holds works as with a long-lived registry; the registry behind
 * it is restarted for every run on a fresh storage directory (cold) or on a copy of one that
 * holds v1 (warm), so no run is helped by an earlier one.
 */
function registryMethod(ctx: MethodContext): Method {
  const address = `127.0.0.1:${ctx.registryProxy.port}`;
  let current: LocalRegistry | undefined;
  let warmTemplate: string | undefined;
  const restart = async (from?: string): Promise<void> => {
    await current?.stop();
    const dir = await mkdtemp(join(ctx.tmp, 'registry-'));
    const storage = join(dir, 'storage');
    if (from !== undefined) await cp(from, storage, { recursive: true });
    current = await startRegistry(dir, ctx.procs, storage, ctx.site, ctx.registry);
    ctx.registryProxy.retarget(ctx.registry.port, ctx.registry.reach);
  };
  const repo = (image: BenchImage): string => `${address}/${image.ref}`;
  return {
    id: 'registry',
    title: 'local registry: docker push + docker pull',
    commands: [
      `docker -H ${ctx.build.host} tag IMAGE ${address}/IMAGE && docker -H ${ctx.build.host} push ${address}/IMAGE`,
      `docker -H ${ctx.target.host} pull ${address}/IMAGE`,
      ctx.site.meter
        ? `(Debian docker-registry 2.x, filesystem storage, in the link's namespace at ${ctx.registry.reach}:${ctx.registry.port}, behind a forwarder on 127.0.0.1 for the engines; the push crosses the link one way, the pull the other; fresh storage per cold run)`
        : '(Debian docker-registry 2.x, filesystem storage, on loopback; fresh storage per cold run)',
    ],
    prepareWarm: (images) => ctx.site.unshaped(async () => {
      await restart();
      await ctx.build.docker(['tag', images.v1.ref, repo(images.v1)]);
      await ctx.build.docker(['push', repo(images.v1)]);
      await ctx.build.untag(repo(images.v1));
      await ctx.target.docker(['pull', repo(images.v1)]);
      if (warmTemplate !== undefined) await rm(warmTemplate, { recursive: true, force: true });
      warmTemplate = await mkdtemp(join(ctx.tmp, 'registry-v1-'));
      await cp(current?.storage ?? '', join(warmTemplate, 'storage'), { recursive: true });
    }),
    measure: async (image, _images, phase) => {
      await restart(phase === 'warm' && warmTemplate !== undefined ? join(warmTemplate, 'storage') : undefined);
      ctx.registryMeter.take();
      const started = performance.now();
      await ctx.build.docker(['tag', image.ref, repo(image)]);
      await ctx.build.docker(['push', repo(image)]);
      const pushed = ctx.registryMeter.take();
      await ctx.target.docker(['pull', repo(image)]);
      const pulled = ctx.registryMeter.take();
      const moveSeconds = seconds(started);
      await ctx.build.untag(repo(image));
      const startSeconds = await startAndProbe(ctx, repo(image));
      return {
        moveSeconds, startSeconds, totalSeconds: moveSeconds + startSeconds,
        ...linkBytes(pushed, pulled),
        oneHopBytes: Math.max(pushed.up + pushed.down, pulled.up + pulled.down),
        wireDetail: `push ${mb(pushed.up + pushed.down)}, pull ${mb(pulled.up + pulled.down)}`,
      };
    },
    close: async () => {
      await current?.stop();
      if (warmTemplate !== undefined) await rm(warmTemplate, { recursive: true, force: true });
    },
  };
}

export interface PushJson {
  ok?: boolean;
  bytes?: { image?: number; package?: number; sent?: number };
  compression?: string;
  /** What `--compression auto` chose for the link, and why (a measured link says its pace). */
  compressionChoice?: { compression?: string; level?: number; reason?: string; measured?: boolean };
  /** Sent while docker save ran and loaded while it arrived (docs/protocol.md §10.6). */
  streamed?: boolean;
  exportedBy?: string;
  timings?: Record<string, unknown> & { receiver?: Record<string, number | undefined> };
  layers?: { total?: number; present?: number };
}

export interface PushRun {
  code: number;
  output: string;
  result: PushJson;
  totalSeconds: number;
  /** Between the result line and the process's end: what a lingering handle would cost. */
  exitLagSeconds: number;
  senderPeakKb: number;
}

/** Runs one real `ferry push` (a child process, as a user would) with the bench's key; its peak memory is sampled. */
export async function runFerryPush(ctx: Pick<MethodContext, 'procs' | 'root' | 'nodePath' | 'ferry' | 'build' | 'credentials'>, args: string[]): Promise<PushRun> {
  const started = performance.now();
  const child = ctx.procs.spawn(ctx.nodePath, [ctx.ferry.script, ...args], {
    cwd: ctx.root, stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...withoutFerry(process.env), DOCKER_HOST: ctx.build.host, ...keyEnv(ctx.credentials) },
  });
  const sampler = new PeakSampler(child.pid);
  let stdout = '';
  let stderr = '';
  let printedAt = Number.NaN;
  child.stdout?.setEncoding('utf8').on('data', (c: string) => { stdout += c; printedAt = performance.now(); });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  const code = await exited(child);
  const totalSeconds = seconds(started);
  const exitLagSeconds = (performance.now() - printedAt) / 1000;
  const senderPeakKb = sampler.stop();
  let result: PushJson = {};
  try {
    result = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as PushJson;
  } catch {
    // Reported through the exit code and the output below.
  }
  // The result line first: a fan-out's progress lines would otherwise push it out of the excerpt.
  const output = `${stdout.trim().split('\n').at(-1) ?? ''}\n${stderr.split('\n').filter((line) => !line.includes('"progress":"sent"')).join('\n').trim().slice(-1500)}`;
  return { code, output, result, totalSeconds, exitLagSeconds, senderPeakKb };
}

/** 4/5) `ferry push` to a receiver process, through a counting proxy (loopback) or the link. */
function ferryMethod(ctx: MethodContext): Method {
  const to = ctx.receiver.url;
  const args = (ref: string, name: string, port: number): string[] => [
    'push', ref, '--to', to, '--name', name, '--network', 'host', '--env', `PORT=${port}`,
    '--health', `http://${ctx.healthHost}:${port}/healthz`, '--health-interval', String(PROBE_INTERVAL_MS), '--health-retries', '1000', '--json',
  ];
  return {
    id: 'ferry',
    title: 'ferry push',
    commands: [
      `DOCKER_HOST=${ctx.build.host} FERRY_KEY_ID=… FERRY_KEY_FILE=… ferry ${args('IMAGE', 'SERVICE', 0).join(' ').replace('PORT=0', 'PORT=P').replaceAll(':0/', ':P/')}`,
      ctx.site.meter
        ? `(receiver: ${ctx.site.wrap('node', []).flat().join(' ')} ferry receiver with DOCKER_HOST=${ctx.target.host} FERRY_TRUST_FILE=… FERRY_STABILITY_WINDOW_MS=0, listening in the link's namespace, one process per link; it probes the health URL back across the link)`
        : `(receiver: DOCKER_HOST=${ctx.target.host} FERRY_TRUST_FILE=… FERRY_STABILITY_WINDOW_MS=0 ferry receiver, on 127.0.0.1, one process for the whole bench)`,
    ],
    measure: async (image) => {
      const port = await freePort();
      const name = `ferry-bench-${randomBytes(4).toString('hex')}`;
      ctx.receiverMeter.take();
      resetPeak(ctx.receiver.pid);
      const { code, output, result, totalSeconds, exitLagSeconds: exitLag, senderPeakKb } = await runFerryPush(ctx, args(image.ref, name, port));
      const receiverPeakKb = peakKb(ctx.receiver.pid);
      const wire = ctx.receiverMeter.take();
      if (code !== 0) throw new Error(`ferry push exited with ${code}: ${output}`);
      const receiver = result.timings?.receiver ?? {};
      const startSeconds = ((receiver.deploy ?? 0) + (receiver.health ?? 0)) / 1000;
      // Whatever stages this version of `ferry push` reports (milliseconds), printed as seconds.
      const stages = (t: Record<string, unknown>): string => Object.entries(t).flatMap(([k, v]) => (typeof v === 'number' ? [`${k} ${(v / 1000).toFixed(1)}`] : [])).join(', ');
      const layers = result.layers?.total !== undefined ? `; layers present on the target ${result.layers.present ?? 0}/${result.layers.total}` : '';
      // What the push's own clock does not see: starting Node, loading the CLI, exiting.
      const outsideSeconds = typeof result.timings?.total === 'number' ? totalSeconds - result.timings.total / 1000 : undefined;
      const outside = outsideSeconds !== undefined ? `; outside push() ${outsideSeconds.toFixed(1)} (of which after the result line ${exitLag.toFixed(1)})` : '';
      return {
        ...(outsideSeconds !== undefined ? { outsideSeconds } : {}),
        ...(Number.isFinite(exitLag) ? { exitLagSeconds: exitLag } : {}),
        detail: `sender: ${stages(result.timings ?? {})}; receiver: ${stages(receiver)}${layers}${outside}${choiceOf(result)}`,
        moveSeconds: totalSeconds - startSeconds, startSeconds, totalSeconds, senderPeakKb, receiverPeakKb, signedRequests: signedRequestsOf(result),
        ...linkBytes(wire),
        wireDetail: `package ${mb(result.bytes?.package ?? 0)} (${result.compression ?? '?'}${result.streamed === true ? ', streamed' : ''}; ${result.exportedBy === 'layer-store' ? 'read from the layer store' : 'docker save'} ${mb(result.bytes?.image ?? 0)})`,
      };
    },
  };
}

/** `; compression zstd 3: why`, as the push reported its choice. */
export function choiceOf(result: PushJson): string {
  const choice = result.compressionChoice;
  if (!choice?.compression) return '';
  return `; compression ${choice.compression}${choice.level === undefined ? '' : ` ${choice.level}`}: ${choice.reason ?? ''}`;
}

function withoutFerry(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([key]) => !key.startsWith('FERRY_') && key !== 'DOCKER_HOST'));
}

export function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}
