import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EVENT_TYPES } from '@ferry/protocol';
import {
  cloudEventType, createEvent, eventFilter, eventTypeOf, isFerryEvent, NullSink, subjectOf, type FerryEvent,
} from '@ferry/events';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const DEPLOYMENT = '6f1c2e9a-4b7d-4c1e-9a3f-0d2b5e8c7a10';

void describe('createEvent', () => {
  void it('fills the CloudEvents 1.0 attributes', () => {
    const event = createEvent('container.started', {
      source: 'ferry://receiver/edge-1',
      host: 'edge-1',
      service: 'web',
      deploymentId: DEPLOYMENT,
      data: { containerId: 'c0ffee', durationMs: 412, image: 'web:1.2.3' },
    });

    assert.equal(event.specversion, '1.0');
    assert.match(event.id, UUID_V4);
    assert.equal(event.source, 'ferry://receiver/edge-1');
    assert.equal(event.type, 'ferry.container.started');
    assert.equal(event.subject, 'web');
    assert.equal(event.datacontenttype, 'application/json');
    assert.equal(event.deploymentid, DEPLOYMENT);
    assert.equal(new Date(event.time).toISOString(), event.time);
    assert.deepEqual(event.data, {
      deploymentId: DEPLOYMENT, host: 'edge-1', service: 'web', containerId: 'c0ffee', durationMs: 412, image: 'web:1.2.3',
    });
  });

  void it('gives every event its own id', () => {
    const input = { source: 's', host: 'h', service: 'svc', deploymentId: DEPLOYMENT, data: { reason: 'probe timed out' } };
    assert.notEqual(createEvent('rollback.started', input).id, createEvent('rollback.started', input).id);
  });

  void it('lets the arguments win over same-named payload fields', () => {
    const event = createEvent('drift.detected', {
      source: 's', host: 'edge-1', service: 'web', deploymentId: DEPLOYMENT,
      data: { host: 'elsewhere', service: 'other', deploymentId: 'forged' },
    });
    assert.equal(event.data.host, 'edge-1');
    assert.equal(event.data.service, 'web');
    assert.equal(event.data.deploymentId, DEPLOYMENT);
  });

  void it('survives a JSON round trip as a recognisable event', () => {
    const event = createEvent('deployment.failed', {
      source: 'ferry://receiver/edge-1', host: 'edge-1', service: 'web', deploymentId: DEPLOYMENT,
      data: { code: 'FERRY_ERR_HEALTHCHECK_FAILED', reason: 'HTTP 500', state: 'ROLLED_BACK', logs: ['boom'] },
    });
    const decoded: unknown = JSON.parse(JSON.stringify(event));
    assert.ok(isFerryEvent(decoded));
    assert.deepEqual(decoded, event);
  });
});

void describe('subjectOf', () => {
  void it('is ferry.events.<host>.<service>.<type>', () => {
    const event = createEvent('image.loaded', {
      source: 's', host: 'edge-1', service: 'web', deploymentId: DEPLOYMENT, data: { imageId: 'sha256:ab', durationMs: 5 },
    });
    assert.equal(subjectOf(event), 'ferry.events.edge-1.web.image.loaded');
  });

  void it('sanitises dots and wildcards in host and service into single tokens', () => {
    const event = createEvent('host.registered', {
      source: 's', host: 'edge-1.example.com', service: 'we*b >x', deploymentId: DEPLOYMENT, data: {},
    });
    assert.equal(subjectOf(event), 'ferry.events.edge-1_example_com.we_b__x.host.registered');
  });

  void it('takes host and service from the payload', () => {
    const event = createEvent('host.lost', { source: 's', host: 'a', service: 'b', deploymentId: DEPLOYMENT, data: {} });
    const moved = { ...event, subject: 'ignored', data: { ...event.data, host: 'c', service: 'd' } };
    assert.equal(subjectOf(moved), 'ferry.events.c.d.host.lost');
  });

  void it('refuses an event whose type is not a Ferry event type', () => {
    const event = createEvent('host.lost', { source: 's', host: 'a', service: 'b', deploymentId: DEPLOYMENT, data: {} });
    assert.throws(() => subjectOf({ ...event, type: 'ferry.host.exploded' } as unknown as FerryEvent), TypeError);
  });
});

void describe('type mapping', () => {
  void it('maps every event type to ferry.<type> and back', () => {
    for (const type of EVENT_TYPES) {
      assert.equal(cloudEventType(type), `ferry.${type}`);
      assert.equal(eventTypeOf(cloudEventType(type)), type);
    }
  });

  void it('rejects CloudEvents types that are not Ferry event types', () => {
    assert.equal(eventTypeOf('build.started'), undefined);
    assert.equal(eventTypeOf('ferry.build.exploded'), undefined);
    assert.equal(eventTypeOf('com.example.build.started'), undefined);
  });

  void it('narrows data by type', () => {
    const event: FerryEvent = createEvent('healthcheck.passed', {
      source: 's', host: 'h', service: 'svc', deploymentId: DEPLOYMENT, data: { attempts: 3, durationMs: 90 },
    });
    // Compiles only because checking `type` narrows `data` to HealthcheckPassedData.
    if (event.type === 'ferry.healthcheck.passed') assert.equal(event.data.attempts, 3);
    else assert.fail('type was not preserved');
  });
});

void describe('isFerryEvent', () => {
  void it('rejects what is not an event', () => {
    assert.equal(isFerryEvent(null), false);
    assert.equal(isFerryEvent({ specversion: '1.0', id: 'x', type: 'ferry.host.lost', deploymentid: 'd' }), false);
    assert.equal(isFerryEvent({ specversion: '0.3', id: 'x', type: 'ferry.host.lost', deploymentid: 'd', data: { host: 'h', service: 's' } }), false);
  });
});

void describe('eventFilter', () => {
  void it('reads the whole stream without host and service', () => {
    assert.equal(eventFilter(), undefined);
  });

  void it('uses a wildcard for whichever of host and service is missing', () => {
    assert.equal(eventFilter('edge-1'), 'ferry.events.edge-1.*.>');
    assert.equal(eventFilter(undefined, 'web'), 'ferry.events.*.web.>');
    assert.equal(eventFilter('edge.1', 'web'), 'ferry.events.edge_1.web.>');
  });
});

void describe('NullSink', () => {
  void it('is disabled and accepts events without a connection', async () => {
    const sink = new NullSink();
    assert.equal(sink.status, 'disabled');
    sink.publish(createEvent('host.lost', { source: 's', host: 'h', service: 'svc', deploymentId: DEPLOYMENT, data: {} }));
    await sink.flush();
    await sink.close();
    await sink.close();
  });
});
