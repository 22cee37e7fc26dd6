/**
 * A release's plan and record (services/sender/src/release): the order a deployment document
 * gives, one release id per run, and outcomes per host per service as the services' outcomes say.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RELEASE_ID_PATTERN } from '@ferry/protocol';
import { parseDeploymentText, planRelease, type DeploymentDocument, type ServiceOutcome } from '@ferry/sender';
import { releaseRecord, targetReleaseOutcome } from '../../services/sender/src/release/record.ts';

function doc(text: string): DeploymentDocument {
  const result = parseDeploymentText(text, { baseDir: '/srv/shop' });
  assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
  return result.document;
}

const THREE = doc(`version: 1
name: shop
services:
  web: {image: web:1, targets: [http://b:7701], depends_on: {api: {condition: started}}}
  api: {image: api:1, targets: [http://a:7701, http://b:7701], depends_on: [db]}
  db: {image: db:1, targets: [http://a:7701, http://b:7701]}
`);

describe('release plan', () => {
  test('services in phase order, each with its phase and dependencies; one new id per plan', () => {
    const at = new Date('2026-12-07T18:00:00.000Z');
    const plan = planRelease(THREE, { at });
    assert.match(plan.id, RELEASE_ID_PATTERN);
    assert.ok(plan.id.startsWith('rel-20261207T180000Z-'));
    assert.notEqual(planRelease(THREE, { at }).id, plan.id);
    assert.equal(plan.project, 'shop');
    assert.equal(plan.createdAt, at.toISOString());
    assert.deepEqual(plan.phases.map((p) => p.name), ['phase-1', 'phase-2', 'phase-3']);
    assert.deepEqual(plan.services.map((s) => [s.name, s.phase, s.dependsOn]), [
      ['db', 0, []],
      ['api', 1, [{ service: 'db', condition: 'healthy' }]],
      ['web', 2, [{ service: 'api', condition: 'started' }]],
    ]);
  });

  test('--only keeps the order of what it names; an unknown name is a usage error', () => {
    const plan = planRelease(THREE, { only: ['web', 'db'], project: 'other', id: 'rel-20261207T180000Z-00000000' });
    assert.deepEqual([plan.id, plan.project], ['rel-20261207T180000Z-00000000', 'other']);
    assert.deepEqual(plan.phases, [{ name: 'phase-1', services: ['db'] }, { name: 'phase-3', services: ['web'] }]);
    assert.throws(() => planRelease(THREE, { only: ['nope'] }), { code: 'FERRY_ERR_USAGE' });
  });
});

describe('release record', () => {
  const plan = planRelease(THREE, { id: 'rel-20261207T180000Z-0000abcd' });
  const services: ServiceOutcome[] = [
    {
      service: 'db', image: 'db:1', imageId: 'sha256:d', state: 'rolled-back', ok: false, phase: 'phase-1', targets: [
        { url: 'http://a:7701', host: 'a', state: 'COMPLETED', ok: true, rollback: { deploymentId: 'x', ok: true, state: 'ROLLED_BACK' } },
        { url: 'http://b:7701', host: 'b', state: 'COMPLETED', ok: true, rollback: { deploymentId: 'y', ok: false, state: 'FAILED', error: { code: 'FERRY_ERR_NOTHING_TO_ROLL_BACK', message: 'none' } } },
      ],
    },
    {
      service: 'api', image: 'api:1', state: 'failed', ok: false, phase: 'phase-2', targets: [
        { url: 'http://a:7701', host: 'a', state: 'ROLLED_BACK', ok: false },
        { url: 'http://b:7701', state: 'FAILED', ok: false },
      ],
    },
    { service: 'web', image: 'web:1', state: 'skipped', ok: false, phase: 'phase-3', targets: [{ url: 'http://b:7701', state: 'SKIPPED', ok: false }] },
  ];

  test('outcomes by host id (a URL stands for a host not heard from), services with their hosts', () => {
    const record = releaseRecord(plan, services, 'failed', { hostOf: (url) => (url === 'http://b:7701' ? 'b' : undefined), error: { code: 'FERRY_ERR_RELEASE_HALTED', message: 'halted' } });
    assert.deepEqual(record.outcomes, {
      a: { db: 'rolled-back', api: 'failed' },
      b: { db: 'rollback-failed', api: 'failed', web: 'skipped' },
    });
    assert.deepEqual(record.waves, [['a', 'b']]);
    assert.deepEqual(record.phases, ['phase-1', 'phase-2', 'phase-3']);
    assert.deepEqual(record.services.map((s) => [s.name, s.imageId, s.phase, s.hosts]), [['db', 'sha256:d', 0, ['a', 'b']], ['api', '', 1, ['a', 'b']], ['web', '', 2, ['b']]]);
    assert.deepEqual([record.state, record.error?.code, record.project], ['failed', 'FERRY_ERR_RELEASE_HALTED', 'shop']);
    const unknown = releaseRecord(plan, services, 'failed');
    assert.deepEqual(Object.keys(unknown.outcomes), ['a', 'b', 'http://b:7701']);
  });

  test('a target waiting for its wave or phase is pending, deploying while it is sent, then as its receiver said', () => {
    const target = { url: 'http://a:7701', state: 'PENDING', ok: false };
    assert.equal(targetReleaseOutcome(target), 'pending');
    assert.equal(targetReleaseOutcome({ ...target, state: 'DELIVERING' }), 'deploying');
    assert.equal(targetReleaseOutcome({ ...target, state: 'COMPLETED', ok: true }), 'healthy');
    assert.equal(targetReleaseOutcome({ ...target, state: 'FAILED' }), 'failed', 'a build that failed fails the hosts it was for');
    assert.equal(targetReleaseOutcome({ ...target, state: 'SKIPPED' }), 'skipped');
  });
});
