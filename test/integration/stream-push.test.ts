/**
 * `ferry push` to one target streams the package (docs/protocol.md §10.6) to a real `ferry
 * receiver` on the stack's target engine: the image arrives with its id and its container runs
 * healthy. `--no-stream` sends the spooled package instead, and so does the sender by itself when
 * the receiver does not offer streams (an older one: 404 at create) or the stream goes away
 * mid-way — played by a loopback HTTP proxy in front of the real receiver.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { NullSink } from '@ferry/events';
import { push as pushApi, type PushResult } from '@ferry/sender';
import { buildLayeredImage, buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { testKey, trustFile, keyEnv } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`sp-${run}`);
const hostId = `sp-${run}`;
const repo = `ferry-sp-${run}`;
const target = dockerodeFor(s.targetDockerHost);
const build = dockerodeFor(s.buildDockerHost);
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
const refs: string[] = [];

async function buildImage(tag: string, base: Buffer, top: string): Promise<string> {
  const ref = `${repo}:${tag}`;
  refs.push(ref);
  return buildLayeredImage(s.buildDockerHost, ref, base, top);
}

/** What the proxy does to a request instead of forwarding it; undefined forwards it. */
type Intercept = (req: IncomingMessage) => { status: number; code: string } | undefined;

/** A loopback HTTP proxy to the receiver that answers some requests itself and records them all. */
class InterceptingProxy {
  readonly server: Server;
  url = '';
  seen: string[] = [];
  intercept: Intercept = () => undefined;
  /** Forwards the request, then cuts the client's connection instead of passing the answer on. */
  loseAnswer: (req: IncomingMessage) => boolean = () => false;

  constructor(upstream: () => string) {
    this.server = createServer((req, res) => this.#handle(req, res, new URL(upstream())));
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  #handle(req: IncomingMessage, res: ServerResponse, upstream: URL): void {
    this.seen.push(`${req.method ?? ''} ${req.url ?? ''}`);
    const own = this.intercept(req);
    if (own) {
      req.resume();
      res.writeHead(own.status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: own.code, message: 'answered by the test proxy' } }));
      return;
    }
    const lose = this.loseAnswer(req);
    const forward = request({ host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers }, (answer) => {
      if (lose) {
        answer.resume();
        req.socket.destroy();
        return;
      }
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  }
}

describe('streamed push', { timeout: 300_000 }, () => {
  let receiver: ReceiverProcess;
  let imageId = '';
  const image = `${repo}:1`;
  const services: string[] = [];
  const proxy = new InterceptingProxy(() => receiver.url);

  before(async () => {
    imageId = await buildTestImage(s.buildDockerHost, image, `stream-${run}`);
    receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: hostId });
    await proxy.start();
  });

  after(async () => {
    await proxy.close();
    await receiver?.stop();
    for (const service of services) await removeService(target, service);
    await removeImages(target, [image, imageId, ...refs]);
    await removeImages(build, [image, ...refs]);
  });

  /** `ferry push` of the test image as a new service on the host network, health-checked. */
  const push = async (to: string, extra: string[] = []): Promise<{ result: PushResult; service: string; port: number }> => {
    const service = `sp-${run}-${services.length}`;
    services.push(service);
    const port = await freePort();
    const answer = await runFerry([
      'push', image, '--to', to, '--name', service, '--network', 'host', '-e', `PORT=${port}`,
      '--health', `http://127.0.0.1:${port}/healthz`, '--health-interval', '100', '--json', ...extra,
    ], senderEnv);
    assert.equal(answer.code, 0, answer.stdout + answer.stderr);
    return { result: JSON.parse(answer.stdout) as PushResult, service, port };
  };

  /** The service's container runs the pushed image on the target engine and serves this run's variant. */
  const assertRunning = async (service: string, port: number): Promise<void> => {
    assert.equal((await target.getImage(imageId).inspect()).Id, imageId);
    const container = await target.getContainer(service).inspect();
    assert.equal(container.Image, imageId);
    assert.equal(container.State.Running, true);
    const page = await fetch(`http://127.0.0.1:${port}/variant`).then((r) => r.text());
    assert.match(page, new RegExp(`stream-${run}`));
  };

  test('one target: the package is streamed, the image arrives with its id and its container runs healthy', async () => {
    const { result, service, port } = await push(receiver.url);
    assert.equal(result.streamed, true);
    assert.equal(result.exportedBy, 'layer-store');
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.equal(result.imageId, imageId);
    assert.equal(result.host, hostId);
    assert.ok(result.bytes.package > 0 && result.bytes.sent >= result.bytes.package, JSON.stringify(result.bytes));
    await assertRunning(service, port);
  });

  test('--no-stream: the spooled package, the same outcome', async () => {
    const { result, service, port } = await push(receiver.url, ['--no-stream']);
    assert.equal(result.streamed, false);
    assert.equal(result.exportedBy, 'layer-store');
    assert.equal(result.deployment.state, 'COMPLETED');
    await assertRunning(service, port);
  });

  test('--no-layer-store: the stream comes from docker save, the same outcome', async () => {
    const { result, service, port } = await push(receiver.url, ['--no-layer-store']);
    assert.equal(result.streamed, true);
    assert.equal(result.exportedBy, 'docker-save');
    assert.equal(result.deployment.state, 'COMPLETED');
    await assertRunning(service, port);
  });

  test('a part whose answer is lost to a cut connection is not sent again: the receiver says it has it (HEAD), and the stream goes on', async () => {
    proxy.seen = [];
    let patches = 0;
    proxy.intercept = () => undefined;
    proxy.loseAnswer = (req) => req.method === 'PATCH' && patches++ === 0;
    const { result, service, port } = await push(proxy.url);
    proxy.loseAnswer = () => false;
    assert.equal(result.streamed, true);
    assert.equal(result.deployment.state, 'COMPLETED');
    const first = proxy.seen.findIndex((line) => line.startsWith('PATCH '));
    assert.ok(first >= 0 && proxy.seen[first + 1]?.startsWith('HEAD '), proxy.seen.join(', '));
    // Had the receiver taken the part twice, the seal would not match and nothing would load.
    assert.equal(result.bytes.sent, result.bytes.package, JSON.stringify(result.bytes));
    await assertRunning(service, port);
  });

  test('a receiver without streams (404 at create): the push falls back to the package by itself', async () => {
    proxy.seen = [];
    proxy.intercept = (req) => (req.method === 'POST' && req.url === '/v1/streams' ? { status: 404, code: 'FERRY_ERR_NOT_FOUND' } : undefined);
    const { result, service, port } = await push(proxy.url);
    assert.equal(result.streamed, false);
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.ok(proxy.seen.includes('POST /v1/streams'), proxy.seen.join(', '));
    await assertRunning(service, port);
  });

  test('a stream gone mid-way (404 on a part): abandoned with DELETE, then the package under the same id', async () => {
    proxy.seen = [];
    proxy.intercept = (req) => (req.method === 'PATCH' ? { status: 404, code: 'FERRY_ERR_UPLOAD_NOT_FOUND' } : undefined);
    const { result, service, port } = await push(proxy.url);
    assert.equal(result.streamed, false);
    assert.equal(result.deployment.state, 'COMPLETED');
    const patched = proxy.seen.find((line) => line.startsWith('PATCH /v1/streams/'));
    assert.ok(patched, proxy.seen.join(', '));
    assert.ok(proxy.seen.includes(`DELETE ${patched.slice('PATCH '.length)}`), proxy.seen.join(', '));
    // The receiver never journalled the stream's id (nothing was sealed), so the package keeps it.
    const streamId = patched.slice('PATCH /v1/streams/'.length);
    const opened = receiver.logs.find((entry) => entry.msg === 'stream opened' && entry.streamId === streamId);
    assert.equal(opened?.deploymentId, result.deploymentId);
    assert.equal(result.deployment.deploymentId, result.deploymentId);
    await assertRunning(service, port);
  });

  test('a held layer gone after the question: the partial stream is refused, and the whole one streamed', async () => {
    const base = randomBytes(128 * 1024);
    const v1 = await buildImage('gone1', base, `gone v1 ${run}\n`);
    const v2 = await buildImage('gone2', base, `gone v2 ${run}\n`);
    const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));
    // The target gets v1 (and with it the base layer) without running it, so it can be removed.
    await new ImageStore(createDockerClient(s.targetDockerHost)).load(await buildImages.save(v1));
    const service = `sp-${run}-${services.length}`;
    services.push(service);
    const result = await pushApi({ image: `${repo}:gone2`, to: receiver.url, service: { name: service, network: 'none' }, compression: 'zstd' }, {
      images: buildImages, events: new NullSink(), credentials: key, source: `ferry://sender/test-${run}`,
      onNegotiated: async (layers) => {
        assert.equal(layers.present, 2, 'the target held the base layer when asked');
        await target.getImage(v1).remove({ force: true });
      },
    });
    assert.equal(result.streamed, true);
    assert.equal(result.layers.fullAfterRefusal, true);
    assert.deepEqual(result.layers.omitted, []);
    assert.equal(result.deployment.state, 'COMPLETED');
    assert.equal((await target.getContainer(service).inspect()).Image, v2);
  });
});
