/**
 * The benchmark's own arithmetic and byte counting: medians, the report's ratios and table cells,
 * and the counting proxy over real loopback sockets (what "bytes on the wire" rests on).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect, createServer, type Server } from 'node:net';
import { after, describe, it } from 'node:test';
import { parseLink } from '../../bench/lib/link.ts';
import { CountingProxy } from '../../bench/lib/proxy.ts';
import { median, renderReport, type ReportInput } from '../../bench/lib/report.ts';

describe('bench arithmetic and report', { timeout: 30_000 }, () => {
  it('takes the median of odd and even counts and of nothing', () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.ok(Number.isNaN(median([])));
  });

  it('gives ratios to the first row of a phase and escapes pipes in method names', () => {
    const measurement = (total: number, wire: number) => ({ moveSeconds: total - 1, startSeconds: 1, totalSeconds: total, wireBytes: wire, wireDetail: '' });
    const input: ReportInput = {
      command: 'npm run bench', revision: 'commit abc', ferryBuild: 'the checkout', notes: ['a note'], loadAtEnd: '1 1 1', finishedAt: 'now', complete: true, runs: 2, sizes: ['small'], images: [],
      facts: { date: 'then', nproc: 2, cpu: 'cpu', memory: '1 GiB', kernel: 'Linux', node: 'v24', dockerClient: '28', buildEngine: 'b', targetEngine: 't', tools: '', loadAtStart: '1 1 1' },
      links: [{ link: parseLink('loopback'), methods: [{ id: 'pipe', title: 'save | load', commands: [] }, { id: 'ferry', title: 'ferry push', commands: [] }] }], fanout: [],
      samples: [
        { link: 'loopback', size: 'small', phase: 'cold', method: 'pipe', run: 1, load: 1, measurement: measurement(11, 100e6) },
        { link: 'loopback', size: 'small', phase: 'cold', method: 'pipe', run: 2, load: 1, measurement: measurement(9, 100e6) },
        { link: 'loopback', size: 'small', phase: 'cold', method: 'ferry', run: 1, load: 1, measurement: measurement(6, 40e6) },
        { link: 'loopback', size: 'small', phase: 'cold', method: 'ferry', run: 2, load: 1, error: 'boom' },
      ],
    };
    const text = renderReport(input);
    const pipeRow = text.split('\n').find((line) => line.startsWith('| save \\| load |'));
    assert.ok(pipeRow, text);
    assert.match(pipeRow, /\| 9\.0 \| 1\.00× \|/);
    const ferryRow = text.split('\n').find((line) => line.startsWith('| ferry push (cold) (1 failed) |'));
    assert.ok(ferryRow, text);
    assert.match(ferryRow, /\| 5\.0 \| 0\.56× \| 1\.0 \| 6\.0 \| 0\.60× \| 40\.0 \|/);
    assert.match(text, /small cold ferry run 2: boom/);
    assert.match(text, /^- a note$/m);
  });

  it('checks the warm targets on the largest size and tells apart figures that round alike', () => {
    const warm = (move: number, start: number, wire: number) => ({ moveSeconds: move, startSeconds: start, totalSeconds: move + start, wireBytes: wire, wireDetail: '' });
    const input: ReportInput = {
      command: 'npm run bench', revision: 'commit abc', ferryBuild: 'the checkout', notes: [], loadAtEnd: '1 1 1', finishedAt: 'now', complete: true, runs: 1, sizes: ['large'], images: [],
      facts: { date: 'then', nproc: 2, cpu: 'cpu', memory: '1 GiB', kernel: 'Linux', node: 'v24', dockerClient: '28', buildEngine: 'b', targetEngine: 't', tools: '', loadAtStart: '1 1 1' },
      links: [{ link: parseLink('loopback'), methods: [{ id: 'pipe', title: 'pipe', commands: [] }, { id: 'registry', title: 'registry', commands: [] }, { id: 'ferry', title: 'ferry push', commands: [] }] }], fanout: [],
      samples: [
        { link: 'loopback', size: 'large', phase: 'cold', method: 'pipe', run: 1, load: 1, measurement: warm(17, 1, 1e9) },
        { link: 'loopback', size: 'large', phase: 'cold', method: 'ferry', run: 1, load: 1, measurement: warm(12, 1, 1e9) },
        { link: 'loopback', size: 'large', phase: 'warm', method: 'registry', run: 1, load: 1, measurement: { ...warm(0.61, 0.1, 10e6), oneHopBytes: 5e6 } },
        { link: 'loopback', size: 'large', phase: 'warm', method: 'ferry', run: 1, load: 1, measurement: warm(0.54, 0.1, 5.2e6) },
      ],
    };
    const text = renderReport(input);
    assert.match(text, /warm bytes: ferry 5\.2 MB vs the 5\.0 MB .* = 1\.04× \(target ≤ 1\.1×\): met\./);
    assert.match(text, /warm time, image on target: ferry 0\.5 s vs the registry's push \+ pull 0\.6 s: met\./);
    assert.match(text, /warm time, strict: ferry's whole push 0\.64 s vs the registry's push \+ pull alone 0\.61 s: \*\*not met\*\*\./);
  });
});

describe('CountingProxy', { timeout: 30_000 }, () => {
  let echo: Server | undefined;
  let proxy: CountingProxy | undefined;
  after(async () => {
    await proxy?.close();
    await new Promise((resolve) => (echo ? echo.close(resolve) : resolve(undefined)));
  });

  it('counts every byte each way through a real loopback connection', async () => {
    // The server answers each byte it reads with two, so the two directions differ.
    echo = createServer({ allowHalfOpen: true }, (socket) => {
      socket.on('data', (chunk: Buffer) => socket.write(Buffer.concat([chunk, chunk])));
      socket.on('end', () => socket.end());
    });
    await new Promise<void>((resolve) => echo?.listen(0, '127.0.0.1', resolve));
    const address = echo.address();
    assert.ok(address && typeof address !== 'string');
    proxy = await CountingProxy.start(address.port);
    const payload = randomBytes(3 * 1024 * 1024 + 17);
    const client = connect(proxy.port, '127.0.0.1');
    let received = 0;
    client.on('data', (chunk: Buffer) => { received += chunk.length; });
    const closed = new Promise((resolve) => client.once('close', resolve));
    client.end(payload);
    await closed;
    assert.equal(received, payload.length * 2);
    assert.deepEqual(proxy.take(), { up: payload.length, down: payload.length * 2 });
    assert.deepEqual(proxy.take(), { up: 0, down: 0 });
  });
});
