/**
 * `ferry sender`, the sender service, as real processes over real signed HTTP: a deployment
 * document POSTed to it is built/packaged on the stack's build engine and deployed by a real
 * `ferry receiver` on its target engine; refusals (bad signature, invalid document, unknown id)
 * carry their codes; a caller's grants must cover every service of a document; job records survive
 * a restart, and a job cut off by SIGKILL is answered as failed with FERRY_ERR_SENDER_INTERRUPTED
 * once the service is back.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NatsConnection } from 'nats';
import { SignedClient, signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { FerryError } from '@ferry/protocol';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { EventWatcher } from '../helpers/events.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { ROOT, buildTestImage, freePort, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile, type TestKey } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
/** The sender service's own key: the receiver trusts it. */
const rxKey = testKey(`ss-rx-${run}`);
/** Calls the sender service, granted everything. */
const caller = testKey(`ss-ci-${run}`);
/** Calls it too, granted the services named `only-*` alone. */
const narrow = testKey(`ss-narrow-${run}`);
const repo = `ferry-ss-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const services: string[] = [];

interface JobView {
  id: string;
  state: string;
  createdAt: string;
  finishedAt?: string;
  error?: { code: string };
  services: { service: string; image: string; state: string; error?: { code: string }; targets: { url: string; host?: string; deploymentId?: string; state: string; error?: { code: string } }[] }[];
}

interface SenderProcess {
  url: string;
  child: ChildProcess;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Starts `ferry sender` on a free loopback port and waits until it says it listens. */
async function startSender(dataDir: string): Promise<SenderProcess> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('FERRY_') && k !== 'DOCKER_HOST') env[k] = v;
  const child = spawn(process.execPath, [join(ROOT, 'bin/ferry.js'), 'sender'], {
    env: {
      ...env, FERRY_LISTEN: `127.0.0.1:${await freePort()}`, FERRY_HOST_ID: `ss-${run}`, FERRY_DATA_DIR: dataDir,
      FERRY_TRUST_FILE: trustFile([caller, { key: narrow, services: ['only-*'] }]), ...keyEnv(rxKey),
      DOCKER_HOST: s.buildDockerHost, FERRY_NATS_URL: s.natsUrl, FERRY_REDIS_URL: s.redisUrl,
      // Packages are spooled there: what a SIGKILLed sender leaves goes with the data dir.
      TMPDIR: dataDir,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (text) => {
      try {
        const entry = JSON.parse(text) as { msg?: string; url?: string };
        if (entry.msg === 'sender listening' && typeof entry.url === 'string') resolve(entry.url);
      } catch { /* not a log line */ }
    });
    child.once('exit', (code) => reject(new Error(`sender exited with ${code}: ${stderr}`)));
  });
  return {
    url, child,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      await exited;
    },
  };
}

function client(url: string, credentials: TestKey = caller): SignedClient {
  return new SignedClient({ url, credentials, peer: 'sender', unreachable: 'FERRY_ERR_SENDER_UNREACHABLE', learn: 'healthz' });
}

/** Polls until the job has left queued/running; a hang fails by the suite's timeout. */
async function settled(api: SignedClient, id: string): Promise<JobView> {
  for (;;) {
    const job = await api.request('GET', `/v1/deployments/${id}`) as JobView;
    if (job.state === 'succeeded' || job.state === 'failed') return job;
    await sleep(300);
  }
}

function serviceName(label: string): string {
  const name = `${label}-${run}`;
  services.push(name);
  return name;
}

async function refusal(promise: Promise<unknown>): Promise<FerryError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof FerryError) return err;
    throw err;
  }
  assert.fail('expected a refusal');
}

describe('sender service', { timeout: 600_000 }, () => {
  let rx: ReceiverProcess;
  let dataDir: string;
  let sender: SenderProcess;
  let nc: NatsConnection;
  let watcher: EventWatcher;

  before(async () => {
    nc = await natsConnect(s.natsReaderUrl);
    // Build events name the sender service as their host, transfer events the receiver: both are watched.
    watcher = new EventWatcher(nc, 'ferry.events.>');
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    rx = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(rxKey), FERRY_HOST_ID: `ssrx-${run}` });
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-ss-'));
    await mkdir(join(dataDir, 'ctx'));
    await writeFile(join(dataDir, 'ctx', 'Dockerfile'), `FROM ${repo}:1\nCOPY hello.txt /www/hello.txt\n`);
    await writeFile(join(dataDir, 'ctx', 'hello.txt'), `hello ${run}\n`);
    sender = await startSender(dataDir);
  });

  after(async () => {
    await sender?.stop().catch(() => undefined);
    await rx?.stop().catch(() => undefined);
    for (const name of services) await removeService(target, name);
    await removeImages(target, [`${repo}:1`]);
    await removeImages(target, [`${repo}-api:1`]);
    await removeImages(dockerodeFor(s.buildDockerHost), [`${repo}-api:1`, `${repo}:1`]);
    await nc?.drain();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test('a POSTed document is built and deployed in the background; GET follows it to succeeded; events are published; the same id is idempotent', async () => {
    const api = client(sender.url);
    const name = serviceName('web');
    const built = serviceName('api');
    const id = `job-${run}`;
    const document = {
      version: 1, id, services: {
        [name]: { image: `${repo}:1`, targets: [rx.url], network: 'none', env: { MODE: 'service' } },
        [built]: { image: `${repo}-api:1`, build: { context: join(dataDir, 'ctx') }, targets: [rx.url], network: 'none' },
      },
    };
    const accepted = await api.request('POST', '/v1/deployments', document) as { id: string; state: string; links: { self: string } };
    assert.deepEqual({ id: accepted.id, self: accepted.links.self }, { id, self: `/v1/deployments/${id}` });
    assert.ok(['queued', 'running'].includes(accepted.state), accepted.state);

    const job = await settled(api, id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.ok(job.finishedAt);
    assert.deepEqual(job.services.map((sv) => [sv.service, sv.image, sv.state]), [[name, `${repo}:1`, 'succeeded'], [built, `${repo}-api:1`, 'succeeded']]);
    const [t] = job.services[0]?.targets ?? [];
    assert.deepEqual([t?.url, t?.host, t?.state], [rx.url, `ssrx-${run}`, 'COMPLETED']);
    assert.match(t?.deploymentId ?? '', /^[0-9a-f-]{36}$/);
    const container = await target.getContainer(name).inspect();
    assert.equal(container.State.Running, true);
    assert.ok(container.Config.Env.includes('MODE=service'));
    assert.equal((await target.getContainer(built).inspect()).State.Running, true);

    // build.* under the job's id, from the sender service; transfer.* under each target's deployment id.
    const buildDone = await watcher.until(id, 'build.completed');
    assert.equal(buildDone.source, `ferry://sender/ss-${run}`);
    assert.deepEqual(watcher.for(id).map((e) => e.type), ['ferry.build.started', 'ferry.build.completed']);
    for (const sv of job.services) {
      const deploymentId = sv.targets[0]?.deploymentId ?? '';
      await watcher.until(deploymentId, 'transfer.completed');
      assert.equal(watcher.for(deploymentId)[0]?.type, 'ferry.transfer.started');
    }

    const again = await api.request('POST', '/v1/deployments', document) as { id: string; state: string; created: boolean };
    assert.deepEqual([again.id, again.state, again.created], [id, 'succeeded', false], 'the same id answers the existing job');
    const conflict = await refusal(api.request('POST', '/v1/deployments', { ...document, services: { [name]: { ...document.services[name], env: {} } } }));
    assert.deepEqual([conflict.code, conflict.status], ['FERRY_ERR_DEPLOYMENT_CONFLICT', 409]);
  });

  test('refusals: bad signature 401, invalid document 400 naming the field, unknown id 404, a swapped body 422', async () => {
    const forged = await refusal(client(sender.url, testKey(caller.keyId)).request('GET', '/v1/deployments/anything'));
    assert.deepEqual([forged.code, forged.status], ['FERRY_ERR_BAD_SIGNATURE', 401]);

    const api = client(sender.url);
    const invalid = await refusal(api.request('POST', '/v1/deployments', {
      version: 1, services: { [`bad-${run}`]: { image: `${repo}:1`, targets: [rx.url], ports: ['80'], enviroment: {} } },
    }));
    assert.deepEqual([invalid.code, invalid.status], ['FERRY_ERR_BAD_DEPLOYMENT_FILE', 400]);
    const problems = (invalid.details?.problems ?? []) as { path: string; message: string }[];
    assert.deepEqual(problems.map((p) => p.path).sort(), [`services.bad-${run}.enviroment`, `services.bad-${run}.ports[0]`]);
    assert.match(problems.find((p) => p.path.endsWith('enviroment'))?.message ?? '', /did you mean env\?/);

    const missing = await refusal(api.request('GET', `/v1/deployments/nope-${run}`));
    assert.deepEqual([missing.code, missing.status], ['FERRY_ERR_NOT_FOUND', 404]);

    // A body other than the one signed: the signature holds, the digest does not.
    const signed = JSON.stringify({ version: 1, services: {} });
    const headers = signRequest({ method: 'POST', path: '/v1/deployments', contentDigest: digestOf(signed), audience: `ss-${run}`, keyId: caller.keyId, privateKey: caller.privateKey });
    const swapped = await fetch(`${sender.url}/v1/deployments`, {
      method: 'POST', headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ version: 1, services: { [`evil-${run}`]: { image: `${repo}:1`, targets: [rx.url] } } }),
    });
    assert.equal(swapped.status, 422);
    assert.equal((await swapped.json() as { error: { code: string } }).error.code, 'FERRY_ERR_BODY_DIGEST_MISMATCH');
  });

  test('a caller whose grants do not cover every service of the document is refused 403, and no job is made', async () => {
    const api = client(sender.url, narrow);
    const id = `narrow-${run}`;
    const document = {
      version: 1, id, services: {
        [`only-${run}`]: { image: `${repo}:1`, targets: [rx.url], network: 'none' },
        // Built on the sender's engine from a path of the sender's host: the grant does not reach it.
        [`other-${run}`]: { image: `${repo}-other:1`, build: { context: join(dataDir, 'ctx') }, targets: [rx.url], network: 'none' },
      },
    };
    const refused = await refusal(api.request('POST', '/v1/deployments', document));
    assert.deepEqual([refused.code, refused.status, refused.details?.service], ['FERRY_ERR_NOT_GRANTED', 403, `other-${run}`]);
    const missing = await refusal(client(sender.url).request('GET', `/v1/deployments/${id}`));
    assert.equal(missing.code, 'FERRY_ERR_NOT_FOUND', 'no job was made');
    await assert.rejects(dockerodeFor(s.buildDockerHost).getImage(`${repo}-other:1`).inspect(), { statusCode: 404 }, 'nothing was built');
  });

  test('after a restart GET still answers; a job cut off by SIGKILL is failed with FERRY_ERR_SENDER_INTERRUPTED', async () => {
    let api = client(sender.url);
    // A target that never answers keeps the job running through its whole backoff schedule.
    const dead = `http://127.0.0.1:${await freePort()}`;
    const id = `cut-${run}`;
    await api.request('POST', '/v1/deployments', { version: 1, id, services: { [serviceName('cut')]: { image: `${repo}:1`, targets: [dead] } } });
    for (let job = await api.request('GET', `/v1/deployments/${id}`) as JobView; job.state !== 'running'; job = await api.request('GET', `/v1/deployments/${id}`) as JobView) {
      assert.equal(job.state, 'queued');
      await sleep(100);
    }
    await sender.stop('SIGKILL');

    sender = await startSender(dataDir);
    api = client(sender.url);
    const kept = await api.request('GET', `/v1/deployments/job-${run}`) as JobView;
    assert.equal(kept.state, 'succeeded', 'the finished job is still answered after the restart');
    const cut = await api.request('GET', `/v1/deployments/${id}`) as JobView;
    assert.equal(cut.state, 'failed');
    assert.equal(cut.error?.code, 'FERRY_ERR_SENDER_INTERRUPTED');
    assert.equal(cut.services[0]?.state, 'failed');
    assert.ok(cut.finishedAt);
  });

  test('bad input answers a typed 4xx and creates no job', async () => {
    const send = async (method: string, path: string, text: string, type = 'application/json'): Promise<[number, string]> => {
      const headers = { ...signRequest({ method, path, contentDigest: digestOf(text), audience: `ss-${run}`, keyId: caller.keyId, privateKey: caller.privateKey }), 'content-type': type };
      const response = await fetch(`${sender.url}${path}`, { method, headers, ...(method === 'GET' ? {} : { body: text }) });
      return [response.status, (await response.json() as { error: { code: string } }).error.code];
    };
    const id = `typed-${run}`;
    const document = { version: 1, id, services: { [`typed-${run}`]: { image: `${repo}:1`, targets: [rx.url] } } };
    const cases: [string, string, string, string, number, string][] = [
      ['malformed JSON', 'POST', '/v1/deployments', '{"version":', 400, 'FERRY_ERR_BAD_REQUEST'],
      ['JSON null', 'POST', '/v1/deployments', 'null', 400, 'FERRY_ERR_BAD_DEPLOYMENT_FILE'],
      ['JSON array', 'POST', '/v1/deployments', '[]', 400, 'FERRY_ERR_BAD_DEPLOYMENT_FILE'],
      ['wrong types', 'POST', '/v1/deployments', JSON.stringify({ ...document, version: '1', services: [] }), 400, 'FERRY_ERR_BAD_DEPLOYMENT_FILE'],
      ['bad service name', 'POST', '/v1/deployments', JSON.stringify({ ...document, services: { '../x': document.services[`typed-${run}`] } }), 400, 'FERRY_ERR_BAD_DEPLOYMENT_FILE'],
      ['oversize body', 'POST', '/v1/deployments', JSON.stringify({ ...document, pad: 'a'.repeat(1024 ** 2) }), 413, 'FERRY_ERR_PAYLOAD_TOO_LARGE'],
      ['wrong media type', 'POST', '/v1/deployments', JSON.stringify(document), 415, 'FERRY_ERR_UNSUPPORTED_MEDIA_TYPE'],
      ['id not a job id', 'GET', '/v1/deployments/..%2F..%2Fetc', '', 404, 'FERRY_ERR_NOT_FOUND'],
      ['id too long', 'GET', `/v1/deployments/${'a'.repeat(200)}`, '', 404, 'FERRY_ERR_NOT_FOUND'],
      ['id undecodable', 'GET', '/v1/deployments/%ZZ', '', 400, 'FERRY_ERR_BAD_REQUEST'],
    ];
    for (const [name, method, path, text, status, code] of cases) {
      assert.deepEqual(await send(method, path, text, name === 'wrong media type' ? 'text/plain' : 'application/json'), [status, code], name);
    }
    assert.deepEqual(await send('GET', `/v1/deployments/${id}`, ''), [404, 'FERRY_ERR_NOT_FOUND'], 'no job was created');
  });

  test('a rollout with pause: manual pauses after its first wave; POST /v1/releases/ID/continue goes on, after the budget is asked again', async () => {
    const api = client(sender.url);
    const name = serviceName('paused');
    const hog = serviceName('hog');
    // The canary on a private engine, the rest on the stack's target engine with a 64m budget.
    const engine = await PrivateDockerd.start();
    const canary = await startReceiverProcess({ DOCKER_HOST: engine.host, FERRY_TRUST_FILE: trustFile(rxKey), FERRY_HOST_ID: `sspa-${run}` });
    const rest = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(rxKey), FERRY_HOST_ID: `sspb-${run}`, FERRY_BUDGET_MEMORY: '64m' });
    try {
      const document = {
        version: 1, name: `ss-${run}`, rollout: [{ name: 'canary', hosts: 1, pause: 'manual' }],
        services: { [name]: { image: `${repo}:1`, targets: [canary.url, rest.url], network: 'none', memory: '32m' } },
      };
      const accepted = await api.request('POST', '/v1/deployments', document) as { id: string };
      const paused = await settled(api, accepted.id) as JobView & { release?: { id: string; state: string } };
      assert.equal(paused.state, 'succeeded', JSON.stringify(paused));
      assert.equal(paused.release?.state, 'paused');
      const releaseId = paused.release?.id ?? '';
      assert.deepEqual(paused.services[0]?.targets.map((t) => [t.host, t.state]), [[`sspa-${run}`, 'COMPLETED'], [`sspb-${run}`, 'PENDING']]);
      assert.equal((await dockerodeFor(engine.host).getContainer(name).inspect()).State.Running, true);
      await assert.rejects(target.getContainer(name).inspect(), 'the second wave waits');

      // While it waits, another service takes 48m of the second host's 64m: the release does not go on.
      const other = await api.request('POST', '/v1/deployments', { version: 1, services: { [hog]: { image: `${repo}:1`, targets: [rest.url], network: 'none', memory: '48m' } } }) as { id: string };
      assert.equal((await settled(api, other.id)).state, 'succeeded');
      const refused = await api.request('POST', `/v1/releases/${releaseId}/continue`) as { id: string; releaseId: string; links: { self: string } };
      assert.equal(refused.releaseId, releaseId);
      const over = await settled(api, refused.id);
      assert.equal(over.state, 'failed');
      assert.equal(over.error?.code, 'FERRY_ERR_OVER_BUDGET');
      assert.match((over.error as { message?: string } | undefined)?.message ?? '', new RegExp(`sspb-${run}: memory 32 MiB asked \\(${name} 32 MiB\\) \\+ 48 MiB running > budget 64 MiB`));
      await assert.rejects(target.getContainer(name).inspect(), 'nothing was sent');

      // Room again: the release, still paused, goes on and completes.
      await removeService(target, hog);
      const goes = await api.request('POST', `/v1/releases/${releaseId}/continue`) as { id: string };
      const done = await settled(api, goes.id) as JobView & { release?: { id: string; state: string }; continues?: string };
      assert.equal(done.state, 'succeeded', JSON.stringify(done));
      assert.deepEqual([done.release?.id, done.release?.state, done.continues], [releaseId, 'completed', releaseId]);
      assert.equal((await target.getContainer(name).inspect()).State.Running, true);

      const again = await refusal(api.request('POST', `/v1/releases/${releaseId}/continue`));
      assert.deepEqual([again.status, again.code], [404, 'FERRY_ERR_NOT_FOUND'], 'a release goes on once');
    } finally {
      await canary.stop().catch(() => undefined);
      await rest.stop().catch(() => undefined);
      await engine.stop().catch(() => undefined);
    }
  });

  test('continue: an unknown release is 404, a bad id 400, an unsigned call 401, a body 400', async () => {
    const unknown = await refusal(client(sender.url).request('POST', '/v1/releases/rel-20260101T000000Z-0123abcd/continue'));
    assert.deepEqual([unknown.status, unknown.code], [404, 'FERRY_ERR_NOT_FOUND']);
    const send = async (path: string, text = '', sign = true): Promise<[number, string]> => {
      const headers = sign ? { ...signRequest({ method: 'POST', path, contentDigest: digestOf(text), audience: `ss-${run}`, keyId: caller.keyId, privateKey: caller.privateKey }), 'content-type': 'application/json' } : { 'content-type': 'application/json' };
      const response = await fetch(`${sender.url}${path}`, { method: 'POST', headers, body: text });
      return [response.status, (await response.json() as { error: { code: string } }).error.code];
    };
    assert.deepEqual(await send('/v1/releases/rel-20260101T000000Z-0123abcd/continue', '', false), [401, 'FERRY_ERR_AUTH_MISSING']);
    for (const id of ['..%2F..%2Fetc%2Fpasswd', 'rel-bad', `rel-20260101T000000Z-0123abcd${'0'.repeat(200)}`, 'REL-20260101T000000Z-0123ABCD', 'rel-20260101T000000Z-0123abcd.json']) {
      assert.deepEqual(await send(`/v1/releases/${id}/continue`), [400, 'FERRY_ERR_BAD_REQUEST'], id);
    }
    assert.deepEqual(await send('/v1/releases/rel-20260101T000000Z-0123abcd/continue', '{}'), [400, 'FERRY_ERR_BAD_REQUEST'], 'it takes no body');
  });
});
