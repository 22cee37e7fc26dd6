/**
 * Layer negotiation's pure parts: chain ids, working out which layer a legacy `docker save`
 * directory holds, leaving held layers out of a save stream, the inspector's acceptance of such a
 * partial archive, the image store detection and the `--compression auto` rule.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { FerryError, chainIds } from '@ferry/protocol';
import { ArchiveInspector, isContainerdStore } from '@ferry/receiver';
import { LayerFilter, chooseCompression, identifyLayer, isPrivateAddress, layersToOmit, omittableLayers } from '@ferry/sender';
import { tarHeader } from '../helpers/tar.ts';

/** A three-layer image as dockerd 20.10 saved it: its diff ids, and the v1 directory and JSON of each layer. */
const DIFF_IDS = [
  'sha256:6bab0d7224e8f7121b9402d54d6ee0a8f491572ffeca58c31105773af4b8c0be',
  'sha256:c7fdb60faebd7b1bc416ac0e285c13f14b00a701912068d2430de9d97e813aef',
  'sha256:c5cefb48bd65ba2a7b07800d48e38b2a4bc35a40326fdbd6965e27b1db45d7e0',
];
const EMPTY_CONFIG = '"container_config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null}';
const LAYER_DIRS = [
  {
    dir: '610d141a3fb823fc841c4a03b19a625d85842f8e333c0caade9aec693067008c',
    json: `{"id":"610d141a3fb823fc841c4a03b19a625d85842f8e333c0caade9aec693067008c","created":"1970-01-01T00:00:00Z",${EMPTY_CONFIG},"os":"linux"}`,
  },
  {
    dir: 'bfc8a552076ec25991212495d5a2f7340b12aea5e8134eefc7ef5757303d5cc5',
    json: `{"id":"bfc8a552076ec25991212495d5a2f7340b12aea5e8134eefc7ef5757303d5cc5","parent":"610d141a3fb823fc841c4a03b19a625d85842f8e333c0caade9aec693067008c","created":"1970-01-01T00:00:00Z",${EMPTY_CONFIG},"os":"linux"}`,
  },
];

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

interface Entry { name: string; type?: string; data?: string; linkname?: string }

function tar(entries: Entry[]): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    const data = Buffer.from(entry.data ?? '');
    parts.push(tarHeader(entry.name, data.length, entry.type ?? '0', entry.linkname ?? ''), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

function names(archive: Buffer): string[] {
  const found: string[] = [];
  for (let at = 0; at + 512 <= archive.length;) {
    const block = archive.subarray(at, at + 512);
    if (block.every((b) => b === 0)) break;
    found.push(block.toString('utf8', 0, 100).replace(/\0.*$/s, ''));
    at += 512 + Math.ceil(parseInt(block.toString('utf8', 124, 136).replace(/\0.*$/s, ''), 8) / 512) * 512;
  }
  return found;
}

async function through(archive: Buffer, ...stages: NodeJS.ReadWriteStream[]): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from([archive]), ...stages as [NodeJS.ReadWriteStream], new Writable({ write(chunk: Buffer, _e, cb) { out.push(chunk); cb(); } }));
  return Buffer.concat(out);
}

/** A legacy save of the image above: the top layer's directory is ours, its JSON not needed. */
function legacySave(topLayer: Entry = { name: `${'d'.repeat(64)}/layer.tar`, data: 'top layer' }): { archive: Buffer; imageId: string } {
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: DIFF_IDS } });
  const configHex = sha256(config);
  const layers = [...LAYER_DIRS.map((l) => `${l.dir}/layer.tar`), `${'d'.repeat(64)}/layer.tar`];
  const entries: Entry[] = [];
  for (const [i, layer] of LAYER_DIRS.entries()) {
    entries.push({ name: `${layer.dir}/`, type: '5' }, { name: `${layer.dir}/VERSION`, data: '1.0' }, { name: `${layer.dir}/json`, data: layer.json }, { name: `${layer.dir}/layer.tar`, data: `layer ${i} `.repeat(300) });
  }
  entries.push({ name: `${'d'.repeat(64)}/`, type: '5' }, topLayer);
  entries.push({ name: `${configHex}.json`, data: config }, { name: 'manifest.json', data: JSON.stringify([{ Config: `${configHex}.json`, RepoTags: null, Layers: layers }]) });
  return { archive: tar(entries), imageId: `sha256:${configHex}` };
}

describe('chain ids', () => {
  it('match the layer store of a real engine (the v1 ids dockerd 20.10 derived from them)', () => {
    assert.deepEqual(chainIds(DIFF_IDS), [
      'sha256:6bab0d7224e8f7121b9402d54d6ee0a8f491572ffeca58c31105773af4b8c0be',
      'sha256:5c28bf4ca5e7be0849f3f5c9607f3df366487757a75a8eed4f2b82f510339dec',
      'sha256:21ca27261232a1fc1a21e112faf6ada5ca3feb4bc8086809ab85e93098f590b5',
    ]);
    assert.deepEqual(chainIds([]), []);
  });

  it('place each legacy layer directory at its position, and no other', () => {
    const chains = chainIds(DIFF_IDS);
    assert.equal(identifyLayer(LAYER_DIRS[0]?.json ?? '', LAYER_DIRS[0]?.dir ?? '', chains), 0);
    assert.equal(identifyLayer(LAYER_DIRS[1]?.json ?? '', LAYER_DIRS[1]?.dir ?? '', chains), 1);
    assert.equal(identifyLayer(LAYER_DIRS[1]?.json ?? '', LAYER_DIRS[0]?.dir ?? '', chains), undefined);
    assert.equal(identifyLayer('not json', LAYER_DIRS[0]?.dir ?? '', chains), undefined);
  });
});

describe('what a package may leave out', () => {
  it('is the held bottom part, minus any layer repeated above it', () => {
    assert.deepEqual(omittableLayers(['a', 'b', 'c'], 2), ['a', 'b']);
    assert.deepEqual(omittableLayers(['a', 'b', 'a'], 2), ['b']);
    assert.deepEqual(omittableLayers(['a', 'b'], 0), []);
  });

  it('with several targets, is what every one holds', () => {
    const ids = ['a', 'b', 'c'];
    assert.deepEqual(layersToOmit(ids, [{ url: 'x', present: 3 }, { url: 'y', present: 1 }]), ['a']);
    assert.deepEqual(layersToOmit(ids, [{ url: 'x', present: 3 }, { url: 'y', present: 0, unanswered: 'HTTP 404' }]), []);
  });
});

describe('LayerFilter', () => {
  it('leaves out the held layers of a legacy save and keeps everything else', async () => {
    const { archive, imageId } = legacySave();
    const filter = new LayerFilter(DIFF_IDS, DIFF_IDS.slice(0, 2));
    const partial = await through(archive, filter);
    assert.deepEqual(filter.omitted, DIFF_IDS.slice(0, 2));
    const kept = names(partial);
    for (const layer of LAYER_DIRS) {
      assert.ok(!kept.includes(`${layer.dir}/layer.tar`));
      assert.ok(kept.includes(`${layer.dir}/json`));
    }
    assert.ok(kept.includes(`${'d'.repeat(64)}/layer.tar`));
    assert.ok(kept.includes('manifest.json'));
    assert.ok(partial.length < archive.length);

    // The receiver takes it only for the layers the manifest signs as left out.
    const accepted = new ArchiveInspector({ imageId, diffIds: DIFF_IDS, omittedLayers: DIFF_IDS.slice(0, 2) }, { limit: 1024 ** 2 });
    await through(partial, accepted);
    const refused = new ArchiveInspector({ imageId, diffIds: DIFF_IDS, omittedLayers: DIFF_IDS.slice(0, 1) }, { limit: 1024 ** 2 });
    await assert.rejects(through(partial, refused), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_BAD_ARCHIVE' && /bfc8a552/.test(err.message));
    const whole = new ArchiveInspector({ imageId, diffIds: DIFF_IDS }, { limit: 1024 ** 2 });
    await assert.rejects(through(partial, whole), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_ERR_BAD_ARCHIVE');
  });

  it('passes a save through unchanged when nothing is to be left out or nothing can be placed', async () => {
    const { archive } = legacySave();
    assert.deepEqual(await through(archive, new LayerFilter(DIFF_IDS, [])), archive);
    const unknownImage = new LayerFilter([`sha256:${'e'.repeat(64)}`, ...DIFF_IDS.slice(1)], [`sha256:${'e'.repeat(64)}`]);
    assert.deepEqual(await through(archive, unknownImage), archive);
    assert.deepEqual(unknownImage.omitted, []);
  });

  it('leaves out blobs named by a held diff id (the OCI layout of newer engines)', async () => {
    const hex = DIFF_IDS[0]?.slice(7) ?? '';
    const archive = tar([{ name: 'blobs/', type: '5' }, { name: `blobs/sha256/${hex}`, data: 'layer' }, { name: `blobs/sha256/${'f'.repeat(64)}`, data: 'config' }, { name: 'manifest.json', data: '[]' }]);
    const filter = new LayerFilter(DIFF_IDS, [DIFF_IDS[0] ?? '']);
    assert.deepEqual(names(await through(archive, filter)), ['blobs/', `blobs/sha256/${'f'.repeat(64)}`, 'manifest.json']);
    assert.deepEqual(filter.omitted, [DIFF_IDS[0]]);
  });

  it('gives up (the package is then built whole) when a kept layer links to a left-out one', async () => {
    const { archive } = legacySave({ name: `${'d'.repeat(64)}/layer.tar`, type: '2', linkname: `../${LAYER_DIRS[0]?.dir ?? ''}/layer.tar` });
    await assert.rejects(through(archive, new LayerFilter(DIFF_IDS, DIFF_IDS.slice(0, 1))), { name: 'PartialPackageUnavailable' });
  });
});

describe('image store detection', () => {
  it('knows the containerd store by its snapshotter driver type', () => {
    assert.equal(isContainerdStore({ Driver: 'overlayfs', DriverStatus: [['driver-type', 'io.containerd.snapshotter.v1']] }), true);
    assert.equal(isContainerdStore({ Driver: 'overlay2', DriverStatus: [['Backing Filesystem', 'extfs'], ['Supports d_type', 'true']] }), false);
    assert.equal(isContainerdStore({}), false);
  });
});

describe('--compression auto: the first guess, by address', () => {
  const guess = async (urls: string[], omitted = 0, streamed = true): Promise<string> => {
    const d = await chooseCompression('auto', { urls, omitted, layers: 8, streamed });
    return `${d.compression}${d.level === undefined ? '' : ` ${d.level}`}`;
  };

  it('knows private addresses', () => {
    for (const address of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.0.1', '::1', 'fd00::1', 'fe80::1', '::ffff:10.0.0.1']) {
      assert.equal(isPrivateAddress(address), true, address);
    }
    for (const address of ['8.8.8.8', '172.32.0.1', '100.64.0.1', '2001:db8::1', '::ffff:8.8.8.8']) {
      assert.equal(isPrivateAddress(address), false, address);
    }
  });

  it('loopback is uncompressed; a private link streams uncompressed until measured, and a spooled package there gets zstd 1; a public one zstd 3', async () => {
    assert.equal(await guess(['http://127.0.0.1:7701', 'http://[::1]:7701', 'http://localhost:7701']), 'none');
    assert.equal(await guess(['http://127.0.0.1:7701', 'http://10.0.0.5:7701']), 'none');
    assert.equal(await guess(['http://10.0.0.5:7701'], 0, false), 'zstd 1');
    assert.equal(await guess(['http://127.0.0.1:7701', 'http://203.0.113.5:7701']), 'zstd 3');
    const asked = await chooseCompression('gzip', { urls: ['http://127.0.0.1:7701'], omitted: 0, layers: 8, streamed: true });
    assert.deepEqual([asked.compression, asked.measured], ['gzip', false]);
  });

  it('a package without most of the image is a few top layers: zstd, even on a fast link, but not to this machine', async () => {
    assert.equal(await guess(['http://10.0.0.5:7701'], 7), 'zstd 3');
    assert.equal(await guess(['http://10.0.0.5:7701', 'http://127.0.0.1:7701'], 7), 'zstd 3');
    assert.equal(await guess(['http://127.0.0.1:7701'], 7), 'none');
    assert.equal(await guess(['http://127.0.0.1:7701'], 4), 'none');
    assert.equal((await chooseCompression('none', { urls: ['http://127.0.0.1:7701'], omitted: 7, layers: 8, streamed: true })).compression, 'none');
  });
});

