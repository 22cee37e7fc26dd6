import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BenchImage, BenchImages, SizeName } from '../images.ts';
import { PrivateDockerd } from '../../test/helpers/dockerd.ts';
import { trustFile, type TestKey } from '../../test/helpers/keys.ts';
import { Engine } from './docker.ts';
import { ShapedLink, busier, wireLimitSeconds, type LinkProfile } from './link.ts';
import { mb, runFerryPush, type Phase } from './methods.ts';
import { peakKb, resetPeak, run, sleep, type Processes } from './proc.ts';
import { startReceiver, type BenchReceiver } from './receiver.ts';
import type { FerryEntry } from './release.ts';

export type FanoutMode = 'fanout' | 'sequential';

/** One fan-out push to every target, or the same targets one push after another. */
export interface FanoutSample {
  link: string;
  targets: number;
  size: SizeName;
  phase: Phase;
  mode: FanoutMode;
  run: number;
  totalSeconds?: number;
  /** Per target: its own push's time (one after another) or its part of the fan-out (from the push's result). */
  targetSeconds?: number[];
  wireBytes?: number;
  /** Fan-out: the slowest link's busier direction over the rate (links run side by side); one after another: the sum. */
  limitSeconds?: number;
  senderPeakKb?: number;
  /** The highest of the receivers' peaks (each reset before the push): what one target host needs. */
  receiverPeakKb?: number;
  detail?: string;
  error?: string;
}

export interface FanoutInput {
  procs: Processes;
  build: Engine;
  root: string;
  nodePath: string;
  ferry: FerryEntry;
  credentials: TestKey;
  netem: boolean;
  runs: number;
  images: BenchImages[];
  spec: { targets: number; link: LinkProfile };
  log: (message: string) => void;
  /** Called with a stop function for every thing started, so an interruption can clean up. */
  onCleanup(stop: () => Promise<void>): void;
  record(sample: FanoutSample): Promise<void>;
}

interface FanoutResult {
  ok?: boolean;
  bytes?: { image?: number; package?: number };
  compression?: string;
  targets?: Array<{ state?: string; durationMs?: number; bytes?: { sent?: number } }>;
}

/** Indexes of the fan-out's links, apart from those of --links. */
const LINK_INDEX_BASE = 50;

/**
 * One sender, N targets: N private engines, each with a `ferry receiver` in a namespace of its
 * own behind its own shaped link. Per size and phase, one `ferry push --to A --to B …` against N
 * single pushes one after another, alternating, `runs` times. The containers run with
 * `--network none` and no health check (N containers on the host network would want one port).
 */
export async function runFanout(input: FanoutInput): Promise<void> {
  const { procs, spec, log } = input;
  const links: ShapedLink[] = [];
  for (let i = 0; i < spec.targets; i += 1) {
    const link = await ShapedLink.create(procs, spec.link, LINK_INDEX_BASE + i, input.netem);
    input.onCleanup(() => link.close());
    links.push(link);
  }
  log(`fan-out: ${spec.targets} links of ${spec.link.name} (${links.map((l) => `${l.ns} ${l.nsAddr}`).join(', ')}); starting ${spec.targets} private engines`);
  const dockerds: PrivateDockerd[] = [];
  for (let i = 0; i < spec.targets; i += 1) {
    const dockerd = await PrivateDockerd.start();
    input.onCleanup(() => dockerd.stop());
    dockerds.push(dockerd);
  }
  const engines = dockerds.map((d) => new Engine(d.host, procs));
  const spool = await mkdtemp(join(tmpdir(), 'ferry-bench-fanout-'));
  input.onCleanup(() => rm(spool, { recursive: true, force: true }));
  const receivers: BenchReceiver[] = [];
  for (const [i, link] of links.entries()) {
    const receiver = await startReceiver(procs, link, input.root, input.ferry.script, {
      DOCKER_HOST: engines[i]?.host ?? '', FERRY_TRUST_FILE: trustFile(input.credentials),
      FERRY_HOST_ID: `bench-fan${i}-${randomBytes(3).toString('hex')}`, FERRY_DATA_DIR: join(spool, `receiver-${i}`),
    });
    input.onCleanup(() => receiver.stop());
    receivers.push(receiver);
  }
  // A request signed within a receiver's first second is refused: its nonce window starts then.
  await sleep(1100);
  const args = (ref: string, urls: string[]): string[] => [
    'push', ref, ...urls.flatMap((url) => ['--to', url]), '--name', `ferry-bench-${randomBytes(4).toString('hex')}`,
    '--network', 'none', '--json', '--entrypoint', '/bin/busybox', '--', 'sleep', '1000000',
  ];
  const clear = async (image: BenchImage): Promise<void> => {
    for (const engine of engines) await engine.removeImage(image.id);
  };
  for (const images of input.images) {
    for (const phase of ['cold', 'warm'] as const) {
      const image = phase === 'cold' ? images.v1 : images.v2;
      await clear(images.v2);
      await clear(images.v1);
      if (phase === 'warm') {
        log(`fan-out ${images.size}: warm set-up: v1 onto the ${spec.targets} engines (untimed, not through the links)`);
        for (const engine of engines) await run(procs, 'bash', ['-o', 'pipefail', '-c', `docker -H ${input.build.host} save ${images.v1.ref} | docker -H ${engine.host} load`]);
      }
      for (let round = 1; round <= input.runs; round += 1) {
        for (const mode of ['fanout', 'sequential'] as const) {
          const sample: FanoutSample = { link: spec.link.name, targets: spec.targets, size: images.size, phase, mode, run: round };
          try {
            for (const link of links) link.take();
            const receiverPeak = (of: BenchReceiver[]): number => Math.max(...of.map((r) => peakKb(r.pid)));
            if (mode === 'fanout') {
              for (const receiver of receivers) resetPeak(receiver.pid);
              const push = await runFerryPush(input, args(image.ref, receivers.map((r) => r.url)));
              if (push.code !== 0) throw new Error(`ferry push exited with ${push.code}: ${push.output}`);
              const result = push.result as FanoutResult;
              const wires = links.map((l) => l.take());
              sample.totalSeconds = push.totalSeconds;
              sample.senderPeakKb = push.senderPeakKb;
              sample.receiverPeakKb = receiverPeak(receivers);
              sample.targetSeconds = (result.targets ?? []).map((t) => (t.durationMs ?? Number.NaN) / 1000);
              sample.wireBytes = wires.reduce((sum, w) => sum + w.up + w.down, 0);
              sample.limitSeconds = Math.max(...wires.map((w) => wireLimitSeconds(busier(w), spec.link) ?? Number.NaN));
              sample.detail = `package ${mb(result.bytes?.package ?? 0)} (${result.compression ?? '?'}), built once; per link ${wires.map((w) => mb(busier(w))).join(', ')}`;
            } else {
              sample.totalSeconds = 0;
              sample.targetSeconds = [];
              sample.wireBytes = 0;
              sample.limitSeconds = 0;
              const details: string[] = [];
              for (const [i, receiver] of receivers.entries()) {
                resetPeak(receiver.pid);
                const push = await runFerryPush(input, args(image.ref, [receiver.url]));
                if (push.code !== 0) throw new Error(`ferry push to target ${i + 1} exited with ${push.code}: ${push.output}`);
                const wire = links[i]?.take() ?? { up: 0, down: 0 };
                sample.totalSeconds += push.totalSeconds;
                sample.targetSeconds.push(push.totalSeconds);
                sample.wireBytes += wire.up + wire.down;
                sample.limitSeconds += wireLimitSeconds(busier(wire), spec.link) ?? Number.NaN;
                sample.senderPeakKb = Math.max(sample.senderPeakKb ?? 0, push.senderPeakKb);
                sample.receiverPeakKb = Math.max(sample.receiverPeakKb ?? 0, receiverPeak([receiver]));
                details.push(`${mb(push.result.bytes?.package ?? 0)} ${push.result.compression ?? '?'}`);
              }
              sample.detail = `packages ${details.join(', ')}`;
            }
            log(`fan-out ${images.size} ${phase} ${mode} #${round}: ${sample.totalSeconds.toFixed(1)} s (targets ${sample.targetSeconds.map((t) => t.toFixed(1)).join(', ')}), ${mb(sample.wireBytes)} on the links, limit ${sample.limitSeconds.toFixed(1)} s; ${sample.detail}`);
          } catch (err) {
            sample.error = err instanceof Error ? err.message : String(err);
            log(`fan-out ${images.size} ${phase} ${mode} #${round} FAILED: ${sample.error}`);
          }
          await input.record(sample);
          await clear(image).catch((err: unknown) => log(`could not remove ${image.ref} from a fan-out engine: ${String(err)}`));
        }
      }
    }
    await clear(images.v2);
    await clear(images.v1);
  }
}
