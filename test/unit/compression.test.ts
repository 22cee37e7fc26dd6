/** The compression a push chooses for its link, from measurements given here (the link is not needed). */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { decideFromMeasure, sampleZstd, type LinkMeasure } from '@ferry/sender';
import { LinkProbe, cpuShare } from '../../services/sender/src/compression.ts';

const GB = 1e9;
const MiB = 1024 ** 2;
/** zstd on a typical image: faster levels pack less. */
const samples: LinkMeasure['samples'] = [
  { level: 1, ratio: 0.45, bytesPerSecond: 400e6 },
  { level: 3, ratio: 0.4, bytesPerSecond: 200e6 },
  { level: 9, ratio: 0.35, bytesPerSecond: 40e6 },
];
const measure = (over: Partial<LinkMeasure>): LinkMeasure => ({
  linkBytesPerSecond: 1e6, exportBytesPerSecond: 200e6, remainingBytes: GB - 30e6, totalBytes: GB, sentBytes: 30e6, samples, ...over,
});

describe('compression chosen for the link', () => {
  it('a slow link (1 MB/s) that sets the pace: 1 GB is not sent uncompressed; the densest level that keeps up wins', () => {
    const d = decideFromMeasure(measure({}));
    assert.equal(d.restart, true);
    assert.deepEqual([d.compression, d.level, d.measured], ['zstd', 9, true]);
    assert.ok(d.estimates.chosen < d.estimates.current / 2, JSON.stringify(d.estimates));
    assert.match(d.reason, /1\.0 MB\/s.*zstd 9/);
  });

  it('100 Mbit/s (12.5 MB/s acknowledged) with a ~1 GB image that packs to 46 %: restarted with zstd, about half the time', () => {
    const image = 1.08e9;
    const d = decideFromMeasure(measure({
      linkBytesPerSecond: 12.5e6, exportBytesPerSecond: 150e6, totalBytes: image, sentBytes: 30e6, remainingBytes: image - 30e6,
      samples: [{ level: 1, ratio: 0.5, bytesPerSecond: 300e6 }, { level: 3, ratio: 0.46, bytesPerSecond: 150e6 }, { level: 9, ratio: 0.43, bytesPerSecond: 45e6 }],
    }));
    assert.deepEqual([d.restart, d.compression], [true, 'zstd']);
    assert.ok(d.estimates.current > 80 && d.estimates.chosen < 45, JSON.stringify(d.estimates));
    assert.match(d.reason, /12\.5 MB\/s.*started again compressed/);
  });

  it('a middling link (50 MB/s): zstd 3, as level 9 could not keep up with the link', () => {
    const d = decideFromMeasure(measure({ linkBytesPerSecond: 50e6 }));
    assert.deepEqual([d.restart, d.compression, d.level], [true, 'zstd', 3]);
  });

  it('a fast link (1 GB/s): compressing would cost more than it saves; stays uncompressed', () => {
    const d = decideFromMeasure(measure({ linkBytesPerSecond: GB, exportBytesPerSecond: 2 * GB }));
    assert.deepEqual([d.restart, d.compression, d.level], [false, 'none', undefined]);
  });

  it('the export sets the pace (the link keeps up with it): uncompressed stays, whatever zstd would pack', () => {
    // 60 MB/s acknowledged, and the export makes no more: a compressed push cannot beat the export either.
    const d = decideFromMeasure(measure({ linkBytesPerSecond: 60e6, exportBytesPerSecond: 60e6 }));
    assert.deepEqual([d.restart, d.compression], [false, 'none']);
    assert.match(d.reason, /waits on the export/);
  });

  it('the compressor is slower than the link: uncompressed stays', () => {
    const d = decideFromMeasure(measure({ linkBytesPerSecond: 100e6, exportBytesPerSecond: 400e6, samples: samples.map((s) => ({ ...s, bytesPerSecond: 80e6 })) }));
    assert.deepEqual([d.restart, d.compression], [false, 'none']);
  });

  it('an image that does not compress is not restarted for a few per cent', () => {
    const d = decideFromMeasure(measure({ samples: samples.map((s) => ({ ...s, ratio: 0.97 })) }));
    assert.deepEqual([d.restart, d.compression], [false, 'none']);
  });

  it('late in the push, a restart must still pay for the bytes already sent', () => {
    // 900 MB of 1 GB are through at 10 MB/s: 10 s to go, against ~40 s from the start with zstd.
    const d = decideFromMeasure(measure({ linkBytesPerSecond: 10e6, remainingBytes: 100e6, sentBytes: 900e6 }));
    assert.deepEqual([d.restart, d.compression], [false, 'none']);
  });

  it('a busy machine (the compressor gets 40 % of a core): 100 Mbit/s gets zstd 3, not a zstd 9 that could not keep up', () => {
    const image = 1.08e9;
    const busy = { level: 9, ratio: 0.4, bytesPerSecond: 38e6 };
    const given = {
      linkBytesPerSecond: 10.3e6, exportBytesPerSecond: 54.3e6, totalBytes: image, sentBytes: 30e6, remainingBytes: image - 30e6,
      samples: [{ level: 1, ratio: 0.46, bytesPerSecond: 300e6 }, { level: 3, ratio: 0.42, bytesPerSecond: 120e6 }, busy],
    };
    const idle = decideFromMeasure(measure({ ...given, cpuShare: 1 }));
    const loaded = decideFromMeasure(measure({ ...given, cpuShare: 0.4 }));
    assert.deepEqual([loaded.compression, loaded.level, loaded.restart], ['zstd', 3, true]);
    assert.match(loaded.reason, /zstd gets ~40 % of a core/);
    // Idle, zstd 9 would keep up but ends only ~5 % sooner than zstd 3: the faster level stays.
    assert.deepEqual([idle.compression, idle.level], ['zstd', 3]);
    assert.doesNotMatch(idle.reason, /of a core/);
  });

  it('the compressor\'s share of a core: the cores over the load plus itself, between 0.1 and 1', () => {
    assert.equal(cpuShare(2, 0), 1);
    assert.equal(cpuShare(2, 3), 0.5);
    assert.equal(cpuShare(2, 100), 0.1);
    assert.equal(cpuShare(64, 8), 1);
    assert.equal(cpuShare(0, 1), 1);
    assert.equal(cpuShare(2, Number.NaN), 1);
  });

  it('without a sample (nothing to try zstd on) uncompressed stays', () => {
    assert.deepEqual(decideFromMeasure(measure({ samples: [] })).compression, 'none');
  });

  it('zstd is tried on a sample: zeros pack to almost nothing, random bytes not at all', () => {
    const zeros = sampleZstd(Buffer.alloc(1024 * 1024));
    const noise = sampleZstd(randomBytes(1024 * 1024));
    assert.deepEqual(zeros.map((s) => s.level), [1, 3, 9]);
    for (const s of zeros) assert.ok(s.ratio < 0.01 && s.bytesPerSecond > 0, JSON.stringify(s));
    for (const s of noise) assert.ok(s.ratio > 0.99, JSON.stringify(s));
    assert.deepEqual(sampleZstd(Buffer.alloc(0)), []);
  });
});

describe('when the link is judged', () => {
  it('by time from the first acknowledged part: a burst into buffers and the export\'s start do not count', () => {
    const probe = new LinkProbe({ windowMs: 2000, minBytes: 4 * MiB });
    // The first part is acknowledged after 900 ms (the export started, the part crossed); 8 MiB
    // more follow within 300 ms (they sat in socket buffers), then the link's pace: 2 MiB per 160 ms.
    assert.equal(probe.observe(900, 2 * MiB), undefined);
    assert.equal(probe.observe(1000, 6 * MiB), undefined);
    assert.equal(probe.observe(1200, 10 * MiB), undefined);
    let at = 1200;
    let bytes = 10 * MiB;
    let reading;
    while (!reading) {
      at += 160;
      bytes += 2 * MiB;
      reading = probe.observe(at, bytes);
    }
    assert.ok(at - 900 >= 2000, String(at));
    // ~14.5 MB/s with the burst in the window, against 13.1 MB/s of the link alone and ~8 MB/s counted from the start.
    assert.ok(reading.bytesPerSecond > 12e6 && reading.bytesPerSecond < 16e6, JSON.stringify(reading));
    assert.ok(reading.windowMs >= 2000);
  });

  it('a link too slow for the bytes in the window waits for them', () => {
    const probe = new LinkProbe({ windowMs: 2000, minBytes: 4 * MiB });
    // 2 MiB parts every 16 s (1 Mbit/s): two more parts after the first.
    assert.equal(probe.observe(16_000, 2 * MiB), undefined);
    assert.equal(probe.observe(32_000, 4 * MiB), undefined);
    const reading = probe.observe(48_000, 6 * MiB);
    assert.ok(reading && Math.abs(reading.bytesPerSecond - (4 * MiB) / 32) < 1, JSON.stringify(reading));
  });

  it('judged again each time the window has doubled', () => {
    const probe = new LinkProbe({ windowMs: 2000, minBytes: 1 });
    assert.equal(probe.observe(1000, 1), undefined);
    const judged = [1500, 3000, 4000, 5000, 7000, 9000, 13_000].filter((at) => probe.observe(at, at) !== undefined);
    assert.deepEqual(judged, [3000, 5000, 9000]);
  });

  it('nothing acknowledged yet is no reading', () => {
    const probe = new LinkProbe({ windowMs: 0, minBytes: 0 });
    assert.equal(probe.observe(100, 0), undefined);
    assert.equal(probe.observe(200, 2 * MiB), undefined);
    assert.ok(probe.observe(300, 4 * MiB));
  });
});
