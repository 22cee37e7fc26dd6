/**
 * The sender service's job logic (services/sender/src/service/jobs.ts, store.ts) with a stand-in
 * runner: one job at a time per service, idempotent ids, durable records, and jobs cut off by a
 * restart answered as failed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import request from 'supertest';
import { MemoryNonceStore, RequestVerifier, TrustStore, signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { createLogger } from '@ferry/log';
import { isFerryError } from '@ferry/protocol';
import type { DeploymentDocument, DeploymentOutcome } from '@ferry/sender';
import { DeploymentJobs, JobStore, createApp as createSenderApp, jobView, type JobRecord, type Runner } from '@ferry/sender/service';
import { testKey, trustDocument, type TestKey } from '../helpers/keys.ts';

const log = createLogger({ level: 'silent' });
const dirs: string[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-jobs-'));
  dirs.push(dir);
  return dir;
}

function doc(id: string | undefined, ...services: string[]): DeploymentDocument {
  return {
    version: 1, ...(id ? { id } : {}),
    services: Object.fromEntries(services.map((name) => [name, { image: `${name}:1`, targets: ['http://h:7701'], env: { SECRET: 's3cret' }, network: 'bridge' as const }])),
  };
}

/** A runner whose runs finish when the test says so, recording the order they started in. */
function controlledRunner(): { run: Runner; started: string[]; finish: (id: string, ok?: boolean) => void } {
  const started: string[] = [];
  const pending = new Map<string, (ok: boolean) => void>();
  const run: Runner = async (document, _deps, options) => {
    const id = options.runId ?? '';
    started.push(id);
    const ok = await new Promise<boolean>((resolve) => pending.set(id, resolve));
    const outcome: DeploymentOutcome = {
      runId: id, ok,
      services: Object.entries(document.services).map(([service, entry]) => ({
        service, image: entry.image, state: ok ? 'succeeded' : 'failed', ok, targets: [{ url: 'http://h:7701', state: ok ? 'COMPLETED' : 'FAILED', ok, deploymentId: `${id}-t` }],
      })),
    };
    return outcome;
  };
  return {
    run, started,
    finish: (id, ok = true) => {
      const resolve = pending.get(id);
      assert.ok(resolve, `${id} is not running`);
      resolve(ok);
    },
  };
}

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 5));
}

after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe('sender service jobs', () => {
  test('jobs naming the same service run one after another; others run at once', async () => {
    const runner = controlledRunner();
    const jobs = new DeploymentJobs({ store: await JobStore.open(await tempDir(), log), run: runner.run, log });
    await jobs.submit(doc('a', 'web', 'db'), 'ci');
    await jobs.submit(doc('b', 'web'), 'ci');
    await jobs.submit(doc('c', 'cache'), 'ci');
    await until(() => runner.started.length === 2);
    assert.deepEqual(runner.started, ['a', 'c']);
    assert.equal(jobs.get('b')?.state, 'queued');
    runner.finish('a');
    await until(() => runner.started.length === 3);
    assert.equal(runner.started[2], 'b');
    assert.equal(jobs.get('a')?.state, 'succeeded');
    runner.finish('b', false);
    runner.finish('c');
    await jobs.idle();
    assert.deepEqual(['a', 'b', 'c'].map((id) => jobs.get(id)?.state), ['succeeded', 'failed', 'succeeded']);
  });

  test('an id given twice answers the same job; another document under it is a conflict', async () => {
    const runner = controlledRunner();
    const jobs = new DeploymentJobs({ store: await JobStore.open(await tempDir(), log), run: runner.run, log });
    const first = await jobs.submit(doc('same', 'web'), 'ci');
    const second = await jobs.submit(doc('same', 'web'), 'ci');
    assert.deepEqual([first.created, second.created, second.job.id], [true, false, 'same']);
    await assert.rejects(jobs.submit(doc('same', 'api'), 'ci'), (err) => isFerryError(err, 'FERRY_ERR_DEPLOYMENT_CONFLICT'));
    const generated = await jobs.submit(doc(undefined, 'api'), 'ci');
    assert.match(generated.job.id, /^[0-9a-f-]{36}$/);
    await until(() => runner.started.length === 2);
    runner.finish('same');
    runner.finish(generated.job.id);
    await jobs.idle();
  });

  test('records are on disk: a new store reads them; jobs left queued or running are failed by recover()', async () => {
    const dir = await tempDir();
    const runner = controlledRunner();
    const jobs = new DeploymentJobs({ store: await JobStore.open(dir, log), run: runner.run, log });
    await jobs.submit(doc('done', 'web'), 'ci');
    await until(() => runner.started.length === 1);
    runner.finish('done');
    await jobs.idle();
    await jobs.submit(doc('cut', 'web'), 'ci');
    await jobs.submit(doc('waiting', 'web'), 'ci');
    await until(() => runner.started.length === 2);
    // A write cut short by the crash leaves a temporary file, which the next open removes.
    await writeFile(join(dir, 'cut.json.tmp-0badf00d'), '{"torn');
    const store = await JobStore.open(dir, log);
    assert.deepEqual((await readdir(dir)).sort(), ['cut.json', 'done.json', 'waiting.json']);
    const restarted = new DeploymentJobs({ store, run: controlledRunner().run, log });
    assert.equal(await restarted.recover(), 2);
    assert.equal(restarted.get('done')?.state, 'succeeded');
    for (const id of ['cut', 'waiting']) {
      const job = restarted.get(id) as JobRecord;
      assert.equal(job.state, 'failed');
      assert.equal(job.error?.code, 'FERRY_ERR_SENDER_INTERRUPTED');
      assert.deepEqual(job.services.map((s) => s.state), ['failed']);
    }
    const reread = await JobStore.open(dir, log);
    assert.equal(reread.get('cut')?.state, 'failed', 'recover() made it durable');
  });

  test('a runner that throws fails the job with its code; the view never shows the document', async () => {
    const jobs = new DeploymentJobs({
      store: await JobStore.open(await tempDir(), log), log,
      run: () => Promise.reject(new Error('boom')),
    });
    await jobs.submit(doc('boom', 'web'), 'ci');
    await jobs.idle();
    const job = jobs.get('boom') as JobRecord;
    assert.deepEqual([job.state, job.error?.code], ['failed', 'FERRY_ERR_INTERNAL']);
    const view = JSON.stringify(jobView(job));
    assert.ok(!view.includes('s3cret') && !view.includes('document'), view);
  });
});

describe('sender service grants', () => {
  const webOnly = testKey('web-only');
  const edgeOnly = testKey('edge-only');
  const everything = testKey('everything');
  const reader = testKey('reader');
  const trust = new TrustStore({
    data: trustDocument([
      { key: webOnly, services: ['web'] }, { key: edgeOnly, hosts: ['edge-1'] }, { key: everything }, { key: reader, role: 'read' },
    ]),
  });

  async function post(key: TestKey, document: DeploymentDocument): Promise<{ status: number; code?: string; service?: string }> {
    const jobs = new DeploymentJobs({ store: await JobStore.open(await tempDir(), log), run: () => new Promise(() => undefined), log });
    const app = createSenderApp({
      logger: log, jobs, hostId: 'sender-1', version: 'test',
      verifier: new RequestVerifier({ trust, nonces: new MemoryNonceStore(), audience: 'sender-1', startedAt: 0 }),
    });
    const body = JSON.stringify(document);
    const headers = signRequest({ method: 'POST', path: '/v1/deployments', contentDigest: digestOf(body), audience: 'sender-1', keyId: key.keyId, privateKey: key.privateKey });
    const answer = await request(app).post('/v1/deployments').set(headers).set('content-type', 'application/json').send(body);
    const error = (answer.body as { error?: { code: string; details?: { service?: string } } }).error;
    return { status: answer.status, ...(error ? { code: error.code, ...(error.details?.service ? { service: error.details.service } : {}) } : {}) };
  }

  test('a caller\'s grants must cover every service of the document, on every host', async () => {
    assert.deepEqual(await post(webOnly, doc('w1', 'web', 'db')), { status: 403, code: 'FERRY_ERR_NOT_GRANTED', service: 'db' });
    assert.deepEqual(await post(webOnly, doc('w2', 'web')), { status: 202 });
    // A grant for one host cannot reach others through the service, which deploys with its own key.
    assert.deepEqual(await post(edgeOnly, doc('e1', 'web')), { status: 403, code: 'FERRY_ERR_NOT_GRANTED', service: 'web' });
    assert.deepEqual(await post(reader, doc('r1', 'web')), { status: 403, code: 'FERRY_ERR_NOT_GRANTED' });
    assert.deepEqual(await post(everything, doc('a1', 'web', 'db')), { status: 202 });
  });
});
