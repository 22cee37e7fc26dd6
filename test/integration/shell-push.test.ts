/**
 * deploy/ferry-push.sh, the shell fallback, against a real `ferry receiver` process deploying on
 * the stack's target engine. The key is made by `openssl genpkey -algorithm ed25519` and the
 * receiver's trust file holds only its public key (and an admin key that signs a grant for a
 * second openssl key). Covered: a one-shot deployment whose container answers; the receiver's
 * identity checked and pinned (`--host-key`); a flipped signature digit, a foreign key under the
 * same key id and an unknown key id refused with their codes; a package corrupted after it was
 * hashed refused by the receiver's digest check (one-shot and resumable); a key known only
 * through the grant it presents; and the resumable path with a low threshold.
 * The script runs as a user would run it, with docker, zstd, b3sum, openssl and curl.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HOST_KEY_FILE, fingerprint, parsePrivateKey } from '@ferry/auth';
import { ROOT, buildTestImage, capture, freePort, startReceiverProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { grantFor, testKey, trustFile, type TestKey } from '../helpers/keys.ts';

const SCRIPT = join(ROOT, 'deploy/ferry-push.sh');
const run = randomBytes(4).toString('hex');
const s = stack();
const hostId = `shell-${run}`;
const repo = `ferry-shell-${run}`;
const service = `shell-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
let dir: string;
let key: TestKey;
/** The admin key of the receiver's trust file: it signs grants, it does not deploy itself. */
let admin: TestKey;
let receiver: ReceiverProcess;
let port: number;

interface DeploymentRecord { deploymentId: string; host: string; state: string; image: string; containerId: string }

/** A key pair made by openssl alone, its public half as base64 of the raw 32 bytes (openssl too). */
async function opensslKey(keyId: string): Promise<TestKey> {
  const file = join(dir, `${keyId}-${randomBytes(3).toString('hex')}.pem`);
  const made = await capture('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', file]);
  assert.equal(made.code, 0, made.stderr);
  const pub = await capture('bash', ['-c', 'openssl pkey -in "$1" -pubout -outform DER | tail -c 32 | base64', '-', file]);
  assert.equal(pub.code, 0, pub.stderr);
  return { keyId, file, publicKey: pub.stdout.trim(), privateKey: createPrivateKey(await readFile(file, 'utf8')) };
}

/** Runs the script with the build engine as its DOCKER_HOST and `signer`'s key in the environment. */
function push(tag: string, extra: string[] = [], env: Record<string, string> = {}, signer: TestKey = key): Promise<RunResult> {
  const base: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !name.startsWith('FERRY_') && name !== 'DOCKER_HOST') base[name] = value;
  }
  return capture('bash', [
    SCRIPT, `${repo}:${tag}`, receiver.url, service, '--network', 'host', '--env', `PORT=${port}`,
    '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', '100', '--json', ...extra,
  ], { ...base, DOCKER_HOST: s.buildDockerHost, FERRY_KEY_ID: signer.keyId, FERRY_KEY_FILE: signer.file, ...env });
}

function record(result: RunResult): DeploymentRecord {
  assert.equal(result.code, 0, result.stdout + result.stderr);
  return JSON.parse(result.stdout) as DeploymentRecord;
}

function refused(result: RunResult, code: string): void {
  assert.equal(result.code, 1, result.stdout + result.stderr);
  assert.match(result.stderr, new RegExp(code));
  assert.match(result.stdout, new RegExp(`"code":"${code}"`));
}

async function variant(): Promise<string> {
  return (await (await fetch(`http://127.0.0.1:${port}/variant`)).text()).trim();
}

describe('deploy/ferry-push.sh', { timeout: 600_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-shell-keys-'));
    key = await opensslKey(`shell-${run}`);
    port = await freePort();
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    await buildTestImage(s.buildDockerHost, `${repo}:2`, `v2-${run}`);
    admin = testKey(`admin-${run}`);
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_HOST_ID: hostId, FERRY_TRUST_FILE: trustFile([key, { key: admin, role: 'admin' }]),
    });
  });

  after(async () => {
    await receiver?.stop();
    await removeService(target, service);
    await removeImages(target, [`${repo}:1`, `${repo}:2`]);
    await removeImages(build, [`${repo}:1`, `${repo}:2`]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a one-shot push signed with an openssl key deploys the image and its container answers', async () => {
    const result = await push('1');
    const answer = record(result);
    assert.equal(answer.state, 'COMPLETED');
    assert.equal(answer.host, hostId);
    assert.equal(answer.image, `${repo}:1`);
    assert.match(result.stderr, /one-shot/);
    assert.equal(await variant(), `v1-${run}`);
    assert.equal((await target.getContainer(service).inspect()).Id, answer.containerId);
    // The audience came from the receiver's signed identity, whose host key the script names.
    const hostKey = parsePrivateKey(await readFile(join(receiver.dataDir, HOST_KEY_FILE), 'utf8'), 'host key');
    assert.match(result.stderr, new RegExp(`is ${hostId}, host key ${fingerprint(hostKey).replace(/[+]/g, '\\+')}`));
  });

  test('a flipped signature digit, a foreign key under the same id and an unknown key id are refused', async () => {
    refused(await push('2', [], { FERRY_PUSH_TEST_CORRUPT: 'signature' }), 'FERRY_ERR_BAD_SIGNATURE');
    refused(await push('2', [], {}, await opensslKey(key.keyId)), 'FERRY_ERR_BAD_SIGNATURE');
    refused(await push('2', ['--key-id', `nobody-${run}`]), 'FERRY_ERR_UNKNOWN_KEY');
    assert.equal(await variant(), `v1-${run}`, 'the running service is untouched');
  });

  test('--host-key pins the receiver: another fingerprint is refused before anything is sent', async () => {
    const other = fingerprint((await opensslKey('other')).privateKey);
    const result = await push('2', ['--host-key', other]);
    refused(result, 'FERRY_ERR_HOST_KEY_MISMATCH');
    assert.doesNotMatch(result.stderr, /packaging/);
  });

  test('a package changed after it was hashed is refused with FERRY_ERR_CHECKSUM_MISMATCH, one-shot and resumable', async () => {
    refused(await push('2', [], { FERRY_PUSH_TEST_CORRUPT: '1' }), 'FERRY_ERR_CHECKSUM_MISMATCH');

    const resumable = await push('2', ['--resumable-threshold', '1', '--part-size', '262144'], { FERRY_PUSH_TEST_CORRUPT: '1' });
    refused(resumable, 'FERRY_ERR_CHECKSUM_MISMATCH');
    assert.match(resumable.stderr, /resumable upload [0-9a-f]{32}/);
    assert.equal(await variant(), `v1-${run}`, 'the running service is untouched');
  });

  test('a key the trust file does not name deploys with the grant it presents (--grant-file), and not without it', async () => {
    const granted = await opensslKey(`granted-${run}`);
    const grant = join(dir, 'grant.json');
    await writeFile(grant, `${JSON.stringify(grantFor(granted, admin, { role: 'deploy', services: [service], hosts: [hostId] }), null, 2)}\n`);
    refused(await push('2', [], {}, granted), 'FERRY_ERR_UNKNOWN_KEY');

    const answer = record(await push('2', ['--grant-file', grant], {}, granted));
    assert.equal(answer.state, 'COMPLETED');
    assert.equal(await variant(), `v2-${run}`);
  });

  test('above the threshold the package goes over a resumable upload in parts and deploys, to the pinned receiver', async () => {
    const hostKey = parsePrivateKey(await readFile(join(receiver.dataDir, HOST_KEY_FILE), 'utf8'), 'host key');
    // The key as PEM text in FERRY_KEY rather than a file: the script keeps it in a file of its own.
    const result = await push('1', ['--resumable-threshold', '1', '--part-size', '262144', '--host-key', fingerprint(hostKey)], {
      FERRY_KEY_FILE: '', FERRY_KEY: await readFile(key.file, 'utf8'),
    });
    const answer = record(result);
    assert.equal(answer.state, 'COMPLETED');
    assert.match(result.stderr, /resumable upload [0-9a-f]{32}: \d+ bytes in parts of 262144/);
    assert.equal(await variant(), `v1-${run}`);

    // The receiver journalled it like any deployment: the script's answer is its record.
    assert.ok((await readdir(join(receiver.dataDir, 'journal'))).includes(`${answer.deploymentId}.jsonl`));
  });
});
