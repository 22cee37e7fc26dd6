/**
 * Which release a service runs on a host before a release replaces it (release/previous.ts):
 * read from the host's journal, newest first, among the releases the host retains.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { DeploymentRecord, RetainedRelease } from '@ferry/sender';
import { newestOf, retainedOf, runningRelease } from '../../services/sender/src/release/previous.ts';

const R1 = 'rel-20261207T180000Z-00000001';
const R2 = 'rel-20261207T180100Z-00000002';
const R3 = 'rel-20261207T180200Z-00000003';

function record(kind: 'deploy' | 'rollback', state: DeploymentRecord['state'], extra: Partial<DeploymentRecord> = {}): DeploymentRecord {
  return { deploymentId: 'd', host: 'h', service: 'db', image: 'db:1', imageId: 'sha256:a', kind, state, states: [], createdAt: '', ...extra };
}
const ref = (id: string): DeploymentRecord['release'] => ({ id, phase: 0, phases: 1 });

describe('previous release of a service on a host', () => {
  const retained: RetainedRelease[] = [
    { id: R2, services: [{ service: 'db', image: 'db:2', imageId: 'sha256:b', configHash: 'c', deploymentId: 'd2', state: 'COMPLETED', at: '' }] },
    { id: R1, services: [{ service: 'db', image: 'db:1', imageId: 'sha256:a', configHash: 'c', deploymentId: 'd1', state: 'COMPLETED', at: '' }, { service: 'web', image: 'web:1', imageId: 'sha256:w', configHash: 'c', deploymentId: 'd3', state: 'COMPLETED', at: '' }] },
  ];
  const kept = retainedOf(retained, 'db');

  test('the releases retained of one service', () => {
    assert.deepEqual([...kept], [R2, R1]);
    assert.deepEqual([...retainedOf(retained, 'web')], [R1]);
    assert.deepEqual([...retainedOf(retained, 'api')], []);
  });

  test('the newest completed deployment of a retained release runs; failed ones and ones in progress run nothing new', () => {
    assert.equal(runningRelease([record('deploy', 'FAILED', { release: ref(R3) }), record('deploy', 'COMPLETED', { release: ref(R2) })], kept), R2);
    assert.equal(runningRelease([record('deploy', 'DEPLOYING', { release: ref(R3) }), record('deploy', 'ROLLED_BACK', { release: ref(R3) }), record('deploy', 'COMPLETED', { release: ref(R1) })], kept), R1);
  });

  test('a rollback to a release runs that release; a release halted and rolled back is not what runs', () => {
    assert.equal(runningRelease([record('rollback', 'ROLLED_BACK', { toRelease: R1, release: ref(R1) }), record('deploy', 'COMPLETED', { release: ref(R2) })], kept), R1);
  });

  test('what no retained release brought has no previous release: a plain push, a swap back, nothing at all', () => {
    assert.equal(runningRelease([record('deploy', 'COMPLETED'), record('deploy', 'COMPLETED', { release: ref(R2) })], kept), undefined);
    assert.equal(runningRelease([record('rollback', 'ROLLED_BACK'), record('deploy', 'COMPLETED', { release: ref(R2) })], kept), undefined);
    assert.equal(runningRelease([record('deploy', 'COMPLETED', { release: ref(R3) })], kept), undefined);
    assert.equal(runningRelease([], kept), undefined);
  });

  test('the release a release replaced is the newest its hosts ran', () => {
    assert.equal(newestOf({ a: { db: R1, web: R2 }, b: { db: R1 } }), R2);
    assert.equal(newestOf({}), undefined);
  });
});
