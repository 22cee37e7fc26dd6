/**
 * The commands around a deployment, run as real `ferry` processes against a real receiver, the
 * stack's Docker engines and NATS: `ferry status` (one deployment, a service's list, an unknown
 * id), `ferry rollback` (back and forward again, nothing to roll back) and `ferry events --follow`
 * ended by SIGINT. Nothing is mocked.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { ROOT, buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`cli-${run}`);
const hostId = `cli-${run}`;
const repo = `ferry-cli-${run}`;
const service = `cli-${run}`;
const followed = `cli-follow-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
const ports = new Map<string, number>();
const imageIds = new Map<string, string>();
let receiver: ReceiverProcess;

interface Summary { deploymentId: string; deployment: { state: string } }
interface JournalRecord { deploymentId: string; kind: string; state: string; image: string; imageId: string; states: { state: string; at: string }[] }

function json<T>(result: RunResult): T {
  try {
    return JSON.parse(result.stdout) as T;
  } catch {
    throw new Error(`not JSON (exit ${result.code}): ${result.stdout}${result.stderr}`);
  }
}

/** `ferry push` of a test image that serves its variant on the service's own port. */
async function push(tag: string, name: string): Promise<Summary> {
  const port = ports.get(name) ?? await freePort();
  ports.set(name, port);
  const result = await runFerry([
    'push', `${repo}:${tag}`, '--to', receiver.url, '--name', name, '--network', 'host', '--env', `PORT=${port}`,
    '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', '100', '--json',
  ], senderEnv);
  assert.equal(result.code, 0, result.stdout + result.stderr);
  return json<Summary>(result);
}

async function page(name: string): Promise<string> {
  return (await fetch(`http://127.0.0.1:${ports.get(name)}/`)).text();
}

async function runningImage(name: string): Promise<string> {
  return (await target.getContainer(name).inspect()).Image;
}

describe('ferry status, rollback and events --follow', { timeout: 600_000 }, () => {
  before(async () => {
    imageIds.set('1', await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`));
    imageIds.set('2', await buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`));
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: hostId,
    });
    // A receiver refuses what was signed before it started (same second included): ask until it answers.
    for (;;) {
      const probe = await runFerry(['status', randomUUID(), '--to', receiver.url, '--json'], senderEnv);
      if (json<{ error?: { code?: string } }>(probe).error?.code === 'FERRY_ERR_NOT_FOUND') break;
      await new Promise((r) => setTimeout(r, 200));
    }
  });

  after(async () => {
    await receiver?.stop();
    for (const name of [service, followed]) {
      for (const container of [name, `${name}.ferry-previous`, `${name}.ferry-next`]) {
        await target.getContainer(container).remove({ force: true }).catch(() => undefined);
      }
    }
    for (const ref of [`${repo}:1`, `${repo}:2`]) {
      await target.getImage(ref).remove({ force: true }).catch(() => undefined);
      await build.getImage(ref).remove({ force: true }).catch(() => undefined);
    }
  });

  let first: Summary;
  let second: Summary;

  test('ferry status shows a deployment and lists a service\'s deployments newest first', async () => {
    first = await push('1', service);
    second = await push('2', service);

    const one = await runFerry(['status', second.deploymentId, '--to', receiver.url, '--json'], senderEnv);
    assert.equal(one.code, 0, one.stderr);
    const record = json<JournalRecord>(one);
    assert.equal(record.deploymentId, second.deploymentId);
    assert.equal(record.state, 'COMPLETED');
    assert.equal(record.image, `${repo}:2`);
    assert.equal(record.states.at(-1)?.state, 'COMPLETED');

    const text = await runFerry(['status', second.deploymentId, '--to', receiver.url], senderEnv);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /state\s+COMPLETED/);
    assert.match(text.stdout, new RegExp(`image\\s+${repo}:2`));
    assert.match(text.stdout, /VALIDATING/);

    const list = await runFerry(['status', '--to', receiver.url, '--service', service, '--json'], senderEnv);
    assert.equal(list.code, 0, list.stderr);
    const ids = json<{ deployments: JournalRecord[] }>(list).deployments.map((d) => d.deploymentId);
    assert.deepEqual(ids, [second.deploymentId, first.deploymentId]);

    const table = await runFerry(['status', '--to', receiver.url, '--service', service, '--limit', '1'], senderEnv);
    assert.equal(table.code, 0, table.stderr);
    const rows = table.stdout.trim().split('\n');
    assert.equal(rows.length, 2, table.stdout);
    assert.match(rows[0] ?? '', /^DEPLOYMENT\s+KIND\s+STATE/);
    assert.match(rows[1] ?? '', new RegExp(`^${second.deploymentId}\\s+deploy\\s+COMPLETED\\s+${repo}:2`));
  });

  test('ferry rollback brings the previous version back, and a second one rolls forward', async () => {
    assert.ok(second, 'needs the deployments of the previous test');
    const back = await runFerry(['rollback', service, '--to', receiver.url], senderEnv);
    assert.equal(back.code, 0, back.stdout + back.stderr);
    assert.match(back.stdout, new RegExp(`${service} runs ${repo}:1 again on ${hostId}`));
    assert.match(await page(service), new RegExp(`v1-${run}`));
    assert.equal(await runningImage(service), imageIds.get('1'));

    const forward = await runFerry(['rollback', service, '--to', receiver.url, '--json'], senderEnv);
    assert.equal(forward.code, 0, forward.stdout + forward.stderr);
    const answer = json<{ ok: boolean; state: string; image: string; deploymentId: string }>(forward);
    assert.equal(answer.ok, true);
    assert.equal(answer.state, 'ROLLED_BACK');
    assert.equal(answer.image, `${repo}:2`);
    assert.match(await page(service), new RegExp(`v2-${run}`));
    assert.equal(await runningImage(service), imageIds.get('2'));

    // The rollback is a journalled deployment of its own, which status shows.
    const journalled = json<JournalRecord>(await runFerry(['status', answer.deploymentId, '--to', receiver.url, '--json'], senderEnv));
    assert.equal(journalled.kind, 'rollback');
    assert.equal(journalled.state, 'ROLLED_BACK');
  });

  test('errors say what to do next and exit 1: unknown id, nothing to roll back', async () => {
    const unknown = await runFerry(['status', randomUUID(), '--to', receiver.url], senderEnv);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /FERRY_ERR_NOT_FOUND/);
    assert.match(unknown.stderr, /next: /);
    const unknownJson = await runFerry(['status', randomUUID(), '--to', receiver.url, '--json'], senderEnv);
    assert.equal(unknownJson.code, 1);
    assert.equal(json<{ ok: boolean; error: { code: string } }>(unknownJson).error.code, 'FERRY_ERR_NOT_FOUND');

    const nothing = await runFerry(['rollback', `never-${run}`, '--to', receiver.url], senderEnv);
    assert.equal(nothing.code, 1);
    assert.match(nothing.stderr, /FERRY_ERR_NOTHING_TO_ROLL_BACK/);
    assert.match(nothing.stderr, /next: .*push/);

    const usage = await runFerry(['status', '--to', receiver.url], senderEnv);
    assert.equal(usage.code, 2);
  });

  test('ferry events --follow --service prints a deployment live and ends cleanly on SIGINT', async () => {
    const child = spawn(process.execPath, [join(ROOT, 'bin/ferry.js'), 'events', '--follow', '--service', followed, '--host', hostId], {
      env: { ...process.env, FERRY_NATS_URL: s.natsReaderUrl }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const lines: string[] = [];
    const completed = new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout }).on('line', (text) => {
        lines.push(text);
        if (text.includes('deployment.completed')) resolve();
      });
      void exited.then((code) => reject(new Error(`ferry events exited early (${code}): ${stderr}`)));
    });
    try {
      const pushed = await push('1', followed);
      await completed;
      assert.ok(lines.some((l) => l.includes('deployment.completed') && l.includes(pushed.deploymentId)), lines.join('\n'));
      assert.ok(lines.every((l) => l.includes(`${hostId}/${followed}`)), `only ${followed} on ${hostId}:\n${lines.join('\n')}`);
    } finally {
      child.kill('SIGINT');
    }
    assert.equal(await exited, 0, stderr);
  });
});

describe('the services behind ferry', { timeout: 60_000 }, () => {
  test('"ferry help SERVICE" and "ferry SERVICE --help" print the service\'s own settings; an argument is a usage error', async () => {
    for (const service of ['receiver', 'sender', 'registry']) {
      const viaHelp = await runFerry(['help', service], {});
      const viaFlag = await runFerry([service, '--help'], {});
      assert.equal(viaHelp.code, 0, viaHelp.stderr);
      assert.match(viaHelp.stdout, new RegExp(`^Usage: ferry ${service}\\n`));
      assert.equal(viaHelp.stdout, viaFlag.stdout);
      const extra = await runFerry([service, 'extra'], {});
      assert.equal(extra.code, 2);
      assert.match(extra.stderr, /FERRY_ERR_USAGE/);
    }
    const general = await runFerry(['help'], {});
    for (const service of ['receiver', 'sender', 'registry']) assert.match(general.stdout, new RegExp(`^  ${service} `, 'm'));
  });
});
