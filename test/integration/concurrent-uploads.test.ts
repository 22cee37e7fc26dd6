/**
 * Reliability row 32 under load: five large uploads at once — four streamed (docs/protocol.md
 * §10.6), one resumable (§10) — into one `ferry receiver` process on the stack's target engine,
 * while ten small deployments follow one another into a service of their own, alternately
 * streamed and sent one-shot. The large ones are pushed by the real `ferry push` command, the
 * small ones by the sender library's push (the command's own code, without a process start each),
 * both with their default single attempt, so a request refused for lack of resources (503, 507,
 * 429) would fail the push; the one documented backpressure, a stream refused because the receiver
 * loads as many as it takes at once (409 FERRY_ERR_STREAM_UNAVAILABLE), sends the package the
 * spooled way and must still deploy. Afterwards every acknowledged byte is accounted for (the
 * receiver's journal holds each deployment as completed with its image id, the engine holds every
 * image, nothing is left in the spools) and every event is in JetStream once: each deployment's
 * lifecycle whole, no event twice, no failure. Memory is measured, not asserted: the receiver's
 * peak is a diagnostic here, and bench/concurrent-uploads.ts measures the same load at full size.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, readEvents, type FerryEvent } from '@ferry/events';
import { ReceiverClient, push, type PushResult } from '@ferry/sender';
import { buildLayeredImage, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`cu-${run}`);
const hostId = `cu-${run}`;
const repo = `ferry-cu-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const senderEnv = { DOCKER_HOST: s.buildDockerHost, FERRY_NATS_URL: s.natsUrl, ...keyEnv(key) };

/** Incompressible bytes per large image: enough for five uploads to overlap, little enough for CI. */
const LARGE_BYTES = 64 * 1024 ** 2;
const LARGE = 5;
/** The large uploads that go as streams; the rest go over the resumable upload. */
const STREAMED = 4;
const SMALL = 10;

/**
 * The images run `busybox sleep` as PID 1, which ignores SIGTERM: each small deployment would wait
 * out the engine's stop timeout for the one before. This command ends on SIGTERM.
 */
const STOPS_ON_TERM = { entrypoint: ['/bin/busybox'], command: ['sh', '-c', "trap 'exit 0' TERM; sleep 86400 & wait"] };

/** The receiver's own stages, in order, for a deployment without a health check. */
const RECEIVER_LIFECYCLE = ['package.verified', 'image.loaded', 'container.started', 'deployment.completed'];
/** What the sender publishes for the deployment. */
const SENDER_EVENTS = ['transfer.started', 'transfer.completed'];

interface Push { service: string; ref: string; imageId: string; streamed: boolean }

async function until<T>(check: () => Promise<T | undefined>): Promise<T> {
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Spool files (streams, resumable sessions, one-shot bodies, hand-overs to the deployer) left in the data directory. */
async function spooled(dataDir: string): Promise<string[]> {
  const left: string[] = [];
  for (const dir of ['streams', 'uploads', 'ingest']) {
    for (const name of await readdir(join(dataDir, dir)).catch(() => [] as string[])) {
      if (/\.(bin|deploy)$/.test(name) || dir === 'ingest') left.push(join(dir, name));
    }
  }
  return left;
}

/** Adds to `seen` the uploads the receiver is spooling right now (streams and resumable sessions). */
async function receiving(dataDir: string, seen: Set<string>): Promise<number> {
  for (const dir of ['streams', 'uploads']) {
    for (const name of await readdir(join(dataDir, dir)).catch(() => [] as string[])) if (name.endsWith('.bin')) seen.add(join(dir, name));
  }
  return seen.size;
}

/** A live process's peak resident memory (the kernel's high-water mark), in MiB. */
function peakMiB(pid: number | undefined): string {
  const status = readFileSync(`/proc/${pid ?? 0}/status`, 'utf8');
  return (Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024).toFixed(1);
}

describe('row 32: five large uploads at once and a stream of small deployments', { timeout: 600_000 }, () => {
  let receiver: ReceiverProcess;
  let events: JetStreamPublisher;
  const large: Push[] = [];
  const small: Push[] = [];
  const services = new Set<string>();

  before(async () => {
    // Built one after another: the random bytes of one image at a time in memory.
    for (let i = 0; i < LARGE; i++) {
      const ref = `${repo}:large-${i}`;
      const imageId = await buildLayeredImage(s.buildDockerHost, ref, randomBytes(LARGE_BYTES), `large-${i}-${run}`);
      large.push({ service: `cu-${run}-large-${i}`, ref, imageId, streamed: i < STREAMED });
    }
    // One base shared by the small images: after the first, each deployment carries its top layer only.
    const base = randomBytes(512 * 1024);
    for (let i = 0; i < SMALL; i++) {
      const ref = `${repo}:small-${i}`;
      small.push({ service: `cu-${run}-small`, ref, imageId: await buildLayeredImage(s.buildDockerHost, ref, base, `small-${i}-${run}`), streamed: i % 2 === 0 });
    }
    for (const p of [...large, ...small]) services.add(p.service);
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: hostId,
      // Every image any of these deployments loaded stays, so each can be found on the engine.
      FERRY_RETAIN_IMAGES: String(SMALL + 1),
    });
    events = await JetStreamPublisher.connect({ url: s.natsUrl, name: `cu-${run}` });
  });

  after(async () => {
    await events?.close();
    await receiver?.stop();
    for (const service of services) await removeService(target, service);
    await removeImages(target, [...large, ...small].map((p) => p.imageId));
    await removeImages(build, [...large, ...small].map((p) => p.ref));
  });

  const spooledFlags = (p: Push): string[] => (p.streamed ? [] : ['--no-stream', '--resumable-threshold', String(LARGE_BYTES / 2)]);

  const pushCommand = async (p: Push): Promise<PushResult> => {
    const answer = await runFerry(['push', p.ref, '--to', receiver.url, '--name', p.service, '--network', 'none', '--json', ...spooledFlags(p)], senderEnv);
    assert.equal(answer.code, 0, `${p.ref}: ${answer.stdout}${answer.stderr}`);
    return JSON.parse(answer.stdout) as PushResult;
  };

  const pushLibrary = (p: Push): Promise<PushResult> => push({
    image: p.ref, to: receiver.url, compression: 'auto', stream: p.streamed, resumableThreshold: LARGE_BYTES / 2,
    service: { name: p.service, network: 'none', ...STOPS_ON_TERM },
  }, {
    images: new ImageStore(createDockerClient(s.buildDockerHost)), events, credentials: key, source: `ferry://sender/cu-${run}`,
  });

  test('every push deploys; every acknowledged byte is in the journal and on the engine; every event is in JetStream once', async (t) => {
    const started = performance.now();
    const seconds = (): string => ((performance.now() - started) / 1000).toFixed(0);
    let largeSettled = false;
    const largeDone = Promise.all(large.map(pushCommand)).then((done) => { t.diagnostic(`large pushes done after ${seconds()} s`); return done; });
    // Awaited below; a failure meanwhile must not go unhandled, nor keep the wait below waiting.
    largeDone.catch(() => undefined).finally(() => { largeSettled = true; });
    // The small deployments begin once the receiver has begun taking in all five large uploads.
    const seen = new Set<string>();
    await until(async () => ((await receiving(receiver.dataDir, seen)) >= LARGE || largeSettled ? true : undefined));
    t.diagnostic(`all large uploads receiving after ${seconds()} s`);
    const smallDone: PushResult[] = [];
    for (const p of small) smallDone.push(await pushLibrary(p));
    t.diagnostic(`small pushes done after ${seconds()} s`);
    const pushes = [...large, ...small];
    const results = new Map<Push, PushResult>([...await largeDone, ...smallDone].map((result, i) => [pushes[i], result]));
    await events.flush();

    // Every push deployed at its first attempt: nothing was refused for lack of resources.
    for (const p of pushes) {
      const result = results.get(p);
      assert.equal(result?.deployment.state, 'COMPLETED', p.ref);
      assert.equal(result.imageId, p.imageId, p.ref);
      assert.ok(!result.path.includes('retry') && !result.path.includes('failed'), `${p.ref} went ${result.path.join(' → ')}`);
      if (!p.streamed) assert.equal(result.streamed, false, `${p.ref} was sent spooled, as asked`);
    }
    for (const p of pushes.slice(0, LARGE)) {
      const result = results.get(p);
      assert.ok(result && result.bytes.package >= LARGE_BYTES, `${p.ref}: the whole random layer went (${result?.bytes.package} bytes)`);
    }
    for (const p of pushes) {
      const result = results.get(p);
      t.diagnostic(`${p.ref.split(':')[1] ?? ''}: ${result?.path.join('→') ?? ''}, ${result?.bytes.package ?? 0} bytes, timings ${JSON.stringify(result?.timings)}`);
    }
    t.diagnostic(`receiver peak memory (VmHWM): ${peakMiB(receiver.child.pid)} MiB`);

    // The receiver's journal holds each deployment, completed, with its image; no other deployment.
    const client = new ReceiverClient({ url: receiver.url, credentials: key });
    const journal = await client.deployments({ limit: 100 });
    const ids = pushes.map((p) => results.get(p)?.deploymentId);
    assert.deepEqual(journal.map((r) => r.deploymentId).sort(), [...ids].sort(), 'the journal holds these deployments, each once');
    for (const p of pushes) {
      const record = journal.find((r) => r.deploymentId === results.get(p)?.deploymentId);
      assert.equal(record?.state, 'COMPLETED', p.ref);
      assert.equal(record.imageId, p.imageId, p.ref);
      assert.equal(record.service, p.service, p.ref);
      // On the engine, under that id.
      assert.equal((await target.getImage(p.imageId).inspect()).Id, p.imageId, p.ref);
    }
    for (const p of [...large, small.at(-1)]) {
      const container = await target.getContainer(p?.service ?? '').inspect();
      assert.equal(container.Image, p?.imageId);
      assert.equal(container.State.Running, true);
    }
    // Nothing acknowledged stays behind in the spools: all of it went into deployments.
    await until(async () => ((await spooled(receiver.dataDir)).length === 0 ? true : undefined));

    // JetStream holds each deployment's lifecycle once.
    const stored = await until(async () => {
      const read: FerryEvent[] = [];
      for await (const event of readEvents({ url: s.natsReaderUrl, host: hostId })) read.push(event);
      const finished = new Set(read.filter((e) => e.type === 'ferry.deployment.completed' || e.type === 'ferry.deployment.failed').map((e) => e.deploymentid));
      return ids.every((id) => id !== undefined && finished.has(id)) ? read : undefined;
    });
    assert.equal(new Set(stored.map((e) => e.id)).size, stored.length, 'no event was stored twice');
    for (const p of pushes) {
      const id = results.get(p)?.deploymentId;
      const ofDeployment = stored.filter((e) => e.deploymentid === id);
      const receiverTypes = ofDeployment.filter((e) => e.source.startsWith('ferry://receiver/')).map((e) => e.type.slice('ferry.'.length));
      const senderTypes = ofDeployment.filter((e) => e.source.startsWith('ferry://sender/')).map((e) => e.type.slice('ferry.'.length));
      assert.deepEqual(receiverTypes, RECEIVER_LIFECYCLE, `${p.ref}: the receiver's events`);
      assert.deepEqual(senderTypes.sort(), [...SENDER_EVENTS].sort(), `${p.ref}: the sender's events`);
    }
    assert.equal(stored.filter((e) => !ids.includes(e.deploymentid)).length, 0, 'no event of a deployment nobody made');
  });
});
