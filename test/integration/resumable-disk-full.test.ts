/**
 * A resumable push whose deploy call the receiver answers `507 FERRY_ERR_DISK_FULL` — the upload's
 * own spool took the room a load needs — and which is tried again once space is back: the
 * receiver keeps the session's bytes after such a refusal (it left no journal record, so the
 * deployment id is free for the same call again, docs/protocol.md §6 and §10.4), and the next
 * attempt finds the session complete, sends no byte again, and deploys. A real receiver process on
 * a tmpfs data directory, and the stack's engines.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, readdir, rm, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { NullSink } from '@ferry/events';
import { isFerryError } from '@ferry/protocol';
import { DEFAULT_BACKOFF, push, type Clock } from '@ferry/sender';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { buildLayeredImage, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { signed } from '../helpers/raw-http.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`df-${run}`);
const hostId = `df-${run}`;
const ref = `ferry-df-${run}:1`;
const service = `df-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const MiB = 1024 ** 2;

/** Writes `bytes` zero bytes to `path`, a MiB at a time. */
async function fill(path: string, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(MiB);
  const chunks = (function* zeros(): Generator<Buffer> {
    for (let left = bytes; left > 0; left -= MiB) yield left >= MiB ? chunk : chunk.subarray(0, left);
  })();
  await pipeline(Readable.from(chunks), createWriteStream(path));
}

describe('a resumable deploy call refused for a full disk', { timeout: 300_000 }, () => {
  let dataDir = '';
  let mounted = false;
  let receiver: ReceiverProcess | undefined;
  let imageId = '';
  /** About the package's size: the image's, which an uncompressed whole package carries. */
  let packageBytes = 0;

  before(async () => {
    imageId = await buildLayeredImage(s.buildDockerHost, ref, randomBytes(8 * MiB), `df-${run}`);
    packageBytes = (await build.getImage(ref).inspect()).Size;
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-df-'));
    // Room for the spool and twice the package besides, once the filler below is gone.
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${Math.ceil((4 * packageBytes + 16 * MiB) / 1024)}k`, 'tmpfs', dataDir]);
    mounted = true;
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId, FERRY_DATA_DIR: dataDir,
      // The one rule left: a load needs twice the package's size free.
      FERRY_MIN_FREE_BYTES: '0',
    });
  });

  after(async () => {
    await receiver?.stop();
    if (mounted) execFileSync('umount', [dataDir]);
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    await removeService(target, service);
    await removeImages(target, [imageId]);
    await removeImages(build, [ref]);
  });

  test('the session keeps its bytes; the next attempt, once space is back, deploys them without sending a byte again', async () => {
    const rx = receiver;
    assert.ok(rx);
    // 2.5 packages free: the upload is let in (it needs 2), and once its spool holds the package
    // the load's 2 are not there any more.
    const filler = join(dataDir, 'filler');
    const free = await statfs(dataDir);
    await fill(filler, free.bavail * free.bsize - Math.floor(2.5 * packageBytes));

    let refused: unknown;
    let freed = false;
    // The target's retry pause after the 507 is when the operator frees space; any other pause
    // (a call cut short) is short.
    const clock: Clock = {
      random: () => 0.5,
      sleep: async (ms) => {
        if (!freed && isFerryError(refused, 'FERRY_ERR_DISK_FULL')) {
          freed = true;
          await rm(filler);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(ms, 250)));
      },
    };
    const result = await push({
      image: ref, to: rx.url, service: { name: service, network: 'none' }, compression: 'none',
      negotiateLayers: false, stream: false, resumableThreshold: 1, policy: { ...DEFAULT_BACKOFF, attempts: 2 },
    }, {
      images: new ImageStore(createDockerClient(s.buildDockerHost)), events: new NullSink(), credentials: key, source: 'ferry://sender/test', clock,
      onRetry: (_attempt, _delayMs, err) => { refused = err; },
    });

    assert.ok(isFerryError(refused, 'FERRY_ERR_DISK_FULL'), String(refused));
    assert.equal(freed, true);
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.deepEqual(result.path, ['spool', 'retry', 'spool', 'done']);
    assert.equal(result.bytes.sent, result.bytes.package, 'the package went once: the second attempt found the session complete');
    assert.equal(result.imageId, imageId);
    const container = await target.getContainer(service).inspect();
    assert.equal(container.Image, imageId);
    assert.equal(container.State.Running, true);

    const path = `/v1/deployments/${result.deploymentId}`;
    const record = await (await fetch(`${rx.url}${path}`, { headers: signed(key, hostId, { path }) })).json() as { state: string };
    assert.equal(record.state, 'COMPLETED');
    // Deployed, the session's bytes go.
    assert.deepEqual((await readdir(join(dataDir, 'uploads'))).filter((name) => name.endsWith('.bin')), []);
  });
});
