/**
 * `npm run bench`: Ferry against every other way of moving an image, in one invocation.
 *
 *   npm run bench -- [--sizes small,medium,large] [--runs 3] [--out bench/results.md]
 *
 * Methods, in turn for every run: `docker save | docker load` piped between the engines (the
 * floor), the classic `save | gzip | ssh | gunzip | load` script against a private sshd, a local
 * registry (push + pull), and `ferry push` to a receiver process — cold (image absent) and warm
 * (v2 while v1 is present), against the local stack's two engines (deploy/local-stack.sh). By
 * default on loopback; `--links` adds shaped links (a network namespace per link, a veth pair, tc)
 * with the target side of every method behind them, and `--fanout` one push to several targets,
 * each behind its own link. Writes bench/results.md after every size. See bench/README.md.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_SIZES, SIZES, ensureImages, type BenchImage, type BenchImages, type SizeName } from './images.ts';
import { Engine } from './lib/docker.ts';
import { machineFacts, type MachineFacts } from './lib/facts.ts';
import { runFanout, type FanoutSample } from './lib/fanout.ts';
import { ShapedLink, hasNetem, loopback, parseFanout, parseLink, removeStaleNamespaces, type LinkProfile, type Site } from './lib/link.ts';
import { methods as allMethods, type Method, type MethodContext, type MethodId, type Phase } from './lib/methods.ts';
import { Processes, run, runAllowingFailure, sleep } from './lib/proc.ts';
import { CountingProxy } from './lib/proxy.ts';
import { startReceiver } from './lib/receiver.ts';
import { ferryEntry, type FerryBuild, type FerryEntry } from './lib/release.ts';
import { renderReport, type LinkMethods, type Sample } from './lib/report.ts';
import { measureSigningCost, type SigningCost } from './lib/signing.ts';
import { startPrivateSshd } from './lib/sshd.ts';
import { stack } from '../test/helpers/stack.ts';
import { testKey, trustFile, type TestKey } from '../test/helpers/keys.ts';

const ROOT = resolve(import.meta.dirname, '..');
const USAGE = `Usage: npm run bench -- [--sizes small,medium,large] [--runs N] [--out FILE]

  --sizes   which generated images to move (default small,medium,large: ~10 MB, ~200 MB, ~1 GB;
            xlarge, ~3 GB, checks that memory stays where the large one's is)
  --runs    runs of every method per size and phase; the report gives medians (default 3)
  --out     where the report goes (default bench/results.md)
  --methods a subset of pipe,ssh,registry,ferry, in that order (default all; the pipe is the
            reference of the ratios)
  --note    a sentence for the report's notes (repeat for more)
  --links   link profiles, each measured with every method in turn (default loopback): loopback,
            or RATE[-RTTms] with RATE in kbit/mbit/gbit, e.g. loopback,1gbit,100mbit,20mbit,20mbit-20ms;
            a shaped link is a network namespace of the bench's own behind a veth pair and tc;
            none: no link (with --fanout alone)
  --fanout  NxRATE[-RTTms], e.g. 4x100mbit: one ferry push to N targets (private engines), each
            behind its own link, against the same N pushes one after another (default none)
  --ferry   release (default): pack this checkout and measure the installed release, as users run
            it; checkout: run the sources (bin/ferry.js), e.g. to profile them

Needs the local stack (bash deploy/local-stack.sh up). For development: --sizes small --runs 1.`;

const log = (message: string): void => { process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`); };

const METHOD_IDS: readonly MethodId[] = ['pipe', 'ssh', 'registry', 'ferry'];

interface Options {
  sizes: SizeName[];
  runs: number;
  out: string;
  methods: MethodId[];
  notes: string[];
  links: LinkProfile[];
  fanout?: { targets: number; link: LinkProfile };
  ferry: FerryBuild;
}

function options(argv: string[]): Options | undefined {
  const { values } = parseArgs({ args: argv, options: {
    sizes: { type: 'string' }, runs: { type: 'string' }, out: { type: 'string' }, methods: { type: 'string' }, note: { type: 'string', multiple: true },
    links: { type: 'string' }, fanout: { type: 'string' }, ferry: { type: 'string' }, help: { type: 'boolean', short: 'h' },
  } });
  if (values.help) return undefined;
  const sizes = (values.sizes ?? DEFAULT_SIZES.join(',')).split(',').map((z) => z.trim()).filter(Boolean);
  for (const size of sizes) if (!(SIZES as readonly string[]).includes(size)) throw new Error(`--sizes: unknown size "${size}" (${SIZES.join(', ')})`);
  const runs = Number(values.runs ?? 3);
  if (!Number.isInteger(runs) || runs < 1 || runs > 50) throw new Error('--runs must be a whole number from 1 to 50');
  const methods = (values.methods ?? METHOD_IDS.join(',')).split(',').map((m) => m.trim()).filter(Boolean);
  for (const method of methods) if (!(METHOD_IDS as readonly string[]).includes(method)) throw new Error(`--methods: unknown method "${method}" (${METHOD_IDS.join(', ')})`);
  // `--links none` measures no link, e.g. for a fan-out alone.
  const links = (values.links ?? 'loopback').split(',').map((l) => l.trim()).filter((l) => l !== '' && l !== 'none').map(parseLink);
  if (new Set(links.map((l) => l.name)).size !== links.length) throw new Error('--links: a profile is named twice');
  const ferry = values.ferry ?? 'release';
  if (ferry !== 'release' && ferry !== 'checkout') throw new Error(`--ferry: "${ferry}" is not release or checkout`);
  return {
    sizes: SIZES.filter((z) => sizes.includes(z)), runs, out: resolve(values.out ?? join(ROOT, 'bench/results.md')),
    methods: METHOD_IDS.filter((m) => methods.includes(m)), notes: values.note ?? [], links, ferry,
    ...(values.fanout !== undefined ? { fanout: parseFanout(values.fanout) } : {}),
  };
}

/** What runs on the target side of one link for the methods, and how to stop it. */
interface Services {
  context: MethodContext;
  stop(): Promise<void>;
}

class Bench {
  readonly procs = new Processes();
  readonly #opts: Options;
  readonly #build: Engine;
  readonly #target: Engine;
  readonly #samples: Sample[] = [];
  readonly #fanoutSamples: FanoutSample[] = [];
  readonly #images: BenchImages[] = [];
  readonly #command: string;
  readonly #linkMethods: LinkMethods[] = [];
  /** The methods of the link being measured, closed (registry stopped, its storage removed) with it. */
  #methods: Method[] = [];
  #facts: MachineFacts | undefined;
  #revision = 'unknown';
  #ferry: FerryEntry | undefined;
  #signing: SigningCost | undefined;
  #tmp: string | undefined;
  #credentials: TestKey | undefined;
  #netem: boolean | undefined;
  /** What is up right now (one link's services, or the fan-out's), for close() after an interruption. */
  #live: Array<() => Promise<void>> = [];
  #closed = false;

  constructor(opts: Options, command: string) {
    this.#opts = opts;
    this.#command = command;
    const s = stack();
    this.#build = new Engine(s.buildDockerHost, this.procs);
    this.#target = new Engine(s.targetDockerHost, this.procs);
  }

  async run(): Promise<void> {
    this.#facts = await machineFacts(this.procs, this.#build, this.#target);
    this.#revision = await revision(this.procs);
    // Measured here, in the same run as the pushes it is compared with.
    this.#signing = await measureSigningCost();
    this.#tmp = await mkdtemp(join(tmpdir(), 'ferry-bench-'));
    this.#credentials = testKey(`bench-${randomBytes(3).toString('hex')}`);
    this.#ferry = await ferryEntry(this.procs, ROOT, this.#tmp, this.#opts.ferry, log);
    if (this.#opts.fanout !== undefined || this.#opts.links.some((l) => l.rateBits !== undefined)) {
      await removeStaleNamespaces(this.procs, log);
      this.#netem = await hasNetem(this.procs);
      log(this.#netem ? 'netem is there: round trips are the kernel\'s' : 'no netem in this kernel: round trips come from a delaying relay in front of each service');
    }
    for (const size of this.#opts.sizes) {
      const images = await ensureImages(this.#build.host, size, this.procs, log);
      this.#images.push(images);
      log(`${size}: ${images.v1.ref} ${(images.v1.bytes / 1e6).toFixed(1)} MB, ${images.v1.diffIds.length} layers`);
    }
    for (const [index, profile] of this.#opts.links.entries()) await this.#measureLink(profile, index);
    if (this.#opts.fanout) await this.#measureFanout(this.#opts.fanout);
    await this.#write(true);
  }

  async #measureLink(profile: LinkProfile, index: number): Promise<void> {
    const tmp = this.#tmp ?? '';
    const site: Site = profile.rateBits === undefined ? loopback : await ShapedLink.create(this.procs, profile, index, this.#netem ?? false);
    this.#live.push(() => site.close());
    if (site instanceof ShapedLink) log(`${profile.name}: namespace ${site.ns}, ${site.rootIf} ${site.rootAddr} ⇄ ${site.nsIf} ${site.nsAddr}${site.relayed ? `, delaying relays of ${profile.rttMs / 2} ms each way` : ''}`);
    const services = await this.#startServices(join(tmp, profile.name), site);
    this.#live.push(() => services.stop());
    const methods = allMethods(services.context).filter((m) => this.#opts.methods.includes(m.id));
    this.#linkMethods.push({ link: profile, methods: [...methods] });
    this.#methods = methods;
    for (const images of this.#images) {
      await this.#phase(profile, methods, images, 'cold');
      await this.#phase(profile, methods, images, 'warm');
      await this.#clearTarget(images);
      await this.#write(false);
    }
    await this.#closeMethods();
    await this.#stopLive();
  }

  #ferryEntry(): FerryEntry {
    if (this.#ferry === undefined) throw new Error('the bench has not chosen its ferry yet');
    return this.#ferry;
  }

  async #closeMethods(): Promise<void> {
    for (const method of this.#methods.splice(0)) await method.close?.().catch(() => undefined);
  }

  async #stopLive(): Promise<void> {
    for (const stop of this.#live.splice(0).reverse()) await stop().catch((err: unknown) => log(`clean-up: ${String(err)}`));
  }

  async #startServices(dir: string, site: Site): Promise<Services> {
    const credentials = this.#credentials ?? testKey('bench');
    const hostId = `bench-${randomBytes(3).toString('hex')}`;
    const ferry = this.#ferryEntry();
    const receiver = await startReceiver(this.procs, site, ROOT, ferry.script, {
      DOCKER_HOST: this.#target.host, FERRY_TRUST_FILE: trustFile(credentials), FERRY_HOST_ID: hostId, FERRY_DATA_DIR: join(dir, 'receiver'),
    });
    const proxies: CountingProxy[] = [];
    const stop = async (): Promise<void> => {
      await sshd?.stop().catch(() => undefined);
      await receiver.stop().catch(() => undefined);
      for (const proxy of proxies) await proxy.close().catch(() => undefined);
    };
    let sshd: Awaited<ReturnType<typeof startPrivateSshd>> | undefined;
    try {
      // A request signed within the receiver's first second is refused: its nonce window starts then.
      await sleep(1100);
      sshd = await startPrivateSshd(join(dir, 'sshd'), this.procs, site);
      const registry = await site.expose();
      // The engines trust plain-HTTP registries on 127.0.0.0/8 only: they reach this one through a forwarder there.
      const registryProxy = await CountingProxy.start(0);
      proxies.push(registryProxy);
      const common = { procs: this.procs, build: this.#build, target: this.#target, tmp: dir, root: ROOT, nodePath: process.execPath, ferry, site, sshd, registryProxy, registry, credentials, log, healthHost: site.hostAddress };
      if (site.meter) {
        log(`${site.profile.name}: receiver ${receiver.url}, sshd ${sshd.host}:${sshd.port}, registry ${registry.reach}:${registry.port} (engines via 127.0.0.1:${registryProxy.port})`);
        return {
          stop,
          context: { ...common, ssh: { host: sshd.host, port: sshd.port, meter: site.meter }, registryMeter: site.meter, receiver: { url: receiver.url, pid: receiver.pid }, receiverMeter: site.meter },
        };
      }
      // On loopback each method's bytes are counted by a proxy of its own in front of it.
      const receiverProxy = await CountingProxy.start(Number(new URL(receiver.url).port));
      const sshProxy = await CountingProxy.start(sshd.port);
      proxies.push(receiverProxy, sshProxy);
      log(`receiver ${receiver.url} (via ${receiverProxy.port}), sshd 127.0.0.1:${sshd.port} (via ${sshProxy.port}), registry via ${registryProxy.port}`);
      return {
        stop,
        context: {
          ...common, ssh: { host: '127.0.0.1', port: sshProxy.port, meter: sshProxy }, registryMeter: registryProxy,
          receiver: { url: `http://127.0.0.1:${receiverProxy.port}`, pid: receiver.pid }, receiverMeter: receiverProxy,
        },
      };
    } catch (err) {
      await stop();
      throw err;
    }
  }

  async #phase(link: LinkProfile, methods: Method[], images: BenchImages, phase: Phase): Promise<void> {
    const image = phase === 'cold' ? images.v1 : images.v2;
    const where = `${link.name} ${images.size}`;
    await this.#clearTarget(images);
    if (phase === 'warm') {
      log(`${where}: warm set-up: v1 onto the target (untimed)`);
      for (const method of methods) {
        try {
          await method.prepareWarm?.(images);
        } catch (err) {
          log(`${where}: warm set-up of ${method.id} failed (its warm runs start without it): ${err instanceof Error ? err.message : String(err)}`);
        }
      }
      // Without the registry among the methods, v1 arrives by the plain pipe.
      if (!await this.#target.has(images.v1.id)) {
        await run(this.procs, 'bash', ['-o', 'pipefail', '-c', `docker -H ${this.#build.host} save ${images.v1.ref} | docker -H ${this.#target.host} load`]);
      }
    }
    for (let round = 1; round <= this.#opts.runs; round += 1) {
      for (const method of methods) {
        const sample: Sample = { link: link.name, size: images.size, phase, method: method.id, run: round, load: loadavg()[0] ?? 0 };
        try {
          await this.#ready(images, phase);
          sample.measurement = await method.measure(image, images, phase);
          const m = sample.measurement;
          log(`${where} ${phase} ${method.id} #${round}: ${m.moveSeconds.toFixed(1)} s to the target + ${m.startSeconds.toFixed(1)} s start = ${m.totalSeconds.toFixed(1)} s, ${(m.wireBytes / 1e6).toFixed(1)} MB on the wire${m.detail ? ` (${m.detail})` : ''}`);
        } catch (err) {
          sample.error = err instanceof Error ? err.message : String(err);
          log(`${where} ${phase} ${method.id} #${round} FAILED: ${sample.error}`);
        }
        this.#samples.push(sample);
        await this.#target.removeImage(image.id).catch((err: unknown) => log(`could not remove ${image.ref} from the target: ${String(err)}`));
      }
      await this.#write(false);
    }
  }

  async #measureFanout(spec: { targets: number; link: LinkProfile }): Promise<void> {
    await runFanout({
      procs: this.procs, build: this.#build, root: ROOT, nodePath: process.execPath, ferry: this.#ferryEntry(), credentials: this.#credentials ?? testKey('bench'),
      netem: this.#netem ?? false, runs: this.#opts.runs, images: this.#images, spec, log,
      onCleanup: (stop) => this.#live.push(stop),
      record: async (sample) => {
        this.#fanoutSamples.push(sample);
        await this.#write(false);
      },
    });
    await this.#stopLive();
  }

  /** Cold: neither version on the target. Warm: v1 there, v2 not. Whatever a failed run left is cleared. */
  async #ready(images: BenchImages, phase: Phase): Promise<void> {
    await this.#target.removeImage(images.v2.id);
    if (phase === 'cold') await this.#target.removeImage(images.v1.id);
    else if (!await this.#target.has(images.v1.id)) throw new Error(`${images.v1.ref} left the target during the warm phase`);
  }

  async #clearTarget(images: BenchImages): Promise<void> {
    for (const image of [images.v2, images.v1] satisfies BenchImage[]) await this.#target.removeImage(image.id);
  }

  async #write(complete: boolean): Promise<void> {
    if (!this.#facts) return;
    const text = renderReport({
      command: this.#command, facts: this.#facts, complete, runs: this.#opts.runs, sizes: this.#opts.sizes,
      loadAtEnd: loadavg().map((n) => n.toFixed(2)).join(' '), finishedAt: new Date().toISOString(),
      links: this.#linkMethods, images: this.#images, samples: this.#samples, fanout: this.#fanoutSamples, revision: this.#revision, ferryBuild: this.#ferry?.describe ?? 'not chosen yet',
      notes: this.#opts.notes, ...(this.#netem !== undefined ? { netem: this.#netem } : {}), ...(this.#signing ? { signing: this.#signing } : {}),
    });
    await writeFile(this.#opts.out, text);
  }

  /** Stops everything this bench started and removes what it left on the target; safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#closeMethods();
    await this.#stopLive();
    await this.procs.stopAll();
    for (const images of this.#images) await this.#clearTarget(images).catch(() => undefined);
    await this.procs.stopAll();
    if (this.#tmp) await rm(this.#tmp, { recursive: true, force: true });
  }

  async interrupted(): Promise<void> {
    await this.#write(false).catch(() => undefined);
    await this.close();
  }
}

/** The commit measured, and whether the working tree had changes on top of it. */
async function revision(procs: Processes): Promise<string> {
  const head = await runAllowingFailure(procs, 'git', ['-C', ROOT, 'log', '-1', '--format=%h %cI %s']);
  const status = await runAllowingFailure(procs, 'git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no']);
  if (head.code !== 0) return 'not a git checkout';
  const changed = status.stdout.split('\n').filter(Boolean).length;
  return `commit ${head.stdout.trim()}${changed ? ` plus uncommitted changes in ${changed} tracked files` : ''}`;
}

async function main(): Promise<number> {
  let opts: Options | undefined;
  try {
    opts = options(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    return 2;
  }
  if (!opts) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const command = `npm run bench -- --sizes ${opts.sizes.join(',')} --runs ${opts.runs}${opts.methods.length < METHOD_IDS.length ? ` --methods ${opts.methods.join(',')}` : ''}`
    + `${opts.links.length !== 1 || opts.links[0]?.name !== 'loopback' ? ` --links ${opts.links.map((l) => l.name).join(',')}` : ''}`
    + `${opts.fanout ? ` --fanout ${opts.fanout.targets}x${opts.fanout.link.name}` : ''}`;
  const bench = new Bench(opts, command);
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping every process the bench started and cleaning up`);
    void bench.interrupted().finally(() => process.exit(130));
  };
  process.on('SIGINT', stop).on('SIGTERM', stop);
  try {
    await bench.run();
    log(`wrote ${opts.out}`);
    return 0;
  } catch (err) {
    // After Ctrl-C, the killed children make the current step fail: that is not news.
    if (stopping) return 130;
    log(`bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    await bench.interrupted();
    return 1;
  } finally {
    await bench.close();
  }
}

process.exitCode = await main();
