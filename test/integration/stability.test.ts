/**
 * Health verdicts that cannot lie, against a real `ferry receiver` on the stack's target engine
 * with its default stability window (5 s). A FROM-scratch busybox container that exits a second
 * after it starts, restarted by its `always` policy, while a busybox httpd the test runs on
 * loopback answers its health URL: every probe passes, and the deployment still fails
 * (FERRY_ERR_UNSTABLE) with the container's restart count, exit code and last log lines in its
 * report, and the version before it serves again. A healthy container still passes.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NatsConnection } from 'nats';
import type { DeploymentFailure } from '@ferry/protocol';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import type { EventWatcher } from '../helpers/events.ts';
import { buildTestImage, freePort, runFerry, startWatchedReceiver, terminate, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { buildFromDockerfile } from '../helpers/images.ts';
import { keyEnv, testKey } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`st-${run}`);
const hostId = `st-${run}`;
const service = `st-${run}`;
const repo = `ferry-st-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };

interface JournalRecord { deploymentId: string; state: string; error?: { code: string }; failure?: DeploymentFailure }

/** The deployment id a failure report names. */
function reportedId(text: string): string {
  const id = /^ {2}deployment {2}([0-9a-f-]{36}) /m.exec(text)?.[1];
  assert.ok(id, text);
  return id;
}

describe('a deployment passes only if its container stays up after the check', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  let nc: NatsConnection;
  let watcher: EventWatcher;
  let httpd: ChildProcess | undefined;
  let www: string;
  /** Where the httpd the test runs answers: not the container under test. */
  let otherPort: number;
  /** Where the good version listens (host network). */
  let port: number;
  let good: string;

  const ferry = (args: string[]): Promise<RunResult> => runFerry(args, senderEnv);

  before(async () => {
    [otherPort, port] = [await freePort(), await freePort()];
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    // Exec form: the image has busybox and no /bin/sh. It answers nothing and dies after a second.
    await buildFromDockerfile(s.buildDockerHost, `${repo}:crash`, `FROM ${repo}:1\nENTRYPOINT ["/bin/busybox", "sh", "-c", ${JSON.stringify(
      `echo up ${run}; /bin/busybox sleep 1; echo giving up ${run}; exit 3`,
    )}]\n`);
    www = await mkdtemp(join(tmpdir(), 'ferry-st-www-'));
    await writeFile(join(www, 'healthz'), 'ok\n');
    httpd = spawn(process.env.FERRY_BUSYBOX ?? '/bin/busybox', ['httpd', '-f', '-p', `127.0.0.1:${otherPort}`, '-h', www], { stdio: 'ignore' });
    for (;;) {
      const answered = await fetch(`http://127.0.0.1:${otherPort}/healthz`).then((r) => r.ok, () => false);
      if (answered) break;
      assert.equal(httpd.exitCode, null, 'busybox httpd runs');
      await sleep(50);
    }
    // The default window, said out loud: the test helper's is shorter.
    ({ receiver, watcher, nc } = await startWatchedReceiver(hostId, key, { FERRY_STABILITY_WINDOW_MS: '5000' }));
  });

  after(async () => {
    await receiver?.stop();
    await nc?.drain();
    await terminate(httpd);
    if (www) await rm(www, { recursive: true, force: true });
    await removeService(target, service);
    await removeImages(target, [`${repo}:1`, `${repo}:crash`]);
    await removeImages(build, [`${repo}:1`, `${repo}:crash`]);
  });

  test('a healthy container passes its check and the window after it', async () => {
    // A receiver refuses what was signed before it started (the same second included): push until it takes it.
    let result: RunResult;
    for (;;) {
      result = await ferry([
        'push', `${repo}:1`, '--to', receiver.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
        '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', '100ms', '--json',
      ]);
      if (result.code === 0 || !/FERRY_ERR_STALE_TIMESTAMP|FERRY_ERR_REPLAY/.test(result.stdout)) break;
      await sleep(500);
    }
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const summary = JSON.parse(result.stdout) as { deploymentId: string; deployment: { state: string; timings: { health?: number } } };
    assert.equal(summary.deployment.state, 'COMPLETED');
    assert.ok((summary.deployment.timings.health ?? 0) >= 5000, 'the window counts in the health timing');
    await watcher.until(summary.deploymentId, 'healthcheck.passed');
    const info = await target.getContainer(service).inspect();
    assert.equal(info.State.Running, true);
    assert.equal(info.RestartCount, 0);
    good = info.Id;
  });

  test('a crash-looping container whose health URL another process answers fails, with its restarts in the report', async () => {
    assert.ok(good, 'the good version runs');
    const result = await ferry([
      'push', `${repo}:crash`, '--to', receiver.url, '--name', service, '--network', 'none', '--restart', 'always',
      '--health', `http://127.0.0.1:${otherPort}/healthz`, '--health-interval', '100ms',
    ]);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const text = result.stderr;
    assert.match(text, /^✖ Unstable: the container (crashed and was restarted \d+ times? by its restart policy|crashed and is being restarted by its restart policy) \d+ ms after its check passed \(stability window 5000 ms\); the previous version was restored \[FERRY_ERR_UNSTABLE\]$/m, text);
    assert.match(text, /^ {2}container {3}[0-9a-f]{12} exited with code 3, restarted \d+ times? by its restart policy/m, text);
    assert.match(text, new RegExp(`^ {4}giving up ${run}$`, 'm'), 'its last log lines');
    assert.match(text, /^ {2}next: the container exited with code 3: its log lines above say why/m, text);

    const id = reportedId(text);
    const status = await ferry(['status', id, '--to', receiver.url, '--json']);
    const record = JSON.parse(status.stdout) as JournalRecord;
    assert.equal(record.state, 'ROLLED_BACK');
    assert.equal(record.error?.code, 'FERRY_ERR_UNSTABLE');
    assert.equal(record.failure?.stage, 'VALIDATING');
    assert.ok((record.failure?.container?.restarts ?? 0) >= 1, JSON.stringify(record.failure));
    assert.equal(record.failure?.container?.exitCode, 3);
    assert.ok(record.failure?.health?.probes.every((p) => p.ok), 'every probe passed: another process answered them');
    assert.deepEqual(record.failure?.restored, { outcome: 'previous', containerId: good });

    const failed = await watcher.until(id, 'deployment.failed');
    assert.equal(failed.data.code, 'FERRY_ERR_UNSTABLE');
    assert.equal(failed.data.state, 'ROLLED_BACK');
    // Published in order: by deployment.failed, a healthcheck.passed would have come.
    assert.ok(watcher.for(id).some((e) => e.type === 'ferry.healthcheck.failed'));
    assert.ok(!watcher.for(id).some((e) => e.type === 'ferry.healthcheck.passed'), 'no event says it passed');

    const now = await target.getContainer(service).inspect();
    assert.equal(now.Id, good, 'the previous version runs again');
    assert.equal(now.State.Running, true);
    assert.match(await (await fetch(`http://127.0.0.1:${port}/`)).text(), new RegExp(`v1-${run}`), 'and serves');
  });
});
