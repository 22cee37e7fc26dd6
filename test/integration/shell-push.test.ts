/**
 * deploy/ferry-push.sh, the shell fallback, against a real `ferry receiver` process deploying on
 * the stack's target engine: a one-shot deployment whose container answers, a wrong secret and an
 * unknown key id refused with their codes, a package corrupted after it was hashed refused by the
 * receiver's digest check (one-shot and resumable), and the resumable path with a low threshold.
 * The script runs as a user would run it, with docker, zstd, b3sum, openssl and curl.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT, buildTestImage, capture, freePort, startReceiverProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const SCRIPT = join(ROOT, 'deploy/ferry-push.sh');
const run = randomBytes(4).toString('hex');
const s = stack();
const key = { keyId: `shell-${run}`, secret: randomBytes(24).toString('base64url') };
const hostId = `shell-${run}`;
const repo = `ferry-shell-${run}`;
const service = `shell-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
let receiver: ReceiverProcess;
let port: number;

interface DeploymentRecord { deploymentId: string; host: string; state: string; image: string; containerId: string }

/** Runs the script with the build engine as its DOCKER_HOST and the test's key in the environment. */
function push(tag: string, extra: string[] = [], env: { [name: string]: string } = {}): Promise<RunResult> {
  const base: { [name: string]: string } = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !name.startsWith('FERRY_') && name !== 'DOCKER_HOST') base[name] = value;
  }
  return capture('bash', [
    SCRIPT, `${repo}:${tag}`, receiver.url, service, '--network', 'host', '--env', `PORT=${port}`,
    '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', '100', '--json', ...extra,
  ], { ...base, DOCKER_HOST: s.buildDockerHost, FERRY_KEY_ID: key.keyId, FERRY_KEY: key.secret, ...env });
}

function record(result: RunResult): DeploymentRecord {
  assert.equal(result.code, 0, result.stdout + result.stderr);
  return JSON.parse(result.stdout) as DeploymentRecord;
}

async function variant(): Promise<string> {
  return (await (await fetch(`http://127.0.0.1:${port}/variant`)).text()).trim();
}

describe('deploy/ferry-push.sh', { timeout: 600_000 }, () => {
  before(async () => {
    port = await freePort();
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    await buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`);
    receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_KEYS: `${key.keyId}:${key.secret}`, FERRY_HOST_ID: hostId });
  });

  after(async () => {
    await receiver?.stop();
    await removeService(target, service);
    await removeImages(target, [`${repo}:1`, `${repo}:2`]);
    await removeImages(build, [`${repo}:1`, `${repo}:2`]);
  });

  test('a one-shot push deploys the image and its container answers', async () => {
    const result = await push('1');
    const answer = record(result);
    assert.equal(answer.state, 'COMPLETED');
    assert.equal(answer.host, hostId);
    assert.equal(answer.image, `${repo}:1`);
    assert.match(result.stderr, /one-shot/);
    assert.equal(await variant(), `v1-${run}`);
    assert.equal((await target.getContainer(service).inspect()).Id, answer.containerId);
  });

  test('a wrong secret is refused with FERRY_ERR_BAD_SIGNATURE and an unknown key id with FERRY_ERR_UNKNOWN_KEY', async () => {
    const wrong = await push('2', [], { FERRY_KEY: randomBytes(24).toString('base64url') });
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /FERRY_ERR_BAD_SIGNATURE/);
    assert.match(wrong.stdout, /"code":"FERRY_ERR_BAD_SIGNATURE"/);

    const unknown = await push('2', ['--key-id', `nobody-${run}`]);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /FERRY_ERR_UNKNOWN_KEY/);
    assert.equal(await variant(), `v1-${run}`, 'the running service is untouched');
  });

  test('a package changed after it was hashed is refused with FERRY_ERR_CHECKSUM_MISMATCH, one-shot and resumable', async () => {
    const oneShot = await push('2', [], { FERRY_PUSH_TEST_CORRUPT: '1' });
    assert.equal(oneShot.code, 1, oneShot.stdout + oneShot.stderr);
    assert.match(oneShot.stderr, /FERRY_ERR_CHECKSUM_MISMATCH/);

    const resumable = await push('2', ['--resumable-threshold', '1', '--part-size', '262144'], { FERRY_PUSH_TEST_CORRUPT: '1' });
    assert.equal(resumable.code, 1, resumable.stdout + resumable.stderr);
    assert.match(resumable.stderr, /resumable upload [0-9a-f]{32}/);
    assert.match(resumable.stderr, /FERRY_ERR_CHECKSUM_MISMATCH/);
    assert.equal(await variant(), `v1-${run}`, 'the running service is untouched');
  });

  test('above the threshold the package goes over a resumable upload in parts and deploys', async () => {
    const result = await push('2', ['--resumable-threshold', '1', '--part-size', '262144']);
    const answer = record(result);
    assert.equal(answer.state, 'COMPLETED');
    assert.match(result.stderr, /resumable upload [0-9a-f]{32}: \d+ bytes in parts of 262144/);
    assert.equal(await variant(), `v2-${run}`);

    // The receiver journalled it like any deployment: the script's answer is its record.
    assert.ok((await readdir(join(receiver.dataDir, 'journal'))).includes(`${answer.deploymentId}.jsonl`));
  });
});
