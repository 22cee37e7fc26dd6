/**
 * Loading, against a real `ferry receiver` process and the stack's target engine: correctly
 * signed packages whose archives are empty, truncated, not tar, wrongly compressed, corrupt,
 * escaping, bombs, carrying foreign tags or another image. Each refusal must be typed, leave the
 * target's images and tags as they were, and leave the running service container untouched.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { createCompressor } from '@ferry/compress';
import { digestFile } from '@ferry/integrity';
import { FerryError, type Compression, type DeploymentResult } from '@ferry/protocol';
import { uploadOneShot } from '@ferry/sender';
import { buildTestImage, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { tarHeader } from '../helpers/tar.ts';
import { testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`load-${run}`);
const hostId = `load-${run}`;
const service = `load-svc-${run}`;
const repo = `ferry-load-${run}`;
const victim = `ferry-victim-${run}:16`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);

interface Image { id: string; diffIds: string[]; archive: Buffer }
interface Answer { status: number; code?: string; message?: string; result?: DeploymentResult }

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function saved(engine: typeof build, ref: string): Promise<Image> {
  const info = await engine.getImage(ref).inspect();
  return { id: info.Id, diffIds: info.RootFS.Layers ?? [], archive: await readAll(await engine.getImage(ref).get()) };
}

/** The archive with `extra` entries added at its end, just before the end-of-archive marker. */
function withExtra(archive: Buffer, extra: { name: string; type?: string; data?: string; linkname?: string }[]): Buffer {
  let at = 0;
  while (at + 512 <= archive.length && !archive.subarray(at, at + 512).every((b) => b === 0)) {
    const size = parseInt(archive.toString('latin1', at + 124, at + 136).replace(/\0.*$/s, ''), 8);
    at += 512 + Math.ceil(size / 512) * 512;
  }
  const parts = [archive.subarray(0, at)];
  for (const entry of extra) {
    const data = Buffer.from(entry.data ?? '');
    parts.push(tarHeader(entry.name, data.length, entry.type, entry.linkname), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

async function compress(data: Buffer, kind: Compression): Promise<Buffer> {
  const compressor = createCompressor(kind);
  const compressed = readAll(compressor);
  compressor.end(data);
  return compressed;
}

/** All images of this run on the target, by id, with their tags: what "nothing changed" means. */
async function targetImages(): Promise<Map<string, string[]>> {
  const images = await target.listImages();
  const mine = new Map<string, string[]>();
  for (const image of images) {
    const tags = (image.RepoTags ?? []).filter((t) => t !== '<none>:<none>');
    if (tags.some((t) => t.includes(run)) || known.has(image.Id)) mine.set(image.Id, tags.sort());
  }
  return mine;
}

const known = new Set<string>();

describe('loading: only the signed image, safely, or nothing', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  let work: string;
  let v1: Image;
  let v2: Image;
  let victimId: string;
  let dataRoot: string;
  let baseline: { images: Map<string, string[]>; container: { id: string; startedAt: string } };

  const container = async (): Promise<{ id: string; startedAt: string; running: boolean }> => {
    const info = await target.getContainer(service).inspect();
    return { id: info.Id, startedAt: info.State.StartedAt, running: info.State.Running };
  };

  /** Signs and uploads `bytes` as a package of `image`, as the sender's one-shot client does. */
  const push = async (bytes: Buffer, image: { id: string; diffIds: string[] }, options: { compression?: Compression; ref?: string } = {}): Promise<Answer & { digest: string }> => {
    const path = join(work, `${randomUUID()}.pkg`);
    await writeFile(path, bytes);
    const { digest, bytes: size } = await digestFile(path);
    const manifestJson = JSON.stringify({
      schema: 'ferry.manifest/v1', deploymentId: randomUUID(), createdAt: new Date().toISOString(),
      image: { ref: options.ref ?? `${repo}:bad`, id: image.id, diffIds: image.diffIds },
      package: { format: 'docker-archive', compression: options.compression ?? 'zstd', size, digest },
      service: { name: service, network: 'none' },
    });
    try {
      const { result } = await uploadOneShot({ url: receiver.url, credentials: key, audience: hostId, manifestJson, packagePath: path, packageSize: size });
      return { status: 200, result, digest };
    } catch (err) {
      if (!(err instanceof FerryError)) throw err;
      return { status: err.status, code: err.code, message: err.message, digest };
    } finally {
      await rm(path, { force: true });
    }
  };

  /** Everything a refused load must leave as it was. */
  const assertUntouched = async (answer: Answer & { digest: string }, code: string): Promise<void> => {
    assert.equal(answer.status, 422, JSON.stringify(answer));
    assert.equal(answer.code, code, answer.message);
    assert.doesNotMatch(answer.message ?? '', new RegExp(`${dataRoot.replace(/[/.]/g, '\\$&')}|docker-import`), 'no engine path in the answer');
    assert.deepEqual(await targetImages(), baseline.images, 'the target\'s images and tags are unchanged');
    assert.equal((await target.getImage(victim).inspect()).Id, victimId, 'the existing tag points where it did');
    await assert.rejects(target.getImage(`${repo}:bad`).inspect(), (err: { statusCode?: number }) => err.statusCode === 404, 'nothing was tagged');
    const now = await container();
    assert.equal(now.id, baseline.container.id, 'the running container is the same');
    assert.equal(now.startedAt, baseline.container.startedAt, 'and was not restarted');
    assert.equal(now.running, true);
    const stored = await readdir(join(receiver.dataDir, 'packages', 'blake3'));
    assert.ok(!stored.includes(answer.digest.slice('blake3:'.length)), 'the refused package left the store');
    assert.deepEqual(await readdir(join(receiver.dataDir, 'ingest')), [], 'and the spool');
  };

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'ferry-load-'));
    dataRoot = (await target.info() as { DockerRootDir: string }).DockerRootDir;
    const [id1, id2] = await Promise.all([
      buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`),
      buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`),
    ]);
    [v1, v2] = await Promise.all([saved(build, id1), saved(build, id2)]);
    victimId = await buildTestImage(s.targetDockerHost, victim, `victim-${run}`);
    for (const id of [v1.id, v2.id, victimId]) known.add(id);
    receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId });
    // Requests signed in the receiver's first second are refused as "before boot" (whole-second
    // timestamps against a fractional start time); let that second pass.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    // The service every refusal must leave running.
    const first = await push(await compress(v1.archive, 'zstd'), v1, { ref: `${repo}:1` });
    assert.equal(first.result?.state, 'COMPLETED', JSON.stringify(first));
    const stored = await readdir(join(receiver.dataDir, 'packages', 'blake3'));
    assert.ok(stored.includes(first.digest.slice('blake3:'.length)), 'a deployed package is kept in the content-addressed store');
  });

  beforeEach(async () => {
    const now = await container();
    baseline = { images: await targetImages(), container: { id: now.id, startedAt: now.startedAt } };
  });

  after(async () => {
    await receiver?.stop();
    await removeService(target, service);
    for (const ref of [`${repo}:1`, `${repo}:2`, `${repo}:bad`, victim, v1?.id, v2?.id]) {
      if (ref) await target.getImage(ref).remove({ force: true }).catch(() => undefined);
    }
    for (const ref of [`${repo}:1`, `${repo}:2`, victim]) await build.getImage(ref).remove({ force: true }).catch(() => undefined);
    if (work) await rm(work, { recursive: true, force: true });
  });

  // Row 19: archives that are not what a docker save writes.
  test('a zero-byte archive is refused as a bad archive', async () => {
    await assertUntouched(await push(await compress(Buffer.alloc(0), 'zstd'), v2), 'FERRY_ERR_BAD_ARCHIVE');
  });

  test('a truncated archive is refused; the engine never sees its end', async () => {
    await assertUntouched(await push(await compress(v2.archive.subarray(0, Math.floor(v2.archive.length / 2)), 'zstd'), v2), 'FERRY_ERR_BAD_ARCHIVE');
  });

  test('bytes that are not tar are refused', async () => {
    await assertUntouched(await push(await compress(randomBytes(256 * 1024), 'zstd'), v2), 'FERRY_ERR_BAD_ARCHIVE');
  });

  test('a package that says zstd but is gzip is refused', async () => {
    const answer = await push(gzipSync(v2.archive), v2, { compression: 'zstd' });
    await assertUntouched(answer, 'FERRY_ERR_BAD_ARCHIVE');
    assert.match(answer.message ?? '', /does not decompress as zstd/);
  });

  test('a corrupted but correctly signed archive fails to load and leaves nothing behind', async (t) => {
    // One byte inside the layer only v2 has (the engine skips layers it holds already, like the
    // two v1 brought): the tar stays well-formed, the layer's digest does not.
    const corrupt = Buffer.from(v2.archive);
    const offset = corrupt.indexOf(`id="variant">v2-${run}`);
    assert.ok(offset > 0, 'the variant layer is in the archive');
    corrupt[offset] = 'I'.charCodeAt(0);
    const answer = await push(await compress(corrupt, 'zstd'), v2);
    t.diagnostic(`the receiver said: ${answer.message ?? ''}`);
    await assertUntouched(answer, 'FERRY_ERR_LOAD_FAILED');
  });

  // Row 20: entries that would land outside the archive, and a bomb.
  test('an entry with "../" is refused', async () => {
    await assertUntouched(await push(await compress(withExtra(v2.archive, [{ name: '../../etc/cron.d/ferry', data: '* * * * * root id\n' }]), 'zstd'), v2), 'FERRY_ERR_UNSAFE_ARCHIVE');
  });

  test('an absolute path is refused', async () => {
    await assertUntouched(await push(await compress(withExtra(v2.archive, [{ name: '/etc/cron.d/ferry', data: 'x' }]), 'zstd'), v2), 'FERRY_ERR_UNSAFE_ARCHIVE');
  });

  test('a layer symlink that leaves the archive is refused', async () => {
    const layer = `${'e'.repeat(64)}/layer.tar`;
    await assertUntouched(await push(await compress(withExtra(v2.archive, [{ name: layer, type: '2', linkname: '../../../../etc/shadow' }]), 'zstd'), v2), 'FERRY_ERR_UNSAFE_ARCHIVE');
  });

  test('a device file is refused', async () => {
    await assertUntouched(await push(await compress(withExtra(v2.archive, [{ name: 'sda', type: '4' }]), 'zstd'), v2), 'FERRY_ERR_UNSAFE_ARCHIVE');
  });

  test('a decompression bomb is refused at the header that declares it', async () => {
    // A few KiB of zstd claiming a 4 GiB layer: over 1 GiB (the floor, as 200× the package is less).
    const bomb = Buffer.concat([tarHeader(`${'b'.repeat(64)}/layer.tar`, 4 * 1024 ** 3), Buffer.alloc(1024 * 1024)]);
    await assertUntouched(await push(await compress(bomb, 'zstd'), v2), 'FERRY_ERR_ARCHIVE_TOO_LARGE');
  });

  // Row 22: the archive is not the signed image.
  test('an archive of another image than the signed id is refused before the engine completes it', async () => {
    await assertUntouched(await push(await compress(v2.archive, 'zstd'), { id: `sha256:${'0'.repeat(64)}`, diffIds: v2.diffIds }), 'FERRY_ERR_IMAGE_MISMATCH');
  });

  test('layer diff ids other than the signed ones are refused', async () => {
    const diffIds = [...v2.diffIds.slice(0, -1), `sha256:${'1'.repeat(64)}`];
    await assertUntouched(await push(await compress(v2.archive, 'zstd'), { id: v2.id, diffIds }), 'FERRY_ERR_IMAGE_MISMATCH');
  });

  // Row 21 last: it deploys, so the service changes on purpose.
  test('archive tags are stripped: an archive claiming an existing tag retags nothing; Ferry tags the signed ref', async () => {
    // Saved by name, as `docker save ferry-victim-…:16` would: RepoTags and repositories claim the victim's tag.
    await build.getImage(v2.id).tag({ repo: victim.split(':')[0], tag: '16' });
    const byName = await readAll(await build.getImage(victim).get());
    const claimed = JSON.parse(manifestOf(byName)) as { RepoTags: string[] }[];
    assert.deepEqual(claimed[0]?.RepoTags, [victim], 'the archive claims the victim\'s tag');

    const answer = await push(await compress(byName, 'zstd'), v2, { ref: `${repo}:2` });
    assert.equal(answer.status, 200, JSON.stringify(answer));
    assert.equal(answer.result?.state, 'COMPLETED');
    assert.equal((await target.getImage(victim).inspect()).Id, victimId, 'the existing tag still points where it did');
    const loaded = await target.getImage(v2.id).inspect();
    assert.deepEqual(loaded.RepoTags, [`${repo}:2`], 'only the ref Ferry chose names the image');
    const images = await targetImages();
    for (const [id, tags] of baseline.images) assert.deepEqual(images.get(id), tags, `tags of ${id} unchanged`);
  });
});

/** manifest.json of an archive, read the simple way: this test's archives are small. */
function manifestOf(archive: Buffer): string {
  let at = 0;
  while (at + 512 <= archive.length) {
    const name = archive.toString('utf8', at, at + 100).replace(/\0.*$/s, '');
    const size = parseInt(archive.toString('latin1', at + 124, at + 136).replace(/\0.*$/s, ''), 8);
    if (name === 'manifest.json') return archive.toString('utf8', at + 512, at + 512 + size);
    if (name === '') break;
    at += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error('no manifest.json in the archive');
}
