/**
 * A canary's judgement (services/receiver/src/deploy/canary.ts): the proxy's counters of the new
 * upstream decide promote or roll back; too few requests never promote; a command by hand wins.
 * The proxy here is an in-memory table: the real HAProxy is in the start-first integration test.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CanarySchema, FerryError, type Route } from '@ferry/protocol';
import type { Proxy, Upstream, UpstreamCounters } from '@ferry/proxy';
import { CanaryControl, canaryCounts, canaryWeights, judgeCanary, runCanary, type CanaryEventData } from '../../services/receiver/src/deploy/canary.ts';

const canary = CanarySchema.parse({ weight: '10%', forMs: '2m', maxErrorRate: '1%', minRequests: 10 });

function counters(name: string, ok: number, fivexx: number, errors = 0): UpstreamCounters {
  return { name, responses: { '1xx': 0, '2xx': ok, '3xx': 0, '4xx': 0, '5xx': fivexx, other: 0 }, errors, current: 0, total: ok + fivexx + errors };
}

describe('canary judgement', () => {
  it('parses the file form: percentages and durations', () => {
    assert.deepEqual(canary, { weight: 10, forMs: 120_000, maxErrorRate: 1, minRequests: 10 });
    assert.throws(() => CanarySchema.parse({ weight: '100%', forMs: '1m', maxErrorRate: 1 }));
    assert.throws(() => CanarySchema.parse({ weight: '-5', forMs: '1m', maxErrorRate: 1 }));
    assert.throws(() => CanarySchema.parse({ weight: 10, forMs: 'soon', maxErrorRate: 1 }));
  });

  it('counts 5xx and connection errors over every request seen', () => {
    assert.deepEqual(canaryCounts(counters('n', 90, 8, 2)), { responses: 98, failures: 10, seen: 100, errorRate: 10 });
    assert.deepEqual(canaryCounts(undefined), { responses: 0, failures: 0, seen: 0, errorRate: 0 });
  });

  it('rolls back as soon as enough requests show too many errors', () => {
    const d = judgeCanary(canary, canaryCounts(counters('n', 8, 2)), 1000);
    assert.equal(d.decision, 'roll-back');
  });

  it('waits while the window runs, promotes at its end when the rate is within bounds', () => {
    const good = canaryCounts(counters('n', 500, 3));
    assert.equal(judgeCanary(canary, good, 60_000).decision, 'wait');
    assert.equal(judgeCanary(canary, good, 120_000).decision, 'promote');
  });

  it('never promotes a canary that saw too few requests', () => {
    const few = canaryCounts(counters('n', 3, 0));
    assert.equal(judgeCanary(canary, few, 120_000).decision, 'wait');
    assert.equal(judgeCanary(canary, few, 240_000).decision, 'roll-back');
  });

  it('splits weights out of 100', () => {
    assert.deepEqual(canaryWeights(canary), { next: 10, current: 90 });
  });

  it('refuses a command when no canary of the service runs', () => {
    assert.throws(() => new CanaryControl().command('web', 'promote'), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_NO_CANARY');
  });
});

class TableProxy implements Proxy {
  readonly upstreams = new Map<string, Upstream>();
  served = new Map<string, UpstreamCounters>();
  start(): Promise<void> { return Promise.resolve(); }
  check(): Promise<boolean> { return Promise.resolve(true); }
  setRoute(_service: string, _route: Route): Promise<void> { return Promise.resolve(); }
  setUpstream(_service: string, upstream: Upstream): Promise<void> { this.upstreams.set(upstream.name, upstream); return Promise.resolve(); }
  drain(_service: string, name: string): Promise<number> { this.upstreams.delete(name); return Promise.resolve(0); }
  removeUpstream(_service: string, name: string): Promise<void> { this.upstreams.delete(name); return Promise.resolve(); }
  counters(): Promise<UpstreamCounters[]> { return Promise.resolve([...this.served.values()]); }
  removeRoute(): Promise<void> { return Promise.resolve(); }
  routes(): Promise<never[]> { return Promise.resolve([]); }
  setCertificate(): Promise<void> { return Promise.resolve(); }
  close(): Promise<void> { return Promise.resolve(); }
}

describe('a canary run', () => {
  const fast = CanarySchema.parse({ weight: 20, forMs: 1000, maxErrorRate: 1, minRequests: 5 });
  const next = { name: 'bbbbbbbbbbbb', address: '127.0.0.1:2' };
  const current = { name: 'aaaaaaaaaaaa', address: '127.0.0.1:1' };

  async function run(proxy: TableProxy, control = new CanaryControl(), onTick?: () => void) {
    const events: Array<[string, CanaryEventData]> = [];
    let clock = 0;
    const result = await runCanary({
      proxy, control, service: 'web', canary: fast, next, current, pollMs: 250,
      emit: (type, data) => events.push([type, data]),
      sleep: (ms) => { clock += ms; onTick?.(); return Promise.resolve(); },
      now: () => clock,
    });
    return { result, events };
  }

  it('rolls back a canary answering 500 on a fifth of its requests, the old upstream getting everything again', async () => {
    const proxy = new TableProxy();
    proxy.served.set(next.name, counters(next.name, 40, 10));
    const { result, events } = await run(proxy);
    assert.equal(result.promoted, false);
    assert.equal(!result.promoted && result.error.code, 'FERRY_ERR_CANARY_FAILED');
    assert.equal(proxy.upstreams.has(next.name), false);
    assert.equal(proxy.upstreams.get(current.name)?.weight, 100);
    assert.deepEqual(events.map(([t]) => t), ['canary.started', 'canary.rolled_back']);
    assert.equal(events[1]?.[1].counters?.responses['5xx'], 10);
  });

  it('promotes a healthy canary after its window, with its counters in the event', async () => {
    const proxy = new TableProxy();
    proxy.served.set(next.name, counters(next.name, 50, 0));
    const { result, events } = await run(proxy);
    assert.equal(result.promoted, true);
    assert.equal(proxy.upstreams.get(next.name)?.weight, 100);
    assert.equal(events.at(-1)?.[0], 'canary.promoted');
    assert.equal(events.at(-1)?.[1].by, 'counters');
  });

  it('stops at an abort by hand', async () => {
    const proxy = new TableProxy();
    const control = new CanaryControl();
    const { result } = await run(proxy, control, () => { if (control.running('web')) control.command('web', 'abort'); });
    assert.equal(!result.promoted && result.error.code, 'FERRY_ERR_CANARY_ABORTED');
    assert.equal(control.running('web'), false);
  });
});
