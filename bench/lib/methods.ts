import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BenchImage, BenchImages } from '../images.ts';
import type { Engine } from './docker.ts';
import { freePort, waitForHttp } from './net.ts';
import { PeakSampler, exited, peakKb, resetPeak, type Processes } from './proc.ts';
import type { CountingProxy } from './proxy.ts';
import { startRegistry, type LocalRegistry } from './registry.ts';
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

/** Everything a method needs; one per bench run. */
export interface MethodContext {
  procs: Processes;
  build: Engine;
  target: Engine;
  tmp: string;
  root: string;
  nodePath: string;
  sshd: PrivateSshd;
  sshProxy: CountingProxy;
  registryProxy: CountingProxy;
  receiver: ReceiverHandle;
  receiverProxy: CountingProxy;
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

/** 2) The classic script: save, gzip, ssh to the host, gunzip, load. */
function sshMethod(ctx: MethodContext): Method {
  const remote = `gunzip | DOCKER_HOST=${ctx.target.host} docker load`;
  const script = (ref: string): string => `docker -H ${ctx.build.host} save ${shellQuote(ref)} | gzip | ${ctx.sshd.sshCommand(ctx.sshProxy.port)} ${shellQuote(remote)}`;
  return {
    id: 'ssh',
    title: 'docker save | gzip | ssh … docker load',
    commands: [
      `docker -H ${ctx.build.host} save IMAGE | gzip | ssh -p PORT ${process.env.USER ?? 'root'}@127.0.0.1 '${remote}'`,
      `(private sshd on a random loopback port; ssh options: ${ctx.sshd.sshArgs(ctx.sshProxy.port).slice(0, -1).join(' ')})`,
    ],
    measure: async (image) => {
      ctx.sshProxy.take();
      const started = performance.now();
      const child = ctx.procs.spawn('bash', ['-o', 'pipefail', '-c', script(image.ref)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let errors = '';
      child.stderr?.setEncoding('utf8').on('data', (c: string) => { errors += c; });
      child.stdout?.resume();
      const code = await exited(child);
      if (code !== 0) throw new Error(`the ssh pipeline exited with ${code}: ${errors.trim()}`);
      const moveSeconds = seconds(started);
      const wire = ctx.sshProxy.take();
      const startSeconds = await startAndProbe(ctx, image.ref);
      return { moveSeconds, startSeconds, totalSeconds: moveSeconds + startSeconds, wireBytes: wire.up + wire.down, wireDetail: `ssh stream ${mb(wire.up)} up, ${mb(wire.down)} down` };
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
    current = await startRegistry(dir, ctx.procs, storage);
    ctx.registryProxy.retarget(current.port);
  };
  const repo = (image: BenchImage): string => `${address}/${image.ref}`;
  return {
    id: 'registry',
    title: 'local registry: docker push + docker pull',
    commands: [
      `docker -H ${ctx.build.host} tag IMAGE ${address}/IMAGE && docker -H ${ctx.build.host} push ${address}/IMAGE`,
      `docker -H ${ctx.target.host} pull ${address}/IMAGE`,
      '(Debian docker-registry 2.x, filesystem storage, on loopback; fresh storage per cold run)',
    ],
    prepareWarm: async (images) => {
      await restart();
      await ctx.build.docker(['tag', images.v1.ref, repo(images.v1)]);
      await ctx.build.docker(['push', repo(images.v1)]);
      await ctx.build.untag(repo(images.v1));
      await ctx.target.docker(['pull', repo(images.v1)]);
      if (warmTemplate !== undefined) await rm(warmTemplate, { recursive: true, force: true });
      warmTemplate = await mkdtemp(join(ctx.tmp, 'registry-v1-'));
      await cp(current?.storage ?? '', join(warmTemplate, 'storage'), { recursive: true });
    },
    measure: async (image, _images, phase) => {
      await restart(phase === 'warm' && warmTemplate !== undefined ? join(warmTemplate, 'storage') : undefined);
      ctx.registryProxy.take();
      const started = performance.now();
      await ctx.build.docker(['tag', image.ref, repo(image)]);
      await ctx.build.docker(['push', repo(image)]);
      const pushed = ctx.registryProxy.take();
      await ctx.target.docker(['pull', repo(image)]);
      const pulled = ctx.registryProxy.take();
      const moveSeconds = seconds(started);
      await ctx.build.untag(repo(image));
      const startSeconds = await startAndProbe(ctx, repo(image));
      return {
        moveSeconds, startSeconds, totalSeconds: moveSeconds + startSeconds,
        wireBytes: pushed.up + pushed.down + pulled.up + pulled.down,
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

interface PushJson {
  ok?: boolean;
  bytes?: { image?: number; package?: number; sent?: number };
  compression?: string;
  /** Sent while docker save ran and loaded while it arrived (docs/protocol.md §10.6). */
  streamed?: boolean;
  exportedBy?: string;
  timings?: Record<string, unknown> & { receiver?: Record<string, number | undefined> };
  layers?: { total?: number; present?: number };
}

/** 4/5) `ferry push` to a receiver process, through a counting proxy. */
function ferryMethod(ctx: MethodContext): Method {
  const to = `http://127.0.0.1:${ctx.receiverProxy.port}`;
  const args = (ref: string, name: string, port: number): string[] => [
    'push', ref, '--to', to, '--name', name, '--network', 'host', '--env', `PORT=${port}`,
    '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', String(PROBE_INTERVAL_MS), '--health-retries', '1000', '--json',
  ];
  return {
    id: 'ferry',
    title: 'ferry push',
    commands: [
      `DOCKER_HOST=${ctx.build.host} FERRY_KEY_ID=… FERRY_KEY_FILE=… node bin/ferry.js ${args('IMAGE', 'SERVICE', 0).join(' ').replace('PORT=0', 'PORT=P').replaceAll(':0/', ':P/')}`,
      `(receiver: DOCKER_HOST=${ctx.target.host} FERRY_TRUST_FILE=… node bin/ferry.js receiver, on 127.0.0.1, one process for the whole bench)`,
    ],
    measure: async (image) => {
      const port = await freePort();
      const name = `ferry-bench-${randomBytes(4).toString('hex')}`;
      ctx.receiverProxy.take();
      resetPeak(ctx.receiver.pid);
      const started = performance.now();
      const child = ctx.procs.spawn(ctx.nodePath, [join(ctx.root, 'bin/ferry.js'), ...args(image.ref, name, port)], {
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
      // Between the result line and the process's end: what a lingering handle would cost.
      const exitLag = (performance.now() - printedAt) / 1000;
      const senderPeakKb = sampler.stop();
      const receiverPeakKb = peakKb(ctx.receiver.pid);
      const wire = ctx.receiverProxy.take();
      if (code !== 0) throw new Error(`ferry push exited with ${code}: ${(stdout + stderr).trim().slice(-2000)}`);
      const result = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as PushJson;
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
        detail: `sender: ${stages(result.timings ?? {})}; receiver: ${stages(receiver)}${layers}${outside}`,
        moveSeconds: totalSeconds - startSeconds, startSeconds, totalSeconds, senderPeakKb, receiverPeakKb, signedRequests: signedRequestsOf(result),
        wireBytes: wire.up + wire.down,
        wireDetail: `package ${mb(result.bytes?.package ?? 0)} (${result.compression ?? '?'}${result.streamed === true ? ', streamed' : ''}; ${result.exportedBy === 'layer-store' ? 'read from the layer store' : 'docker save'} ${mb(result.bytes?.image ?? 0)})`,
      };
    },
  };
}

function withoutFerry(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([key]) => !key.startsWith('FERRY_') && key !== 'DOCKER_HOST'));
}

export function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}
