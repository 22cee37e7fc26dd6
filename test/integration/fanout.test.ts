/**
 * `ferry push` to several receivers at once, against real `ferry receiver` processes and real
 * Docker engines: the package is built once and delivered to every target, each under its own
 * deployment id; a target that stays down opens its breaker, fails with a typed error, and the
 * others still complete. Two live targets: one receiver on the stack's target engine and one on
 * its build engine, so the same --name lands on two different engines (a third live engine would
 * mean a private dockerd per test run, heavy on this machine's two cores).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { NullSink } from '@ferry/events';
import { DEFAULT_BACKOFF, pushMany, type Clock } from '@ferry/sender';
import { buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = { keyId: `fan-${run}`, secret: randomBytes(24).toString('base64url') };
const repo = `ferry-fan-${run}`;
const engines = [createDockerClient(s.targetDockerHost), createDockerClient(s.buildDockerHost)];
const services: string[] = [];
const receivers: ReceiverProcess[] = [];
const senderEnv = { DOCKER_HOST: s.buildDockerHost, FERRY_KEY_ID: key.keyId, FERRY_KEY: key.secret };

interface Target { url: string; host?: string; deploymentId: string; ok: boolean; state: string; attempts: number; bytes: { sent: number }; error?: { code: string; message: string } }
interface Fanout { ok: boolean; bytes: { image: number; package: number }; targets: Target[] }

function serviceName(label: string): string {
  const name = `${label}-${run}`;
  services.push(name);
  return name;
}

describe('fan-out push', { timeout: 240_000 }, () => {
  let a: ReceiverProcess;
  let b: ReceiverProcess;

  before(async () => {
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    [a, b] = await Promise.all([s.targetDockerHost, s.buildDockerHost].map((dockerHost, i) => startReceiverProcess({
      DOCKER_HOST: dockerHost, FERRY_KEYS: `${key.keyId}:${key.secret}`, FERRY_HOST_ID: `fan${i}-${run}`,
    }))) as [ReceiverProcess, ReceiverProcess];
    receivers.push(a, b);
  });

  after(async () => {
    for (const rx of receivers) await rx.stop().catch(() => undefined);
    for (const engine of engines) {
      for (const name of services) {
        for (const suffix of ['', '.ferry-previous', '.ferry-next', '.ferry-parked']) {
          await engine.getContainer(`${name}${suffix}`).remove({ force: true }).catch(() => undefined);
        }
      }
    }
    await engines[0]?.getImage(`${repo}:1`).remove({ force: true }).catch(() => undefined);
    await engines[1]?.getImage(`${repo}:1`).remove({ force: true }).catch(() => undefined);
  });

  test('one package, built once, is deployed on every target under its own deployment id', async () => {
    const spool = await mkdtemp(join(tmpdir(), 'ferry-fan-spool-'));
    // The sender spools its package in TMPDIR: every file it creates there is seen.
    const created = new Set<string>();
    const watcher = watch(spool, (_event, name) => { if (name) created.add(name); });
    try {
      const service = serviceName('both');
      const result = await runFerry(['push', `${repo}:1`, '--to', a.url, '--to', b.url, '--name', service, '--network', 'none', '--json'], { ...senderEnv, TMPDIR: spool });
      assert.equal(result.code, 0, result.stdout + result.stderr);
      const json = JSON.parse(result.stdout) as Fanout;
      assert.equal(json.ok, true);
      assert.deepEqual(json.targets.map((t) => [t.url, t.host, t.state]), [[a.url, `fan0-${run}`, 'COMPLETED'], [b.url, `fan1-${run}`, 'COMPLETED']]);
      assert.notEqual(json.targets[0]?.deploymentId, json.targets[1]?.deploymentId);
      assert.ok(json.bytes.image > 0 && json.bytes.package > 0);
      for (const t of json.targets) assert.equal(t.bytes.sent, json.bytes.package, 'each target got the package exactly once');
      assert.deepEqual([...created].filter((name) => name.startsWith('ferry-')).length, 1, [...created].join(', '));
      for (const engine of engines) {
        const info = await engine.getContainer(service).inspect();
        assert.equal(info.State.Running, true);
      }
    } finally {
      watcher.close();
      await rm(spool, { recursive: true, force: true });
    }
  });

  test('a target that stays down opens its breaker; the others complete and the exit code names it', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const service = serviceName('down');
    const result = await runFerry(['push', `${repo}:1`, '--to', a.url, '--to', dead, '--to', b.url, '--name', service, '--network', 'none'], senderEnv);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const lines = result.stdout.split('\n');
    assert.ok(lines.some((l) => l.includes(`✔ fan0-${run}`) && l.includes('COMPLETED')), result.stdout);
    assert.ok(lines.some((l) => l.includes(`✔ fan1-${run}`) && l.includes('COMPLETED')), result.stdout);
    const failed = lines.find((l) => l.startsWith('  failed: '));
    assert.ok(failed?.includes(dead) && failed.includes('FERRY_ERR_RECEIVER_CIRCUIT_OPEN'), result.stdout);
    // The breaker ended the schedule early: fewer attempts than the default 8.
    assert.match(result.stdout, new RegExp(`${dead.replace(/[.:/]/g, '\\$&')}, deployment [0-9a-f-]+, [2-7] attempts`));
    for (const engine of engines) assert.equal((await engine.getContainer(service).inspect()).State.Running, true);
  });

  test('a receiver SIGKILLed mid-transfer and restarted on its data dir: the push resumes from its offset', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-fan-kill-'));
    const listen = `127.0.0.1:${await freePort()}`;
    const env = { DOCKER_HOST: s.targetDockerHost, FERRY_KEYS: `${key.keyId}:${key.secret}`, FERRY_HOST_ID: `fankill-${run}`, FERRY_DATA_DIR: dataDir, FERRY_LISTEN: listen };
    const first = await startReceiverProcess(env);
    const stopped: ReceiverProcess[] = [];
    let restarted: Promise<void> | undefined;
    // The retry pause lasts until the receiver is back: the schedule itself is test/unit/retry.test.ts's.
    const clock: Clock = {
      random: () => 0.5,
      sleep: async (ms) => { await restarted; await new Promise((r) => setTimeout(r, Math.min(ms, 250))); },
    };
    const service = serviceName('kill');
    const images = new ImageStore(engines[1] ?? createDockerClient(s.buildDockerHost));
    try {
      let size = 0;
      const result = await pushMany({
        image: `${repo}:1`, targets: [first.url], compression: 'none', resumableThreshold: 1, partBytes: 64 * 1024,
        service: { name: service, network: 'none' }, policy: DEFAULT_BACKOFF,
      }, {
        images, events: new NullSink(), credentials: key, source: 'ferry://sender/test', clock,
        onStage: (stage, { bytes }) => { if (stage === 'transfer') size = bytes ?? 0; },
        onProgress: (_url, position) => {
          if (restarted || position < size / 2) return;
          // Killed at once, mid-PATCH, then started again on the same data dir and port.
          first.child.kill('SIGKILL');
          restarted = new Promise((r) => first.child.once('exit', r))
            .then(() => startReceiverProcess(env))
            .then((second) => { stopped.push(second); });
        },
      });
      assert.ok(restarted, 'the receiver was killed mid-transfer');
      const target = result.targets[0];
      assert.equal(target?.state, 'COMPLETED', JSON.stringify(target));
      assert.ok(target.attempts >= 2, JSON.stringify(target));
      assert.ok(target.bytes.sent >= result.bytes.package, JSON.stringify(result));
      assert.ok(target.bytes.sent < 1.2 * result.bytes.package, `resumed, not started over: ${target.bytes.sent} of ${result.bytes.package}`);
      assert.equal((await engines[0]?.getContainer(service).inspect())?.State.Running, true);
    } finally {
      // ReceiverProcess.stop() waits for an exit that a SIGKILLed child already had.
      if (first.child.exitCode === null && first.child.signalCode === null) stopped.push(first);
      await Promise.all(stopped.map((rx) => rx.stop().catch(() => undefined)));
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
