/**
 * `ferry push` to several receivers at once, against real `ferry receiver` processes and real
 * Docker engines: three targets on three engines (the stack's target engine and two private
 * dockerds started here, one with a bridge of its own so ports really publish). The package is
 * built once — the bytes read from `docker save` are one archive's — and delivered to every
 * target under its own deployment id; a receiver SIGKILLed mid-transfer is resumed, not started
 * over; a target that stays down opens its breaker and the others still complete. The container
 * flags of `ferry push` are checked on the engine that runs the container.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type Dockerode from 'dockerode';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { NullSink } from '@ferry/events';
import { FerryError } from '@ferry/protocol';
import { DEFAULT_BACKOFF, planStoreArchive, pushMany, streamStoreArchive, uploadOneShot, type Clock } from '@ferry/sender';
import { removeImages } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { buildTestImage, capture, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`fan-${run}`);
const repo = `ferry-fan-${run}`;
const build = dockerodeFor(s.buildDockerHost);
const services: string[] = [];
const receivers: ReceiverProcess[] = [];
const engines: PrivateDockerd[] = [];
const volumes: { docker: Dockerode; name: string }[] = [];
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };

interface Target { url: string; host?: string; deploymentId: string; ok: boolean; state: string; attempts: number; bytes: { sent: number }; error?: { code: string; message: string } }
interface Fanout {
  ok: boolean; bytes: { image: number; package: number }; exportedBy: string; targets: Target[];
  compressionChoice: { compression: string; measured: boolean; reason: string };
}

function serviceName(label: string): string {
  const name = `${label}-${run}`;
  services.push(name);
  return name;
}

async function countBytes(stream: NodeJS.ReadableStream): Promise<number> {
  let bytes = 0;
  for await (const chunk of stream) bytes += (chunk as Buffer).length;
  return bytes;
}

/** An image whose bottom layer is 16 MiB of this call's random bytes: no engine holds any of its layers. */
async function buildRandomImage(tag: string): Promise<void> {
  const ctx = await mkdtemp(join(tmpdir(), 'ferry-fan-rnd-'));
  try {
    await writeFile(join(ctx, 'blob'), randomBytes(16 * 1024 * 1024));
    await writeFile(join(ctx, 'busybox'), await readFile('/bin/busybox'), { mode: 0o755 });
    await writeFile(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY blob /blob\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox", "sleep", "1000000"]\n');
    const built = await capture('docker', ['-H', s.buildDockerHost, 'build', '-q', '-t', `${repo}:${tag}`, ctx], { ...process.env, DOCKER_BUILDKIT: '0' });
    assert.equal(built.code, 0, built.stderr);
  } finally {
    await rm(ctx, { recursive: true, force: true });
  }
}

describe('fan-out push to three engines', { timeout: 420_000 }, () => {
  /** One receiver per engine: [stack target, private with a bridge, private without]. */
  let rx: [ReceiverProcess, ReceiverProcess, ReceiverProcess];
  let docker: [Dockerode, Dockerode, Dockerode];

  before(async () => {
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    engines.push(...await Promise.all([PrivateDockerd.start({ bridge: true }), PrivateDockerd.start()]));
    const hosts = [s.targetDockerHost, ...engines.map((e) => e.host)];
    docker = hosts.map((h) => dockerodeFor(h)) as typeof docker;
    rx = await Promise.all(hosts.map((dockerHost, i) => startReceiverProcess({
      DOCKER_HOST: dockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `fan${i}-${run}`,
      // The flags test asks for one capability; the policy grants nothing unless told to.
      FERRY_POLICY_CAPABILITIES: 'NET_ADMIN',
    }))) as typeof rx;
    receivers.push(...rx);
  });

  after(async () => {
    for (const r of receivers) await r.stop().catch(() => undefined);
    for (const engine of docker ?? []) {
      for (const name of services) {
        for (const suffix of ['', '.ferry-previous', '.ferry-next', '.ferry-parked']) {
          await engine.getContainer(`${name}${suffix}`).remove({ force: true }).catch(() => undefined);
        }
      }
    }
    for (const v of volumes) await v.docker.getVolume(v.name).remove({ force: true }).catch(() => undefined);
    const tags = ['1', 'big', 'wide', 'lan'].map((tag) => `${repo}:${tag}`);
    for (const engine of docker ?? []) await removeImages(engine, tags);
    await removeImages(build, tags);
    await Promise.all(engines.map((e) => e.stop().catch(() => undefined)));
  });

  test('one package, read once and hashed once, runs on all three engines under three deployment ids', async () => {
    const store = await new ImageStore(createDockerClient(s.buildDockerHost)).layerStore();
    const spool = await mkdtemp(join(tmpdir(), 'ferry-fan-spool-'));
    // The sender spools its package in TMPDIR: every file it creates there is seen.
    const created = new Set<string>();
    const watcher = watch(spool, (_event, name) => { if (name) created.add(name); });
    try {
      const service = serviceName('three');
      const result = await runFerry(['push', `${repo}:1`, ...rx.flatMap((r) => ['--to', r.url]), '--name', service, '--network', 'none', '--json'], { ...senderEnv, TMPDIR: spool });
      assert.equal(result.code, 0, result.stdout + result.stderr);
      const json = JSON.parse(result.stdout) as Fanout;
      assert.equal(json.ok, true);
      assert.deepEqual(json.targets.map((t) => [t.url, t.host, t.state]), rx.map((r, i) => [r.url, `fan${i}-${run}`, 'COMPLETED']));
      assert.equal(new Set(json.targets.map((t) => t.deploymentId)).size, 3);
      // The sender's own count of what it read is one archive, not three: from the stack's build
      // engine, the archive it writes from the layer store.
      assert.equal(json.exportedBy, 'layer-store');
      assert.deepEqual([json.compressionChoice.compression, json.compressionChoice.measured], ['none', false]);
      assert.match(json.compressionChoice.reason, /loopback/);
      const info = await new ImageStore(createDockerClient(s.buildDockerHost)).inspect(`${repo}:1`);
      assert.ok(store && info);
      const archive = await countBytes(streamStoreArchive(store, info.id, info.diffIds, await planStoreArchive(store, info.id, info.diffIds, [])));
      assert.equal(json.bytes.image, archive);
      for (const t of json.targets) assert.equal(t.bytes.sent, json.bytes.package, 'each target got the package exactly once');
      assert.deepEqual([...created].filter((name) => name.startsWith('ferry-')).length, 1, [...created].join(', '));
      for (const engine of docker) assert.equal((await engine.getContainer(service).inspect()).State.Running, true);
      // --json: progress went to stderr, one JSON object a line, ending with each target's outcome.
      const progress = result.stderr.trim().split('\n').map((l) => JSON.parse(l) as { progress: string; target?: string; ok?: boolean });
      assert.deepEqual(progress.filter((p) => p.progress === 'done').map((p) => [p.target, p.ok]).sort(), rx.map((r) => [r.url, true]).sort());
    } finally {
      watcher.close();
      await rm(spool, { recursive: true, force: true });
    }
  });

  test('docker run flags reach the container: port, volume, memory, CPUs, capability, restart, label, user, command', async () => {
    const service = serviceName('flags');
    const port = await freePort();
    const volume = `ferry-fan-vol-${run}`;
    volumes.push({ docker: docker[1], name: volume });
    const result = await runFerry([
      'push', `${repo}:1`, '--to', rx[1].url, '--name', service,
      '-p', `127.0.0.1:${port}:8080`, '-v', `${volume}:/data`, '--memory', '64m', '--cpus', '0.5', '--cap-add', 'NET_ADMIN',
      '--restart', 'on-failure', '--label', `run=${run}`, '-e', 'PORT=8080', '--user', '0:0',
      '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', '200', '--health-retries', '100',
      '--', '/bin/busybox', 'sh', '-c', "touch /data/written; exec /bin/busybox httpd -f -p 0.0.0.0:8080 -h /www",
    ], senderEnv);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const info = await docker[1].getContainer(service).inspect();
    assert.equal(info.State.Running, true);
    assert.deepEqual(info.HostConfig.PortBindings, { '8080/tcp': [{ HostIp: '127.0.0.1', HostPort: String(port) }] });
    assert.deepEqual(info.Mounts.map((m) => [m.Type, m.Name, m.Destination, m.RW]), [['volume', volume, '/data', true]]);
    assert.equal(info.HostConfig.Memory, 64 * 1024 ** 2);
    assert.equal(info.HostConfig.NanoCpus, 0.5e9);
    assert.deepEqual(info.HostConfig.CapAdd, ['NET_ADMIN']);
    assert.equal(info.HostConfig.RestartPolicy?.Name, 'on-failure');
    assert.equal(info.Config.Labels[`run`], run);
    assert.equal(info.Config.User, '0:0');
    assert.deepEqual(info.Config.Cmd, ['/bin/busybox', 'sh', '-c', 'touch /data/written; exec /bin/busybox httpd -f -p 0.0.0.0:8080 -h /www']);
    // Published for real: the engine's proxy answers on the host port.
    assert.equal(await (await fetch(`http://127.0.0.1:${port}/healthz`)).text(), 'ok\n');
    const files = await docker[1].getVolume(volume).inspect();
    assert.equal(files.Name, volume);
  });

  test('a target that stays down opens its breaker; the others complete and the summary names it and why', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const service = serviceName('down');
    const result = await runFerry(['push', `${repo}:1`, '--to', rx[0].url, '--to', dead, '--to', rx[2].url, '--name', service, '--network', 'none'], senderEnv);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const lines = result.stdout.split('\n');
    assert.ok(lines.some((l) => l.includes(`✔ fan0-${run}`) && l.includes('COMPLETED')), result.stdout);
    assert.ok(lines.some((l) => l.includes(`✔ fan2-${run}`) && l.includes('COMPLETED')), result.stdout);
    // The failed target's report: the error, the target it failed on, what to do.
    const failed = lines.findIndex((l) => l.startsWith('✖ ') && l.endsWith('[FERRY_ERR_RECEIVER_CIRCUIT_OPEN]'));
    assert.ok(failed > 0, result.stdout);
    assert.equal(lines[failed + 1], `  target      ${service} (${dead})`);
    assert.match(lines[failed + 2] ?? '', /^ {2}deployment {2}[0-9a-f-]{36}/);
    assert.match(lines[failed + 3] ?? '', /^ {2}next: /);
    assert.ok(lines.some((l) => /^ {2}compression none: every target is on this machine/.test(l)), result.stdout);
    // The breaker ended the schedule early: fewer attempts than the default 8.
    assert.match(result.stdout, new RegExp(`${dead.replace(/[.:/]/g, '\\$&')}, deployment [0-9a-f-]+, [2-7] attempts`));
    for (const engine of [docker[0], docker[2]]) assert.equal((await engine.getContainer(service).inspect()).State.Running, true);
  });

  test('four targets lacking the image stream from one export and one compression; one cut off mid-way leaves the other three deployed', async () => {
    const service = serviceName('wide');
    await buildRandomImage('wide');
    const victim = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `fanvictim-${run}` });
    receivers.push(victim);
    // Every export of the image the sender makes goes through save(): counted here, on the real engine.
    const images = new ImageStore(createDockerClient(s.buildDockerHost));
    const save = images.save.bind(images);
    let saves = 0;
    images.save = (ref) => { saves += 1; return save(ref); };
    let cut = false;
    const targets = [rx[0].url, victim.url, rx[1].url, rx[2].url];
    const result = await pushMany({
      image: `${repo}:wide`, targets, compression: 'zstd', layerStore: false, slowAfterMs: 2000,
      service: { name: service, network: 'none' }, policy: { ...DEFAULT_BACKOFF, attempts: 2 },
    }, {
      images, events: new NullSink(), credentials: key, source: 'ferry://sender/test',
      clock: { random: () => 0.5, sleep: (ms) => new Promise((r) => setTimeout(r, Math.min(ms, 100))) },
      onProgress: (url, position) => {
        if (url !== victim.url || cut || position === 0) return;
        // Its first part is in; the receiver goes away, mid-stream.
        cut = true;
        victim.child.kill('SIGKILL');
      },
    });
    assert.ok(cut, 'the victim was cut off mid-way');
    assert.deepEqual(result.layers.targets.map((t) => t.present), [0, 0, 0, 0], 'no target held any layer');
    assert.deepEqual(result.reads, { exports: 1, compressions: 1 }, JSON.stringify(result.reads));
    assert.equal(saves, 1, 'one docker save for four targets');
    const byUrl = new Map(result.targets.map((t) => [t.url, t]));
    for (const url of [rx[0].url, rx[1].url, rx[2].url]) {
      const t = byUrl.get(url);
      assert.deepEqual([t?.state, t?.streamed], ['COMPLETED', true], JSON.stringify(t));
    }
    const lost = byUrl.get(victim.url);
    assert.equal(lost?.ok, false, JSON.stringify(lost));
    assert.ok(lost.path.includes('stream'), JSON.stringify(lost));
    assert.equal(result.ok, false);
    for (const engine of docker) assert.equal((await engine.getContainer(service).inspect()).State.Running, true);
  });

  test('a private address: the stream starts uncompressed, its first parts measure the link, and the choice and why are in the result', async () => {
    const bridge = engines[0]?.bridge ?? '';
    const shown = await capture('ip', ['-4', '-o', 'addr', 'show', 'dev', bridge]);
    const address = /inet (10\.\d+\.\d+\.\d+)\//.exec(shown.stdout)?.[1];
    assert.ok(address, shown.stdout + shown.stderr);
    const lan = await startReceiverProcess({
      DOCKER_HOST: engines[0]?.host ?? '', FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `fanlan-${run}`, FERRY_LISTEN: `${address}:${await freePort()}`,
    });
    receivers.push(lan);
    const service = serviceName('lan');
    await buildRandomImage('lan');
    const result = await pushMany({
      image: `${repo}:lan`, targets: [lan.url], compression: 'auto', probeMs: 0, probeBytes: 4 * 1024 * 1024,
      service: { name: service, network: 'none' },
    }, { images: new ImageStore(createDockerClient(s.buildDockerHost)), events: new NullSink(), credentials: key, source: 'ferry://sender/test' });
    assert.equal(result.targets[0]?.state, 'COMPLETED', JSON.stringify(result.targets[0]));
    assert.equal(result.compressionChoice.measured, true, JSON.stringify(result.compressionChoice));
    // Random bytes over a link on this machine: compressing cannot win, whatever the figures.
    assert.equal(result.compressionChoice.compression, 'none');
    assert.match(result.compressionChoice.reason, /MB\/s/);
    assert.equal(result.reads.exports, 1);
  });

  test('a receiver whose host key is not the one expected is refused before any byte goes; --host-key pins one', async () => {
    const service = serviceName('pinned');
    const wrong = `SHA256:${'A'.repeat(43)}`;
    // A selector's targets carry the keys the registry enrolled: one of them is not what its receiver proves.
    const result = await pushMany({
      image: `${repo}:1`, targets: [{ url: rx[0].url, hostKey: wrong }, { url: rx[2].url }], compression: 'none',
      service: { name: service, network: 'none' }, policy: { ...DEFAULT_BACKOFF, attempts: 2 },
    }, { images: new ImageStore(createDockerClient(s.buildDockerHost)), events: new NullSink(), credentials: key, source: 'ferry://sender/test' });
    const [refused, other] = result.targets;
    assert.equal(refused?.ok, false);
    assert.equal(refused.error?.code, 'FERRY_ERR_HOST_KEY_MISMATCH', JSON.stringify(refused));
    assert.equal(refused.bytes.sent, 0);
    assert.equal(other?.state, 'COMPLETED', JSON.stringify(other));
    // The CLI: --host-key with the key the receiver does not hold fails with that code, exit 2-or-more.
    const cli = await runFerry(['push', `${repo}:1`, '--to', rx[1].url, '--host-key', wrong, '--name', service, '--network', 'none', '--json'], senderEnv);
    assert.notEqual(cli.code, 0, cli.stdout + cli.stderr);
    assert.match(cli.stdout + cli.stderr, /FERRY_ERR_HOST_KEY_MISMATCH/);
    await assert.rejects(docker[1].getContainer(service).inspect(), (err: { statusCode?: number }) => err.statusCode === 404, 'nothing ran on the receiver that did not prove its key');
  });

  test('a receiver SIGKILLed mid-transfer and restarted on its data dir resumes; the other target is not held up', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-fan-kill-'));
    const listen = `127.0.0.1:${await freePort()}`;
    const env = { DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `fankill-${run}`, FERRY_DATA_DIR: dataDir, FERRY_LISTEN: listen };
    const first = await startReceiverProcess(env);
    const stopped: ReceiverProcess[] = [];
    let restarted: Promise<void> | undefined;
    // The retry pause lasts until the receiver is back: the schedule itself is test/unit/retry.test.ts's.
    const clock: Clock = {
      random: () => 0.5,
      sleep: async (ms) => { await restarted; await new Promise((r) => setTimeout(r, Math.min(ms, 250))); },
    };
    const service = serviceName('kill');
    // A layer of this run's own random bytes: whatever layers the engines share already (the
    // sender leaves those out), the package stays large enough for many parts.
    const ctx = await mkdtemp(join(tmpdir(), 'ferry-fan-ctx-'));
    await writeFile(join(ctx, 'busybox'), await readFile('/bin/busybox'), { mode: 0o755 });
    await writeFile(join(ctx, 'blob'), randomBytes(4 * 1024 * 1024));
    await writeFile(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY blob /blob\nENTRYPOINT ["/bin/busybox", "sleep", "1000000"]\n');
    const built = await capture('docker', ['-H', s.buildDockerHost, 'build', '-q', '-t', `${repo}:big`, ctx], { ...process.env, DOCKER_BUILDKIT: '0' });
    await rm(ctx, { recursive: true, force: true });
    assert.equal(built.code, 0, built.stderr);
    try {
      let size = 0;
      const result = await pushMany({
        // Spooled, so the resumable upload is what a killed receiver resumes.
        image: `${repo}:big`, targets: [first.url, rx[2].url], compression: 'none', stream: false, resumableThreshold: 1, partBytes: 64 * 1024,
        service: { name: service, network: 'none' }, policy: DEFAULT_BACKOFF,
      }, {
        images: new ImageStore(createDockerClient(s.buildDockerHost)), events: new NullSink(), credentials: key, source: 'ferry://sender/test', clock,
        onStage: (stage, { bytes }) => { if (stage === 'transfer') size = bytes ?? 0; },
        onProgress: (url, position) => {
          if (url !== first.url || restarted || position < size / 2) return;
          // Killed at once, mid-PATCH, then started again on the same data dir and port.
          first.child.kill('SIGKILL');
          restarted = new Promise((r) => first.child.once('exit', r))
            .then(() => startReceiverProcess(env))
            .then((second) => { stopped.push(second); });
        },
      });
      assert.ok(restarted, 'the receiver was killed mid-transfer');
      const [killed, other] = result.targets;
      assert.equal(killed?.state, 'COMPLETED', JSON.stringify(killed));
      // The cut calls were sent again within the target's first attempt, from where the session stood.
      assert.deepEqual([killed.attempts, killed.path], [1, ['spool', 'done']], JSON.stringify(killed));
      assert.ok(killed.bytes.sent >= result.bytes.package, JSON.stringify(result));
      assert.ok(killed.bytes.sent < 1.2 * result.bytes.package, `resumed, not started over: ${killed.bytes.sent} of ${result.bytes.package}`);
      assert.deepEqual([other?.state, other?.attempts, other?.bytes.sent], ['COMPLETED', 1, result.bytes.package]);
      assert.equal((await docker[0].getContainer(service).inspect()).State.Running, true);
      assert.equal((await docker[2].getContainer(service).inspect()).State.Running, true);
    } finally {
      // ReceiverProcess.stop() waits for an exit that a SIGKILLed child already had.
      if (first.child.exitCode === null && first.child.signalCode === null) stopped.push(first);
      await Promise.all(stopped.map((r) => r.stop().catch(() => undefined)));
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('a one-shot upload refused mid-body', { timeout: 60_000 }, () => {
  /**
   * A peer on a real socket that lets the body start (100 Continue), then answers 413 while the
   * package is still coming and resets the connection: with the whole JSON answer sent, or with
   * the status line and only part of the answer.
   */
  async function refusingPeer(cutAnswer: boolean): Promise<{ url: string; close: () => Promise<void> }> {
    const server = createServer((socket) => {
      let seen = 0;
      let phase: 'headers' | 'body' | 'answered' = 'headers';
      let head = '';
      socket.on('error', () => undefined);
      socket.on('data', (chunk: Buffer) => {
        if (phase === 'headers') {
          head += chunk.toString('latin1');
          if (!head.includes('\r\n\r\n')) return;
          phase = 'body';
          socket.write('HTTP/1.1 100 Continue\r\n\r\n');
          return;
        }
        seen += chunk.length;
        if (phase !== 'body' || seen < 256 * 1024) return;
        phase = 'answered';
        const body = JSON.stringify({ error: { code: 'FERRY_ERR_PAYLOAD_TOO_LARGE', message: 'Request body exceeds the limit', details: { limit: 1 } } });
        socket.write(`HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${cutAnswer ? body.slice(0, 20) : body}`);
        setTimeout(() => socket.resetAndDestroy(), 100);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    return { url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => { server.close(() => r()); }) };
  }

  let dir: string;
  let packagePath: string;
  const packageSize = 16 * 1024 * 1024;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-fan-413-'));
    packagePath = join(dir, 'package');
    await writeFile(packagePath, randomBytes(packageSize));
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  for (const cutAnswer of [false, true]) {
    test(`surfaces the receiver's FERRY_ERR_PAYLOAD_TOO_LARGE, not an unreachable receiver (${cutAnswer ? 'answer cut after its status line' : 'whole answer'})`, async () => {
      const peer = await refusingPeer(cutAnswer);
      try {
        await assert.rejects(uploadOneShot({
          url: peer.url, credentials: key, audience: 'peer', manifestJson: '{}', packagePath, packageSize,
        }), (err: unknown) => {
          assert.ok(err instanceof FerryError, String(err));
          assert.equal(err.code, 'FERRY_ERR_PAYLOAD_TOO_LARGE', err.message);
          return true;
        });
      } finally {
        await peer.close();
      }
    });
  }
});
