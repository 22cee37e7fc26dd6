/**
 * Keys, trust files, grants and revocations made with the real `ferry` command, end to end: the
 * private key stays in its 0600 file; a grant signed by the trust file's admin key checks out and
 * a grant altered by one byte does not; a real receiver accepts a request that carries the grant
 * (or finds it in its trust file), refuses it on a host the grant does not name, and refuses it
 * once the revocation list reaches its trust file, which it reads again while it runs.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { documentHeader, parseDocument, parsePrivateKey, signRequest, type SignedDocument } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { runFerry, startReceiverProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { stack } from '../helpers/stack.ts';

const s = stack();
const run = randomBytes(3).toString('hex');

interface MadeKey {
  keyId: string;
  file: string;
  publicKey: string;
  fingerprint: string;
}

/** The receiver's answer to a signed `GET /v1/deployments`: its status and error code. */
interface Answer {
  status: number;
  code: string | undefined;
}

function ferry(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return runFerry(args, env);
}

function ok(result: RunResult, label: string): RunResult {
  assert.equal(result.code, 0, `${label}: exit ${result.code}\n${result.stdout}\n${result.stderr}`);
  return result;
}

describe('ferry key, trust and grant against a real receiver', { timeout: 180_000 }, () => {
  let dir: string;
  let trust: string;
  let admin: MadeKey;
  let ci: MadeKey;
  let grantFile: string;
  let grant: SignedDocument;
  let grantId: string;
  const receivers: ReceiverProcess[] = [];

  /** A signed read of the receiver's journal with the ci key, with or without its grant attached. */
  async function read(receiver: ReceiverProcess, options: { grant?: string } = {}): Promise<Answer> {
    const privateKey = parsePrivateKey(await readFile(ci.file, 'utf8'), ci.file);
    const headers = signRequest({
      method: 'GET', path: '/v1/deployments', contentDigest: digestOf(''), keyId: ci.keyId, privateKey, audience: receiver.hostId,
      ...(options.grant === undefined ? {} : { grant: options.grant }),
    });
    const response = await fetch(`${receiver.url}/v1/deployments`, { headers });
    const body = await response.json().catch(() => null) as { error?: { code?: string } } | null;
    return { status: response.status, code: body?.error?.code };
  }

  /** Asks until the answer has `status` (the receiver reads its trust file again within a second or so). */
  async function until(receiver: ReceiverProcess, options: { grant?: string }, status: number): Promise<Answer> {
    for (;;) {
      const answer = await read(receiver, options);
      if (answer.status === status) return answer;
      await sleep(200);
    }
  }

  async function newKey(keyId: string, out?: string): Promise<MadeKey> {
    const result = ok(await ferry(['key', 'new', '--id', keyId, ...(out ? ['--out', out] : []), '--json'], {}), `key new ${keyId}`);
    const facts = JSON.parse(result.stdout) as { keyId: string; file: string; publicKey: string; fingerprint: string };
    return { keyId: facts.keyId, file: facts.file, publicKey: facts.publicKey, fingerprint: facts.fingerprint };
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-trust-cli-'));
    trust = join(dir, 'trust.json');
  });

  after(async () => {
    for (const receiver of receivers) await receiver.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('key new writes the private key 0600, never prints it, and never writes over a key', async () => {
    admin = await newKey('admin', join(dir, 'admin.key'));
    ci = await newKey('ci', join(dir, 'ci.key'));
    for (const key of [admin, ci]) {
      assert.equal((await stat(key.file)).mode & 0o777, 0o600, key.file);
      assert.match(key.publicKey, /^[A-Za-z0-9+/]{43}=$/);
      assert.match(key.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
    }
    // The text output too: public key, fingerprint and what to do next, but no private key.
    const text = ok(await ferry(['key', 'new', '--id', 'other', '--out', join(dir, 'other.key')]), 'key new (text)');
    const pem = await readFile(join(dir, 'other.key'), 'utf8');
    const body = pem.split('\n').filter((l) => l !== '' && !l.startsWith('-----')).join('');
    assert.match(pem, /^-----BEGIN PRIVATE KEY-----/);
    assert.ok(!text.stdout.includes(body) && !text.stderr.includes(body), 'the private key is not printed');
    assert.ok(!text.stdout.includes('PRIVATE KEY'), 'no PEM on stdout');
    assert.match(text.stdout, /ferry trust add --id other --public-key [A-Za-z0-9+/]{43}=/);

    const again = await ferry(['key', 'new', '--id', 'ci', '--out', ci.file]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /exists already/);
    assert.equal(await readFile(join(dir, 'other.key'), 'utf8'), pem);
  });

  test('trust add takes the admin key, and names the flag that is wrong', async () => {
    const added = ok(await ferry(['trust', 'add', '--file', trust, '--id', 'admin', '--public-key', admin.publicKey, '--role', 'admin']), 'trust add admin');
    assert.match(added.stdout, new RegExp(`trusts admin \\(${admin.fingerprint.replace(/[+/]/g, '\\$&')}\\) as admin`));
    assert.equal((await stat(trust)).mode & 0o777, 0o600);

    const malformed = await ferry(['trust', 'add', '--file', trust, '--id', 'x', '--public-key', 'c29tZXRoaW5n', '--role', 'deploy']);
    assert.equal(malformed.code, 2, malformed.stderr);
    assert.match(malformed.stderr, /--public-key c29tZXRoaW5n: neither a public key .* nor a file \[FERRY_ERR_USAGE\]/);
    assert.match(malformed.stderr, /next: see "ferry help trust"/);

    const privateKey = await ferry(['trust', 'add', '--file', trust, '--id', 'x', '--public-key', ci.file, '--role', 'deploy']);
    assert.equal(privateKey.code, 2);
    assert.match(privateKey.stderr, /this is a private key/);

    const selector = await ferry(['trust', 'add', '--file', trust, '--id', 'x', '--public-key', ci.publicKey, '--role', 'deploy', '--host', 'env=prod,role']);
    assert.equal(selector.code, 2);
    assert.match(selector.stderr, /--host env=prod,role: "role" is not KEY=VALUE or KEY!=VALUE/);
    const role = await ferry(['trust', 'add', '--file', trust, '--id', 'x', '--public-key', ci.publicKey, '--role', 'root']);
    assert.equal(role.code, 2);
    assert.match(role.stderr, /--role: one of deploy, read, admin, host/);
  });

  test('grant issue signs a scoped grant that grant show checks against the trust file', async () => {
    grantFile = join(dir, 'ci.grant.json');
    const issued = ok(await ferry([
      'grant', 'issue', '--id', 'ci', '--public-key', ci.publicKey, '--role', 'deploy', '--service', 'web-*', '--host', 'env=prod',
      '--not-after', '30d', '--grace', '7d', '--out', grantFile,
    ], { FERRY_KEY_ID: 'admin', FERRY_KEY_FILE: admin.file }), 'grant issue');
    assert.match(issued.stderr, /wrote /);
    grant = parseDocument(await readFile(grantFile, 'utf8'), 'ferry.grant/v1');
    const payload = JSON.parse(Buffer.from(grant.payload, 'base64').toString('utf8')) as Record<string, unknown>;
    assert.equal(grant.keyId, 'admin');
    assert.deepEqual({ keyId: payload.keyId, publicKey: payload.publicKey, role: payload.role, services: payload.services, hosts: payload.hosts, graceSeconds: payload.graceSeconds }, {
      keyId: 'ci', publicKey: ci.publicKey, role: 'deploy', services: ['web-*'], hosts: ['env=prod'], graceSeconds: 7 * 86_400,
    });
    assert.ok(Date.parse(String(payload.notAfter)) > Date.now() + 29 * 86_400_000);
    grantId = String(payload.id);

    const shown = ok(await ferry(['grant', 'show', grantFile, '--trust', trust]), 'grant show');
    assert.match(shown.stdout, /verdict\s+valid: signed by admin, an admin key of /);
    const json = JSON.parse(ok(await ferry(['grant', 'show', grantFile, '--trust', trust, '--json']), 'grant show --json').stdout) as { valid: boolean };
    assert.equal(json.valid, true);
  });

  test('a grant with one byte of its payload changed is NOT valid', async () => {
    const bytes = Buffer.from(grant.payload, 'base64');
    // The scope widened from web-* to *eb-*: still JSON, still a grant, no longer what admin signed.
    const at = bytes.indexOf('web-*');
    assert.ok(at >= 0);
    bytes[at] = '*'.charCodeAt(0);
    const tampered = join(dir, 'tampered.json');
    await writeFile(tampered, JSON.stringify({ ...grant, payload: bytes.toString('base64') }));
    const shown = await ferry(['grant', 'show', tampered, '--trust', trust]);
    assert.equal(shown.code, 1, shown.stdout + shown.stderr);
    assert.match(shown.stdout, /services\s+\*eb-\*/);
    assert.match(shown.stdout, /verdict\s+NOT valid here: .*signature does not verify with key admin/);
    const added = await ferry(['trust', 'add', tampered, '--file', trust]);
    assert.equal(added.code, 1);
    assert.match(added.stderr, /is left as it was: .*signature does not verify with key admin \[FERRY_ERR_BAD_GRANT\]/);
  });

  test('a receiver accepts the presented grant on a host it names, and not elsewhere', async () => {
    const prod = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trust, FERRY_HOST_ID: `tc-prod-${run}`, FERRY_LABELS: 'env=prod,role=web' });
    receivers.push(prod);
    const staging = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trust, FERRY_HOST_ID: `tc-staging-${run}`, FERRY_LABELS: 'env=staging' });
    receivers.push(staging);

    assert.deepEqual(await read(prod, { grant: documentHeader(grant) }), { status: 200, code: undefined });
    // Not in the trust file yet, so without the grant the key is unknown there.
    assert.deepEqual(await read(prod), { status: 401, code: 'FERRY_ERR_UNKNOWN_KEY' });
    assert.deepEqual(await read(staging, { grant: documentHeader(grant) }), { status: 403, code: 'FERRY_ERR_NOT_GRANTED' });
    const tampered = { ...grant, payload: Buffer.from(Buffer.from(grant.payload, 'base64').toString('utf8').replace('web-*', '*eb-*')).toString('base64') };
    assert.deepEqual(await read(prod, { grant: documentHeader(tampered) }), { status: 401, code: 'FERRY_ERR_BAD_GRANT' });
  });

  test('trust add of the grant lets the receiver know the key without it', async () => {
    const added = ok(await ferry(['trust', 'add', grantFile], { FERRY_TRUST_FILE: trust }), 'trust add grant');
    assert.match(added.stdout, new RegExp(`added grant ${grantId} for ci signed by admin`));
    const prod = receivers[0];
    assert.ok(prod);
    assert.deepEqual(await until(prod, {}, 200), { status: 200, code: undefined });
  });

  test('grant revoke, added to the trust file, refuses the key at once, grant presented or not', async () => {
    const list = join(dir, 'revoked.json');
    ok(await ferry(['grant', 'revoke', '--grant', grantId, '--out', list, '--key-id', 'admin', '--key-file', admin.file]), 'grant revoke');
    const prod = receivers[0];
    assert.ok(prod);
    assert.equal((await read(prod, { grant: documentHeader(grant) })).status, 200, 'not revoked before the list is added');

    ok(await ferry(['trust', 'add', list, '--file', trust]), 'trust add revocations');
    assert.deepEqual(await until(prod, { grant: documentHeader(grant) }, 401), { status: 401, code: 'FERRY_ERR_KEY_REVOKED' });
    assert.deepEqual(await read(prod), { status: 401, code: 'FERRY_ERR_KEY_REVOKED' });

    const shown = await ferry(['grant', 'show', grantFile, '--trust', trust]);
    assert.equal(shown.code, 1);
    assert.match(shown.stdout, /NOT valid here: .*revoked/);
  });

  test('trust list shows the admin key, the grant as revoked and the revocation list', async () => {
    const listed = JSON.parse(ok(await ferry(['trust', 'list', '--file', trust, '--json']), 'trust list').stdout) as {
      keys: { keyId: string; role: string; source: string; state: string; fingerprint: string; services: string[]; hosts: string[] }[];
      revocations: { signedBy: string; grants: string[]; keys: string[] }[];
    };
    assert.deepEqual(listed.keys.map((k) => [k.keyId, k.role, k.source, k.state, k.fingerprint]), [
      ['admin', 'admin', 'trust file', 'valid', admin.fingerprint],
      ['ci', 'deploy', `grant ${grantId}`, 'revoked', ci.fingerprint],
    ]);
    assert.deepEqual(listed.revocations.map((r) => [r.signedBy, r.grants, r.keys]), [['admin', [grantId], []]]);
    const text = ok(await ferry(['trust', 'list'], { FERRY_TRUST_FILE: trust }), 'trust list (text)');
    assert.match(text.stdout, /^ci\s+deploy\s+revoked\s+services web-\*\s+hosts env=prod/m);
    assert.match(text.stdout, new RegExp(`^revoked by admin on .*: keys -; grants ${grantId}$`, 'm'));

    // The admin key cannot go while what it signed is there: that would drop the revocation with it.
    const removed = await ferry(['trust', 'remove', 'admin', '--file', trust]);
    assert.equal(removed.code, 2);
    assert.match(removed.stderr, /--drop-signed/);
  });
});
