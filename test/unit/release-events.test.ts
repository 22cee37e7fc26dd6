import assert from 'node:assert/strict';
import { generateKeyPairSync, verify } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  EVENT_TYPES, RELEASE_EVENT_TYPES, RELEASE_HOST, SERVICE_NAME_PATTERN, isReleaseEventType, newReleaseId, projectToken, releaseSubject,
} from '@ferry/protocol';
import {
  ReleaseEvents, createEvent, createReleaseEvent, eventSignature, isFerryEvent, keySigner, subjectOf,
  type EventSink, type FerryEvent, type PublishOptions,
} from '@ferry/events';

class RecordingSink implements EventSink {
  readonly status = 'disabled' as const;
  readonly published: { event: FerryEvent; options: PublishOptions | undefined }[] = [];
  publish(event: FerryEvent, options?: PublishOptions): void {
    this.published.push({ event, options });
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

const RELEASE = newReleaseId(new Date('2026-03-01T12:00:00Z'));

void describe('release event types', () => {
  void it('are event types, and the only ones isReleaseEventType takes', () => {
    assert.deepEqual([...RELEASE_EVENT_TYPES], [
      'release.started', 'release.phase.completed', 'release.wave.completed', 'release.paused',
      'release.completed', 'release.failed', 'release.rollback.started', 'release.rolled_back',
    ]);
    for (const type of RELEASE_EVENT_TYPES) assert.ok((EVENT_TYPES as readonly string[]).includes(type));
    for (const type of EVENT_TYPES) assert.equal(isReleaseEventType(type), type.startsWith('release.'));
  });
});

void describe('projectToken', () => {
  void it('is a service name for any project name', () => {
    for (const name of ['shop', 'My.Shop', '_hidden', '..', '', 'a'.repeat(200), 'über-app', 'x y>z*']) {
      assert.match(projectToken(name), SERVICE_NAME_PATTERN, name);
    }
    assert.equal(projectToken('shop'), 'shop');
    assert.equal(projectToken('My.Shop'), 'my-shop');
    assert.equal(projectToken('__x'), 'x');
    assert.equal(projectToken(''), 'project');
  });
});

void describe('createReleaseEvent', () => {
  void it('goes to ferry.events._release.<project>.<type> with the release in data', () => {
    const event = createReleaseEvent('release.started', {
      source: 'ferry://sender/laptop', releaseId: RELEASE, project: 'My.Shop',
      data: {
        phases: ['data', 'apps'], waves: [['edge-1'], ['edge-2', 'edge-3']],
        services: [{ name: 'db', image: 'db:1', imageId: 'sha256:aa', phase: 0, dependsOn: [], hosts: ['edge-1', 'edge-2', 'edge-3'] }],
      },
    });
    assert.equal(event.type, 'ferry.release.started');
    assert.equal(event.deploymentid, '');
    assert.equal(event.data.host, RELEASE_HOST);
    assert.equal(event.data.service, 'my-shop');
    assert.equal(event.data.releaseId, RELEASE);
    assert.equal(event.data.project, 'My.Shop');
    assert.equal(subjectOf(event), 'ferry.events._release.my-shop.release.started');
    assert.equal(subjectOf(event), releaseSubject('My.Shop', 'release.started'));
    assert.ok(isFerryEvent(JSON.parse(JSON.stringify(event))));
    assert.equal('ferrygrant' in event, false);
  });

  void it('keeps the release id and project over same-named data fields, and carries a grant', () => {
    const event = createReleaseEvent('release.paused', {
      source: 's', releaseId: RELEASE, project: 'shop', grant: 'Z3JhbnQ',
      data: { wave: 1, reason: 'continue', ...{ releaseId: 'rel-forged', project: 'other' } },
    });
    assert.equal(event.data.releaseId, RELEASE);
    assert.equal(event.data.project, 'shop');
    assert.equal(event.ferrygrant, 'Z3JhbnQ');
  });
});

void describe('deployment events of a release', () => {
  void it('carry data.release', () => {
    const event = createEvent('deployment.completed', {
      source: 'ferry://receiver/edge-1', host: 'edge-1', service: 'api', deploymentId: 'd-1',
      data: { timings: { total: 10 }, release: { id: RELEASE, phase: 1, wave: 0 } },
    });
    assert.deepEqual(event.data.release, { id: RELEASE, phase: 1, wave: 0 });
  });
});

void describe('ReleaseEvents', () => {
  void it('publishes each step signed with the given key', () => {
    const sink = new RecordingSink();
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const signer = keySigner('ops', privateKey);
    const events = new ReleaseEvents({ sink, source: 'ferry://sender/laptop', releaseId: RELEASE, project: 'shop', signer });
    const failed = events.publish('release.failed', {
      error: { code: 'FERRY_ERR_HEALTHCHECK_FAILED', message: 'api did not answer' }, phase: 1, wave: 0,
      failedService: 'api', failedHost: 'edge-1', outcomes: { 'edge-1': { db: 'healthy', api: 'failed', web: 'skipped' } }, rollback: true,
    });
    // What halted it survives the envelope, whose own service and host are the release's.
    assert.deepEqual([failed.data.failedService, failed.data.failedHost, failed.data.service, failed.data.host], ['api', 'edge-1', 'shop', '_release']);
    events.publish('release.rolled_back', { outcomes: { 'edge-1': { db: 'rolled-back', api: 'rolled-back' } }, durationMs: 900 });
    assert.equal(sink.published.length, 2);
    assert.equal(sink.published[0]?.event, failed);
    assert.equal(sink.published[0]?.options?.signer, signer);
    assert.equal(events.releaseId, RELEASE);
    // The signer makes signatures that the operator's public key verifies.
    const message = Buffer.from('m');
    assert.ok(verify(null, message, publicKey, Buffer.from(signer.sign(message), 'hex')));
  });

  void it('publishes unsigned without a signer', () => {
    const sink = new RecordingSink();
    new ReleaseEvents({ sink, source: 's', releaseId: RELEASE, project: 'shop' }).publish('release.completed', { outcomes: {}, durationMs: 1 });
    assert.deepEqual(sink.published[0]?.options, {});
    assert.equal(eventSignature(new TextEncoder().encode(JSON.stringify(sink.published[0]?.event))), undefined);
  });
});
