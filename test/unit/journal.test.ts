/** The deployment journal's file format on a real temporary directory: reopen, torn lines, unfinished records. */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { appendFile, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { createLogger } from '@ferry/log';
import type { DeploymentResult } from '@ferry/protocol';
import { Journal, type DeploymentHeader } from '../../services/receiver/src/journal/journal.ts';

const log = createLogger({ level: 'silent' });
const dirs: string[] = [];

async function freshDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-journal-'));
  dirs.push(dir);
  return dir;
}

function header(service = 'web'): DeploymentHeader {
  return {
    deploymentId: randomUUID(), kind: 'deploy', host: 'h1', service, image: 'app:1', imageId: `sha256:${'a'.repeat(64)}`,
    configHash: `sha256:${'b'.repeat(64)}`, envNames: ['TOKEN'], bytes: 10,
  };
}

function resultOf(h: DeploymentHeader, state: DeploymentResult['state']): DeploymentResult {
  return { deploymentId: h.deploymentId, host: h.host, service: h.service, image: h.image, imageId: h.imageId, state, bytes: h.bytes, timings: { total: 5 } };
}

describe('deployment journal', () => {
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  test('a finished record reads back the same after reopening, states in order', async () => {
    const dir = await freshDir();
    const journal = await Journal.open(dir, log);
    const h = header();
    const entry = await journal.begin(h, [{ state: 'RECEIVING', at: '2026-01-01T00:00:00.000Z' }, { state: 'VERIFYING', at: '2026-01-01T00:00:01.000Z' }]);
    await entry.enter('LOADING', { imagePreexisting: false });
    await entry.note({ previousImageId: `sha256:${'c'.repeat(64)}` });
    await entry.enter('DEPLOYING');
    await entry.note({ containerId: 'new', previousContainerId: 'old' });
    await entry.enter('VALIDATING');
    await entry.finish(resultOf(h, 'COMPLETED'));

    const reopened = await Journal.open(dir, log);
    const record = reopened.get(h.deploymentId);
    assert.deepEqual(record, journal.get(h.deploymentId));
    assert.equal(record?.state, 'COMPLETED');
    assert.deepEqual(record?.states.map((s) => s.state), ['RECEIVING', 'VERIFYING', 'LOADING', 'DEPLOYING', 'VALIDATING', 'COMPLETED']);
    assert.equal(record?.previousContainerId, 'old');
    assert.equal(record?.containerId, 'new');
    assert.deepEqual(record?.result, resultOf(h, 'COMPLETED'));
    assert.deepEqual(reopened.unfinished(), []);
  });

  test('a torn last line is dropped; the unfinished record resumes and finishes', async () => {
    const dir = await freshDir();
    const journal = await Journal.open(dir, log);
    const h = header();
    const entry = await journal.begin(h, []);
    await entry.enter('LOADING');
    await entry.enter('DEPLOYING');
    await entry.close();
    await appendFile(join(dir, `${h.deploymentId}.jsonl`), '{"type":"state","at":"2026-01-01T00:00:0');

    const reopened = await Journal.open(dir, log);
    const [pending] = reopened.unfinished();
    assert.equal(pending?.deploymentId, h.deploymentId);
    assert.equal(pending?.state, 'DEPLOYING');
    const resumed = await reopened.resume(h.deploymentId);
    await resumed.enter('ROLLING_BACK');
    await resumed.finish(resultOf(h, 'ROLLED_BACK'));

    const again = await Journal.open(dir, log);
    assert.equal(again.get(h.deploymentId)?.state, 'ROLLED_BACK');
    assert.deepEqual(again.get(h.deploymentId)?.states.map((s) => s.state), ['PENDING', 'LOADING', 'DEPLOYING', 'ROLLING_BACK', 'ROLLED_BACK']);
    assert.deepEqual(again.unfinished(), []);
    const text = await readFile(join(dir, `${h.deploymentId}.jsonl`), 'utf8');
    assert.ok(text.endsWith('\n'));
  });

  test('lists newest first by service, with a limit; keeps the newest 100 finished records per service', async () => {
    const dir = await freshDir();
    const journal = await Journal.open(dir, log);
    const ids: string[] = [];
    for (let i = 0; i < 102; i++) {
      const h = header('svc');
      ids.push(h.deploymentId);
      const entry = await journal.begin(h, [{ state: 'VERIFYING', at: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString() }]);
      await entry.finish(resultOf(h, 'COMPLETED'));
    }
    const other = header('other');
    await (await journal.begin(other, [])).finish(resultOf(other, 'FAILED'));
    assert.deepEqual(journal.list({ service: 'svc', limit: 2 }).map((r) => r.deploymentId), [ids[101], ids[100]]);
    assert.equal(journal.list({ service: 'svc' }).length, 100);
    assert.equal(journal.get(ids[0] ?? ''), undefined, 'the oldest were pruned');
    assert.equal((await readdir(dir)).length, 101);
    assert.equal(journal.list({ service: 'other' }).length, 1);
  });
});
