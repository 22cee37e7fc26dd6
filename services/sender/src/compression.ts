import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { zstdCompressSync, constants as zlibConstants } from 'node:zlib';
import type { Compression } from '@ferry/protocol';
import type { CompressionChoice } from './negotiate.ts';
import { parseTarget } from './receiver-client.ts';

/** What a push's compression is, and why: printed by the CLI and kept in its JSON. */
export interface CompressionDecision {
  compression: Compression;
  /** zstd's level; absent for none (and for a choice made by the user without one). */
  level?: number;
  /** One sentence, e.g. "measured 11.8 MB/s on the link: zstd 3 ends in ~41 s, none in ~85 s". */
  reason: string;
  /** Whether the decision rests on a measurement of the link rather than on its addresses. */
  measured: boolean;
  /** A first guess to check on the first streamed parts (see {@link decideFromMeasure}). */
  measureLink?: boolean;
}

/** Where the targets are, as far as their addresses tell: the worst of them counts. */
export type LinkClass = 'loopback' | 'private' | 'public';

/** zstd levels the measured decision weighs: fast, zstd's default, and a dense one for slow links. */
export const ZSTD_LEVELS = [1, 3, 9] as const;

/**
 * The compression a push starts with. A choice the user made stands. `auto` goes by the targets'
 * addresses only as a first guess, refined by {@link decideFromMeasure} once the first streamed
 * parts show what the link carries: loopback is this machine (none, whatever the package); a private address is often a
 * fast LAN but may be a slow VPN or radio link, so a stream starts uncompressed and is measured,
 * and a spooled package (which cannot be measured before it is made) gets zstd 1, which costs
 * little on a fast link and saves much on a slow one; a public address gets zstd 3. A package
 * that leaves out most layers is a few top layers, which zstd packs in a fraction of a second.
 */
export async function chooseCompression(choice: CompressionChoice, facts: { urls: readonly string[]; omitted: number; layers: number; streamed: boolean }): Promise<CompressionDecision> {
  if (choice !== 'auto') return { compression: choice, reason: `--compression ${choice}`, measured: false };
  const link = await linkClass(facts.urls);
  if (link === 'loopback') return { compression: 'none', reason: 'every target is on this machine (loopback): compressing only costs time', measured: false };
  if (facts.omitted * 2 > facts.layers) return { compression: 'zstd', level: 3, reason: 'most layers are left out: zstd 3 packs the few top ones in a moment', measured: false };
  if (link === 'private' && facts.streamed) return { compression: 'none', reason: 'private addresses: uncompressed until the first parts measure the link', measured: false, measureLink: true };
  if (link === 'private') return { compression: 'zstd', level: 1, reason: 'private addresses, not measured (spooled package): zstd 1 costs little on a fast link and saves much on a slow one', measured: false };
  return { compression: 'zstd', level: 3, reason: 'a public address: zstd 3', measured: false };
}

/** What the first parts of a stream showed. */
export interface LinkMeasure {
  /**
   * Package bytes per second the slowest target acknowledged, from its first acknowledged part
   * on: the receiver acknowledges what it holds, so neither the sender's socket buffers nor a
   * queue on the way inflate it, and the export's start does not lower it.
   */
  linkBytesPerSecond: number;
  /**
   * Image bytes per second the export produced while it was not held back by the targets: what a
   * push could reach if the link were no limit. When it is no faster than the link, the export
   * set the pace, and compressing cannot help.
   */
  exportBytesPerSecond: number;
  /** Image bytes still to send, uncompressed. */
  remainingBytes: number;
  /** Image bytes in all, uncompressed: what a restart sends. */
  totalBytes: number;
  /** Bytes already on their way: what a restart throws away. */
  sentBytes: number;
  /** zstd on a sample of the image's bytes: its ratio (out/in) and speed (input bytes per second) per level. */
  samples: readonly { level: number; ratio: number; bytesPerSecond: number }[];
  /**
   * The share of one core the compressor can count on while the push runs (0–1], from
   * {@link cpuShare}: the sample ran alone for a few milliseconds, the push's zstd runs for minutes
   * beside the export, the hashing and whatever else the machine does. Absent: 1.
   */
  cpuShare?: number;
}

/** The decision after measuring: whether to start again with another compression. */
export interface MeasuredDecision extends CompressionDecision {
  restart: boolean;
  /** Estimated seconds to the end: going on as is, and with the chosen compression from the start. */
  estimates: { current: number; chosen: number };
}

/** A restart must promise at least this share of the time saved, so a noisy measurement does not cause one. */
const RESTART_GAIN = 0.25;

/**
 * A denser level must promise to end this much sooner than a faster one to be chosen: the
 * estimate of a denser level rests most on the CPU it will get, and zstd 9 packs a typical image
 * only a few percent smaller than zstd 3 at three times the CPU.
 */
const DENSER_GAIN = 0.05;

/**
 * The share of one core a compressor can expect here: the cores over the processes that want one
 * (the 1-minute load, plus the compressor itself), at most 1 and at least 0.1.
 */
export function cpuShare(cores: number, load: number): number {
  if (!(cores > 0) || !Number.isFinite(load)) return 1;
  return Math.min(1, Math.max(0.1, cores / (Math.max(0, load) + 1)));
}

/**
 * Called on an uncompressed stream while it runs: whether a zstd level ends the push sooner, even
 * starting again from the first byte. A push takes as long as its slowest stage: uncompressed, the
 * rest goes at the measured pace; compressed, every byte again at the slowest of the export, the
 * compressor and the link carrying the smaller output. Pure: the measurements are given, so unit
 * tests drive it.
 */
export function decideFromMeasure(measure: LinkMeasure): MeasuredDecision {
  const link = Math.max(1, measure.linkBytesPerSecond);
  const current = measure.remainingBytes / link;
  const share = Math.min(1, Math.max(0.1, measure.cpuShare ?? 1));
  const busy = share < 1 ? `, zstd gets ~${Math.round(share * 100)} % of a core` : '';
  const measured = measure.exportBytesPerSecond > link * 1.1
    ? `the link carries ${rate(link)}, the export makes ${rate(measure.exportBytesPerSecond)}${busy}`
    : `the link carries ${rate(link)} and waits on the export (${rate(measure.exportBytesPerSecond)})${busy}`;
  let best: { level: number; seconds: number; ratio: number } | undefined;
  // Fastest level first: a denser one replaces it only when it ends clearly sooner.
  for (const sample of [...measure.samples].sort((a, b) => a.level - b.level)) {
    const pace = Math.min(measure.exportBytesPerSecond, sample.bytesPerSecond * share, link / Math.max(1e-3, sample.ratio));
    const seconds = measure.totalBytes / Math.max(1, pace);
    if (!best || seconds < best.seconds * (1 - DENSER_GAIN)) best = { level: sample.level, seconds, ratio: sample.ratio };
  }
  if (!best || best.seconds > current * (1 - RESTART_GAIN)) {
    const compared = best ? `: uncompressed ends in ~${Math.ceil(current)} s, zstd ${best.level} (to ${Math.round(best.ratio * 100)} %) from the start would take ~${Math.ceil(best.seconds)} s` : '';
    return { compression: 'none', reason: `${measured}${compared}`, measured: true, restart: false, estimates: { current, chosen: current } };
  }
  return {
    compression: 'zstd', level: best.level, measured: true, restart: true,
    reason: `${measured}: zstd ${best.level} (to ${Math.round(best.ratio * 100)} %) ends in ~${Math.ceil(best.seconds)} s from the start, uncompressed in ~${Math.ceil(current)} s; started again compressed`,
    estimates: { current, chosen: best.seconds },
  };
}

function rate(bytesPerSecond: number): string {
  return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
}

/** What {@link LinkProbe.observe} hands over once the link can be judged. */
export interface ProbeReading {
  /** Package bytes per second acknowledged over the window. */
  bytesPerSecond: number;
  /** The window: from the first acknowledged part to now. */
  windowMs: number;
}

/**
 * When an uncompressed stream's link is judged, and at what pace it ran. The pace is taken from
 * the slowest target's first acknowledged part on, once that window is `windowMs` long and
 * carried `minBytes` more: a few parts and a few seconds, so the pace is the link's and not a
 * burst into buffers, and a restart throws little away. A link judged fast enough is judged
 * again each time the window has doubled, in case it slowed down. Pure: times are given.
 */
export class LinkProbe {
  readonly #windowMs: number;
  readonly #minBytes: number;
  #first: { at: number; bytes: number } | undefined;
  #nextMs: number;

  constructor(options: { windowMs: number; minBytes: number }) {
    this.#windowMs = options.windowMs;
    this.#minBytes = options.minBytes;
    this.#nextMs = options.windowMs;
  }

  /** The slowest target has `bytes` acknowledged at `at` (milliseconds): a reading when it is time to judge. */
  observe(at: number, bytes: number): ProbeReading | undefined {
    if (bytes <= 0) return undefined;
    if (!this.#first) {
      this.#first = { at, bytes };
      return undefined;
    }
    const windowMs = at - this.#first.at;
    const carried = bytes - this.#first.bytes;
    if (windowMs < this.#nextMs || carried < this.#minBytes || windowMs <= 0) return undefined;
    this.#nextMs = Math.max(this.#windowMs, windowMs) * 2;
    return { bytesPerSecond: (carried * 1000) / windowMs, windowMs };
  }
}

/** zstd's ratio and speed at each of {@link ZSTD_LEVELS} on `sample` (a few MiB of the image). */
export function sampleZstd(sample: Buffer): LinkMeasure['samples'] {
  if (sample.length === 0) return [];
  return ZSTD_LEVELS.map((level) => {
    const started = performance.now();
    const packed = zstdCompressSync(sample, { params: { [zlibConstants.ZSTD_c_compressionLevel]: level } });
    const seconds = Math.max(1e-4, (performance.now() - started) / 1000);
    return { level, ratio: packed.length / sample.length, bytesPerSecond: sample.length / seconds };
  });
}

/** The worst link class of these targets, by their addresses (a host name by every address it resolves to). */
export async function linkClass(urls: readonly string[]): Promise<LinkClass> {
  const classes = await Promise.all(urls.map(async (url) => hostClass(parseTarget(url).hostname)));
  if (classes.includes('public')) return 'public';
  if (classes.includes('private')) return 'private';
  return 'loopback';
}

async function hostClass(hostname: string): Promise<LinkClass> {
  if (hostname === 'localhost' || hostname.endsWith('.localhost')) return 'loopback';
  let addresses: string[] = [hostname];
  if (isIP(hostname) === 0) {
    try {
      addresses = (await lookup(hostname, { all: true })).map((entry) => entry.address);
    } catch {
      return 'public';
    }
  }
  if (addresses.length > 0 && addresses.every(isLoopbackAddress)) return 'loopback';
  if (addresses.length > 0 && addresses.every(isPrivateAddress)) return 'private';
  return 'public';
}

export function isLoopbackAddress(address: string): boolean {
  const lower = address.toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower)?.[1];
  if (mapped !== undefined) return isLoopbackAddress(mapped);
  return lower === '::1' || (isIP(lower) === 4 && lower.startsWith('127.'));
}

/** Loopback, RFC 1918, link-local (IPv4 and IPv6), unique local IPv6, and IPv4-mapped forms of them. */
export function isPrivateAddress(address: string): boolean {
  const lower = address.toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower)?.[1];
  if (mapped !== undefined) return isPrivateAddress(mapped);
  if (isIP(lower) === 4) {
    const [a = -1, b = -1] = lower.split('.').map(Number);
    return a === 127 || a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 169 && b === 254);
  }
  if (isIP(lower) === 6) {
    return lower === '::1' || /^f[cd][0-9a-f]{2}:/.test(lower) || /^fe[89ab][0-9a-f]:/.test(lower);
  }
  return false;
}
