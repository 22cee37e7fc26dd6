/**
 * Layer negotiation against a real `ferry receiver` on the stack's target engine (dockerd 20.10,
 * legacy image store) and images built on its build engine: a push sends only the layers the
 * target lacks; a partial package that leaves out a layer the target does not hold is refused
 * before anything is loaded; and when a held layer goes away between the question and the load,
 * the sender sends the full package by itself.
 *
 * Each run builds its own images on a base layer of random bytes, so what the target holds is
 * known: nothing of this run's images before the first push, whatever other tests do meanwhile.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { signRequest } from '@ferry/auth';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { NullSink } from '@ferry/events';
import { digestOf } from '@ferry/integrity';
import { FerryError, PATHS, type ManifestInput } from '@ferry/protocol';
import { askLayers, buildPackage, inspectImage, push, pushMany, uploadOneShot, type PushResult } from '@ferry/sender';
import { buildLayeredImage, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { testKey, trustFile, keyEnv } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`lyr-${run}`);
const hostId = `lyr-${run}`;
const build = dockerodeFor(s.buildDockerHost);
const target = dockerodeFor(s.targetDockerHost);
const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));
const repo = `ferry-lyr-${run}`;
const services: string[] = [];
const refs: string[] = [];
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
let workDir = '';

async function buildImage(tag: string, base: string, top: string, label = ''): Promise<string> {
  const ref = `${repo}:${tag}`;
  refs.push(ref);
  return buildLayeredImage(s.buildDockerHost, ref, Buffer.from(base, 'base64url'), top, label);
}

function serviceName(label: string): string {
  const name = `${label}-${run}`;
  services.push(name);
  return name;
}

/** Bytes of the image's top layer as the engine counts them (files, without tar headers). */
async function topLayerSize(ref: string): Promise<number> {
  const history = await build.getImage(ref).history() as { Size: number }[];
  return history[0]?.Size ?? 0;
}

describe('layer negotiation', { timeout: 300_000 }, () => {
  let rx: ReceiverProcess;

  before(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'ferry-lyr-'));
    rx = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId });
  });

  after(async () => {
    await rx?.stop().catch(() => undefined);
    for (const name of services) await removeService(target, name);
    await removeImages(target, refs);
    await removeImages(build, refs);
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  test('the second push sends only the top layer, and the target runs exactly the signed image', async () => {
    const base = randomBytes(256 * 1024).toString('base64url');
    const v1 = await buildImage('v1', base, `v1 ${run}\n`);
    const v2 = await buildImage('v2', base, `v2 ${run} — a different top layer\n`);
    const service = serviceName('web');

    const first = await runFerry(['push', `${repo}:v1`, '--to', rx.url, '--name', service, '--network', 'none', '--json'], senderEnv);
    assert.equal(first.code, 0, first.stdout + first.stderr);
    const one = JSON.parse(first.stdout) as PushResult;
    assert.equal(one.imageId, v1);
    // The target never saw this run's base layer: it went in the first package (incompressible).
    assert.ok(one.bytes.package > 256 * 1024, `first package ${one.bytes.package} bytes`);

    const second = await runFerry(['push', `${repo}:v2`, '--to', rx.url, '--name', service, '--network', 'none', '--json'], senderEnv);
    assert.equal(second.code, 0, second.stdout + second.stderr);
    const two = JSON.parse(second.stdout) as PushResult;
    const diffIds = (await buildImages.inspect(v2))?.diffIds ?? [];
    assert.equal(diffIds.length, 3);
    assert.equal(two.layers.present, 2, 'the target holds busybox and the base layer');
    assert.deepEqual(two.layers.omitted, diffIds.slice(0, 2));
    assert.equal(two.layers.fullAfterRefusal, false);
    // manifest.json, the config and three small layer JSON files ride along with the top layer.
    const margin = 32 * 1024;
    const top = await topLayerSize(`${repo}:v2`);
    assert.ok(two.bytes.package < top + margin, `second package ${two.bytes.package} bytes, top layer ${top} bytes`);
    assert.ok(two.bytes.package * 10 < one.bytes.package, `second package ${two.bytes.package} bytes vs first ${one.bytes.package}`);
    assert.ok(two.timings.save >= 0 && two.timings.hash >= 0 && two.timings.compress >= 0 && two.timings.send >= 0);

    // The image the target loaded is the signed one, layer for layer, and the container runs it.
    assert.equal(two.deployment.state, 'COMPLETED');
    assert.equal(two.imageId, v2);
    const loaded = await target.getImage(v2).inspect();
    assert.deepEqual(loaded.RootFS.Layers, diffIds);
    const container = await target.getContainer(service).inspect();
    assert.equal(container.Image, v2);
    assert.equal(container.State.Running, true);
  });

  test('a partial package that leaves out a layer the target lacks is refused before loading', async () => {
    const id = await buildImage('lacking', randomBytes(64 * 1024).toString('base64url'), `lacking ${run}\n`);
    const image = await inspectImage(buildImages, `${repo}:lacking`);
    const answer = await askLayers({ url: rx.url, credentials: key, audience: hostId }, image.diffIds);
    assert.ok(answer.present < 2, 'the target does not hold this run\'s base layer');
    // Left out: the random base layer, which the target has never seen.
    const pkg = await buildPackage(buildImages, image, 'zstd', { omit: [image.diffIds[1] ?? ''] });
    try {
      assert.deepEqual(pkg.omittedLayers, [image.diffIds[1]]);
      const deploymentId = randomUUID();
      const manifest: ManifestInput = {
        schema: 'ferry.manifest/v1', deploymentId, createdAt: new Date().toISOString(),
        image: { ref: `${repo}:lacking`, id, diffIds: image.diffIds },
        package: { format: 'docker-archive', compression: 'zstd', size: pkg.size, digest: pkg.digest, omittedLayers: pkg.omittedLayers },
        service: { name: serviceName('lacking'), network: 'none' },
      };
      await assert.rejects(
        uploadOneShot({ url: rx.url, credentials: key, audience: hostId, manifestJson: JSON.stringify(manifest), packagePath: pkg.path, packageSize: pkg.size }),
        (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_LAYERS_MISSING' && err.status === 409,
      );
      // Refused before the deployment began: no journal record, nothing loaded, nothing tagged.
      const path = `${PATHS.deployments}/${deploymentId}`;
      const record = await fetch(`${rx.url}${path}`, { headers: signRequest({ method: 'GET', path, contentDigest: digestOf(''), audience: hostId, ...key }) });
      assert.equal(record.status, 404);
      await assert.rejects(target.getImage(id).inspect(), (err: { statusCode?: number }) => err.statusCode === 404);
    } finally {
      await pkg.remove();
    }
  });

  test('a held layer that goes away after the question: the partial package is refused and the full one sent', async () => {
    const base = randomBytes(128 * 1024).toString('base64url');
    const v1 = await buildImage('gone1', base, `gone v1 ${run}\n`);
    const v2 = await buildImage('gone2', base, `gone v2 ${run}\n`);
    // The target gets v1 (and with it the base layer) without running it, so it can be removed.
    await new ImageStore(createDockerClient(s.targetDockerHost)).load(await buildImages.save(v1));
    const service = serviceName('gone');
    let removedAfterQuestion = false;
    const result = await push({ image: `${repo}:gone2`, to: rx.url, service: { name: service, network: 'none' }, compression: 'zstd' }, {
      images: buildImages, events: new NullSink(), credentials: key, source: `ferry://sender/test-${run}`,
      onNegotiated: async (layers) => {
        assert.equal(layers.present, 2, 'the target held the base layer when asked');
        // The only image holding this run's base layer goes: its layers leave the layer store.
        await target.getImage(v1).remove({ force: true });
        removedAfterQuestion = true;
      },
    });
    assert.equal(removedAfterQuestion, true);
    assert.equal(result.layers.fullAfterRefusal, true);
    assert.deepEqual(result.layers.omitted, [], 'the package that was deployed is the full one');
    assert.ok(result.bytes.package > 128 * 1024);
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.equal(result.imageId, v2);
    assert.deepEqual((await target.getImage(v2).inspect()).RootFS.Layers, (await buildImages.inspect(v2))?.diffIds);
    assert.equal((await target.getContainer(service).inspect()).Image, v2);
  });

  test('several targets: the one package leaves out only what every target holds', async () => {
    const base = randomBytes(64 * 1024).toString('base64url');
    const v1 = await buildImage('fan1', base, `fan v1 ${run}\n`);
    const v2 = await buildImage('fan2', base, `fan v2 ${run}\n`);
    const diffIds = (await buildImages.inspect(v2))?.diffIds ?? [];
    // The target engine holds v2's lower two layers (through v1); the build engine all of v2.
    await new ImageStore(createDockerClient(s.targetDockerHost)).load(await buildImages.save(v1));
    const onBuild = await startReceiverProcess({ DOCKER_HOST: s.buildDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `lyrb-${run}` });
    const service = serviceName('fan');
    try {
      const result = await pushMany({ image: `${repo}:fan2`, targets: [rx.url, onBuild.url], service: { name: service, network: 'none' }, compression: 'zstd' }, {
        images: buildImages, events: new NullSink(), credentials: key, source: `ferry://sender/test-${run}`,
      });
      assert.deepEqual(result.layers.targets.map((t) => t.present), [2, 3]);
      assert.deepEqual(result.layers.omitted, diffIds.slice(0, 2));
      assert.equal(result.ok, true, JSON.stringify(result.targets.map((t) => t.error)));
      for (const t of result.targets) {
        assert.equal(t.bytes.sent, result.bytes.package, 'each target got the same one package');
        assert.equal(t.fullAfterRefusal, undefined);
      }
      assert.equal((await target.getContainer(service).inspect()).Image, v2);
      assert.equal((await build.getContainer(service).inspect()).Image, v2);
    } finally {
      await onBuild.stop();
      await removeService(build, service);
      await target.getImage(v1).remove({ force: true }).catch(() => undefined);
    }
  });

  test('an image whose every layer the target holds travels as little more than its config', async () => {
    const base = randomBytes(64 * 1024).toString('base64url');
    const held = await buildImage('held', base, `held ${run}\n`);
    // The same layers under another config (a label makes no layer): a new image id.
    const relabelled = await buildImage('relabelled', base, `held ${run}\n`, `ferry.test.run=${run}`);
    assert.notEqual(relabelled, held);
    await new ImageStore(createDockerClient(s.targetDockerHost)).load(await buildImages.save(held));
    try {
      const service = serviceName('relabelled');
      const result = await push({ image: `${repo}:relabelled`, to: rx.url, service: { name: service, network: 'none' }, compression: 'zstd' }, {
        images: buildImages, events: new NullSink(), credentials: key, source: `ferry://sender/test-${run}`,
      });
      assert.equal(result.layers.omitted.length, 3);
      assert.ok(result.bytes.package < 16 * 1024, `package ${result.bytes.package} bytes`);
      assert.equal(result.deployment.state, 'COMPLETED');
      assert.equal((await target.getContainer(service).inspect()).Image, relabelled);
    } finally {
      await target.getImage(held).remove({ force: true }).catch(() => undefined);
    }
  });

  test('POST /v1/layers is signed like every /v1/ request and checks its body', async () => {
    const body = JSON.stringify({ diffIds: ['sha256:' + 'a'.repeat(64)] });
    const path = PATHS.layers;
    const unsigned = await fetch(`${rx.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    assert.equal(unsigned.status, 401);
    const signed = (digest: string): Record<string, string> => ({
      ...signRequest({ method: 'POST', path, contentDigest: digest, audience: hostId, ...key }), 'content-type': 'application/json',
    });
    const ok = await fetch(`${rx.url}${path}`, { method: 'POST', headers: signed(digestOf(body)), body });
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { imageStore: 'legacy', present: [] });
    const other = await fetch(`${rx.url}${path}`, { method: 'POST', headers: signed(digestOf('{}')), body });
    assert.equal(other.status, 422);
    assert.equal(((await other.json()) as { error: { code: string } }).error.code, 'FERRY_ERR_BODY_DIGEST_MISMATCH');
  });

  test('POST /v1/layers answers bad input with a typed 4xx', async () => {
    const path = PATHS.layers;
    const id = 'sha256:' + 'a'.repeat(64);
    const cases: [string, string, number, string, string?][] = [
      ['malformed JSON', '{"diffIds":', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['JSON null', 'null', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['wrong type', JSON.stringify({ diffIds: id }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['not a digest', JSON.stringify({ diffIds: ['sha256:../../etc'] }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['no ids', JSON.stringify({ diffIds: [] }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['too many ids', JSON.stringify({ diffIds: Array.from({ length: 1001 }, () => id) }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['unknown field', JSON.stringify({ diffIds: [id], extra: 1 }), 400, 'FERRY_ERR_BAD_REQUEST'],
      ['oversize body', JSON.stringify({ diffIds: [id], pad: 'a'.repeat(200 * 1024) }), 413, 'FERRY_ERR_PAYLOAD_TOO_LARGE'],
      ['wrong media type', JSON.stringify({ diffIds: [id] }), 415, 'FERRY_ERR_UNSUPPORTED_MEDIA_TYPE', 'text/plain'],
    ];
    for (const [name, body, status, code, type] of cases) {
      const headers = { ...signRequest({ method: 'POST', path, contentDigest: digestOf(body), audience: hostId, ...key }), 'content-type': type ?? 'application/json' };
      const answer = await fetch(`${rx.url}${path}`, { method: 'POST', headers, body });
      assert.deepEqual([answer.status, (await answer.json() as { error: { code: string } }).error.code], [status, code], name);
    }
  });
});
