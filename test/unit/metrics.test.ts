/**
 * How events feed the receiver's metrics, and how /readyz folds its checks into one answer. Pure
 * logic: the sink under the metered one only records, and the checks are plain functions.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { createEvent, type EventSink, type FerryEvent } from '@ferry/events';
import { createReceiverMetrics, meteredSink } from '@ferry/metrics';
import { checkReadiness, natsCheck, redisCheck } from '../../services/receiver/src/readiness.ts';

class RecordingSink implements EventSink {
  readonly status = 'connected' as const;
  readonly pending = 7;
  readonly published: FerryEvent[] = [];
  publish(event: FerryEvent): void {
    this.published.push(event);
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

const base = { source: 'ferry://receiver/edge-1', host: 'edge-1', service: 'web', deploymentId: randomUUID() };

async function value(text: Promise<{ body: string }>, series: string): Promise<number | undefined> {
  const line = (await text).body.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

void describe('receiver metrics', () => {
  void it('turn a deployment\'s events into stage durations and an outcome, and pass every event on', async () => {
    const metrics = createReceiverMetrics({ defaultMetrics: false });
    const inner = new RecordingSink();
    const sink = meteredSink(inner, metrics);
    metrics.watchEvents(sink);
    const events: FerryEvent[] = [
      createEvent('package.verified', { ...base, data: { digest: `blake3:${'0'.repeat(64)}`, bytes: 10, durationMs: 1500 } }),
      createEvent('image.loaded', { ...base, data: { imageId: `sha256:${'a'.repeat(64)}`, durationMs: 250 } }),
      createEvent('container.started', { ...base, data: { containerId: 'c', durationMs: 40 } }),
      createEvent('healthcheck.passed', { ...base, data: { attempts: 2, durationMs: 900 } }),
      createEvent('deployment.completed', { ...base, data: { timings: { receive: 1500, load: 250, deploy: 40, health: 900, total: 2700 } } }),
      createEvent('deployment.failed', { ...base, data: { code: 'FERRY_ERR_HEALTHCHECK_FAILED', reason: 'x', state: 'ROLLED_BACK' } }),
      createEvent('deployment.failed', { ...base, data: { code: 'FERRY_ERR_CHECKSUM_MISMATCH', reason: 'x', state: 'FAILED' } }),
    ];
    for (const event of events) sink.publish(event);

    assert.deepEqual(inner.published, events);
    const render = metrics.render();
    assert.equal(await value(render, 'ferry_stage_duration_seconds_sum{stage="receive"}'), 1.5);
    assert.equal(await value(render, 'ferry_stage_duration_seconds_sum{stage="load"}'), 0.25);
    assert.equal(await value(render, 'ferry_stage_duration_seconds_count{stage="health"}'), 1);
    assert.equal(await value(render, 'ferry_stage_duration_seconds_sum{stage="total"}'), 2.7);
    assert.equal(await value(render, 'ferry_stage_duration_seconds_count{stage="verify"}'), undefined, 'no verify stage was timed');
    assert.equal(await value(render, 'ferry_deployments_total{outcome="completed"}'), 1);
    assert.equal(await value(render, 'ferry_deployments_total{outcome="rolled_back"}'), 1);
    assert.equal(await value(render, 'ferry_deployments_total{outcome="failed"}'), 1);
    assert.equal(await value(render, 'ferry_events_published_total'), events.length);
    assert.equal(await value(render, 'ferry_outbox_depth'), 7);
    assert.equal(await value(render, 'ferry_nats_connected'), 1);
  });

  void it('count auth rejections by code in a registry of their own', async () => {
    const one = createReceiverMetrics({ defaultMetrics: false });
    const other = createReceiverMetrics({ defaultMetrics: false });
    one.authRejections.inc({ code: 'FERRY_ERR_STALE_TIMESTAMP' });
    assert.equal(await value(one.render(), 'ferry_auth_rejections_total{code="FERRY_ERR_STALE_TIMESTAMP"}'), 1);
    assert.equal(await value(other.render(), 'ferry_auth_rejections_total{code="FERRY_ERR_STALE_TIMESTAMP"}'), undefined);
  });
});

void describe('readiness', () => {
  void it('is ready when no check is down; disabled checks do not count', async () => {
    const ready = await checkReadiness({
      docker: () => Promise.resolve({ status: 'up' }),
      redis: redisCheck({ status: () => ({ backend: 'memory', healthy: true, degraded: false, persistent: false, since: '' }) }),
    });
    assert.deepEqual(ready, { status: 'ready', checks: { docker: { status: 'up' }, redis: { status: 'disabled' } } });
  });

  void it('is degraded and names the dependency, with why, when a check fails, throws or hangs', async () => {
    const readiness = await checkReadiness({
      docker: () => Promise.reject(Object.assign(new Error('connect ENOENT'), { code: 'ENOENT' })),
      hung: () => new Promise(() => undefined),
      nats: natsCheck({ status: 'connecting', pending: 3, reconnectAttempts: 12, disconnectedSince: new Date(0) }),
      redis: redisCheck({ status: () => ({ backend: 'redis', healthy: false, degraded: true, persistent: false, since: 's', reason: 'ECONNREFUSED' }) }),
    }, 50);
    assert.equal(readiness.status, 'degraded');
    assert.deepEqual(readiness.checks.docker, { status: 'down', reason: 'ENOENT' });
    assert.deepEqual(readiness.checks.hung, { status: 'down', reason: 'timeout' });
    assert.deepEqual(readiness.checks.nats, {
      status: 'down', reason: 'not connected; reconnecting', outbox: 3, reconnectAttempts: 12, since: '1970-01-01T00:00:00.000Z',
    });
    assert.deepEqual(readiness.checks.redis, { status: 'down', reason: 'ECONNREFUSED', since: 's' });
  });
});
