/** The compression a push chooses for its link, from measurements given here (the link is not needed). */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { decideFromMeasure, sampleZstd, type LinkMeasure } from '@ferry/sender';

const GB = 1e9;
/** zstd on a typical image: faster levels pack less. */
const samples: LinkMeasure['samples'] = [
  { level: 1, ratio: 0.45, bytesPerSecond: 400e6 },
  { level: 3, ratio: 0.4, bytesPerSecond: 200e6 },
  { level: 9, ratio: 0.35, bytesPerSecond: 40e6 },
];
const measure = (over: Partial<LinkMeasure>): LinkMeasure => ({
  linkBytesPerSecond: 1e6, linkBound: true, remainingBytes: GB - 8e6, totalBytes: GB, sentBytes: 8e6, samples, ...over,
});

describe('compression chosen for the link', () => {
  it('a slow link (1 MB/s) that sets the pace: 1 GB is not sent uncompressed; the densest level that keeps up wins', () => {
    const d = decideFromMeasure(measure({}));
    assert.equal(d.restart, true);
    assert.deepEqual([d.compression, d.level, d.measured], ['zstd', 9, true]);
    assert.ok(d.estimates.chosen < d.estimates.current / 2, JSON.stringify(d.estimates));
    assert.match(d.reason, /1\.0 MB\/s.*zstd 9/);
  });

  it('a middling link (50 MB/s): zstd 3, as level 9 could not keep up with the link', () => {
    const d = decideFromMeasure(measure({ linkBytesPerSecond: 50e6 }));
    assert.deepEqual([d.restart, d.compression, d.level], [true, 'zstd', 3]);
  });

  it('a fast link (1 GB/s): compressing would cost more than it saves; stays uncompressed', () => {
    const d = decideFromMeasure(measure({ linkBytesPerSecond: GB }));
    assert.deepEqual([d.restart, d.compression, d.level], [false, 'none', undefined]);
  });

  it('a link that waited on the export is not the bottleneck: uncompressed stays', () => {
    const d = decideFromMeasure(measure({ linkBound: false }));
    assert.deepEqual([d.restart, d.compression], [false, 'none']);
    assert.match(d.reason, /waited on the export/);
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

  it('zstd is tried on a sample: zeros pack to almost nothing, random bytes not at all', () => {
    const zeros = sampleZstd(Buffer.alloc(1024 * 1024));
    const noise = sampleZstd(randomBytes(1024 * 1024));
    assert.deepEqual(zeros.map((s) => s.level), [1, 3, 9]);
    for (const s of zeros) assert.ok(s.ratio < 0.01 && s.bytesPerSecond > 0, JSON.stringify(s));
    for (const s of noise) assert.ok(s.ratio > 0.99, JSON.stringify(s));
    assert.deepEqual(sampleZstd(Buffer.alloc(0)), []);
  });
});
