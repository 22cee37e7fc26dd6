/**
 * Cold `ferry push` of one generated image over one shaped link, with each `--compression` in
 * turn, so `auto` (what ferry chooses for the link) is measured next to the choices it weighs:
 *
 *   PATH=$PWD/node_modules/.bin:$PATH node bench/compression-link.ts --link 100mbit --size large --runs 2 --modes auto,zstd,none
 *
 * It needs the local stack up and tc (`npm run bench` starts and installs both).
 * The receiver runs in the link's namespace on a private engine of its own (like the fan-out's
 * targets), so nothing else on the machine loads into or removes images from it meanwhile. Prints
 * one line per push: its time, the package, and the choice the push reported. Compare the modes
 * within one run only: the machine is shared.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { SIZES, ensureImages, type SizeName } from './images.ts';
import { Engine } from './lib/docker.ts';
import { ShapedLink, busier, hasNetem, parseLink, removeStaleNamespaces, wireLimitSeconds } from './lib/link.ts';
import { choiceOf, mb, runFerryPush } from './lib/methods.ts';
import { Processes, sleep } from './lib/proc.ts';
import { startReceiver } from './lib/receiver.ts';
import { ferryEntry } from './lib/release.ts';
import { PrivateDockerd } from '../test/helpers/dockerd.ts';
import { testKey, trustFile } from '../test/helpers/keys.ts';
import { stack } from '../test/helpers/stack.ts';

const ROOT = resolve(import.meta.dirname, '..');
const MODES = ['auto', 'zstd', 'none', 'gzip'] as const;
type Mode = (typeof MODES)[number];

const log = (message: string): void => { process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`); };

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { link: { type: 'string' }, size: { type: 'string' }, runs: { type: 'string' }, modes: { type: 'string' } } });
  const profile = parseLink(values.link ?? '100mbit');
  if (profile.rateBits === undefined) throw new Error('--link: a shaped link (e.g. 100mbit), not loopback');
  const size = (values.size ?? 'large') as SizeName;
  if (!(SIZES as readonly string[]).includes(size)) throw new Error(`--size: one of ${SIZES.join(', ')}`);
  const runs = Number(values.runs ?? 1);
  if (!Number.isInteger(runs) || runs < 1 || runs > 20) throw new Error('--runs: 1 to 20');
  const modes = (values.modes ?? 'auto,zstd,none').split(',').map((m) => m.trim()) as Mode[];
  for (const mode of modes) if (!MODES.includes(mode)) throw new Error(`--modes: a subset of ${MODES.join(',')}`);

  const procs = new Processes();
  const cleanups: Array<() => Promise<unknown>> = [];
  const stop = async (): Promise<void> => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err: unknown) => log(`clean-up: ${String(err)}`));
    await procs.stopAll();
  };
  process.once('SIGINT', () => { void stop().then(() => process.exit(130)); });
  try {
    const build = new Engine(stack().buildDockerHost, procs);
    const images = await ensureImages(build.host, size, procs, log);
    await removeStaleNamespaces(procs, log);
    const link = await ShapedLink.create(procs, profile, 90, await hasNetem(procs));
    cleanups.push(() => link.close());
    const dockerd = await PrivateDockerd.start();
    cleanups.push(() => dockerd.stop());
    const target = new Engine(dockerd.host, procs);
    const dir = await mkdtemp(join(tmpdir(), 'ferry-bench-compression-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const credentials = testKey(`bench-${randomBytes(3).toString('hex')}`);
    const ferry = await ferryEntry(procs, ROOT, dir, 'checkout', log);
    const receiver = await startReceiver(procs, link, ROOT, ferry.script, {
      DOCKER_HOST: dockerd.host, FERRY_TRUST_FILE: trustFile(credentials), FERRY_HOST_ID: `bench-cmp-${randomBytes(3).toString('hex')}`, FERRY_DATA_DIR: join(dir, 'receiver'),
    });
    cleanups.push(() => receiver.stop());
    // A request signed within the receiver's first second is refused: its nonce window starts then.
    await sleep(1100);
    log(`${profile.name}: ${link.ns} ${link.nsAddr}, receiver ${receiver.url} on a private engine; ${images.v1.ref} ${mb(images.v1.bytes)}`);
    const image = images.v1;
    for (let round = 1; round <= runs; round += 1) {
      for (const mode of modes) {
        await target.removeImage(image.id);
        link.take();
        const push = await runFerryPush({ procs, root: ROOT, nodePath: process.execPath, ferry, build, credentials }, [
          'push', image.ref, '--to', receiver.url, '--name', `ferry-bench-${randomBytes(4).toString('hex')}`, '--network', 'none',
          '--compression', mode, '--json', '--entrypoint', '/bin/busybox', '--', 'sleep', '1000000',
        ]);
        const wire = link.take();
        const load = (loadavg()[0] ?? 0).toFixed(1);
        if (push.code !== 0) {
          log(`#${round} --compression ${mode} FAILED (load ${load}): ${push.output.slice(0, 1500)}`);
          continue;
        }
        const limit = wireLimitSeconds(busier(wire), profile) ?? Number.NaN;
        log(`#${round} --compression ${mode}: ${push.totalSeconds.toFixed(1)} s (load ${load}), package ${mb(push.result.bytes?.package ?? 0)} ${push.result.compression ?? '?'}, `
          + `${mb(busier(wire))} over the link (limit ${limit.toFixed(1)} s)${choiceOf(push.result)}`);
      }
    }
    await target.removeImage(image.id);
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  log(err instanceof Error ? err.stack ?? err.message : String(err));
  process.exitCode = 1;
});
