/**
 * Two apps on one host by host name through one receiver's proxy (a real HAProxy on a private
 * bridged engine): one plain, one with `tls: true` served on FERRY_PROXY_HTTPS with a certificate
 * made here with openssl and given through FERRY_PROXY_CERTS (`<host>.pem`). Each host name
 * reaches its own app (curl with --resolve and --cacert: the TLS host presents that certificate),
 * plain HTTP to the TLS host is redirected (308) to https, and Host headers that only look like a
 * route's (another case, a port, a longer name) reach what they name and nothing else. Removing a
 * routed service (DELETE /v1/services/:name) takes its route out of the proxy: its host answers
 * 404 and HAProxy has no server for it, the other app serving on.
 */
import assert from 'node:assert/strict';
import { X509Certificate, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ContainerRunner, ImageStore, createDockerClient } from '@ferry/docker';
import { upstreamName, type DeploymentResult, type Route } from '@ferry/protocol';
import { killHaproxy, proxyPaths } from '@ferry/proxy';
import { removeImages } from '../helpers/cleanup.ts';
import { PrivateDockerd } from '../helpers/dockerd.ts';
import { capture, freePort, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { signedCall } from '../helpers/registry.ts';
import { buildRoutedVersion, deployRouted, getVia, haproxyServers } from '../helpers/routed.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`rt-${run}`);
const hostId = `rt-${run}`;
const repo = `ferry-rt-${run}`;
const PLAIN = { service: `plain-${run}`, host: `plain-${run}.test` };
const SECURE = { service: `secure-${run}`, host: `secure-${run}.test` };
const buildImages = new ImageStore(createDockerClient(s.buildDockerHost));

/** curl's status, redirect target and body, the host name resolved to 127.0.0.1 as DNS would. */
async function curl(args: string[]): Promise<{ status: number; location: string; body: string }> {
  const out = await capture('curl', ['-sS', '--max-time', '10', '-w', '\n%{http_code} %{redirect_url}', ...args]);
  assert.equal(out.code, 0, out.stderr);
  const lines = out.stdout.split('\n');
  const [status, location] = (lines.pop() ?? '').split(' ');
  return { status: Number(status), location: location ?? '', body: lines.join('\n').trim() };
}

/** The certificate the HTTPS listener presents for `servername` (SNI), as DER. */
function presented(port: number, servername: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false }, () => {
      const cert = socket.getPeerCertificate();
      socket.end();
      resolve(cert.raw);
    });
    socket.on('error', reject);
  });
}

describe('two routed apps on one host by host name, one over TLS', { timeout: 600_000 }, () => {
  let engine: PrivateDockerd;
  let containers: ContainerRunner;
  let rx: ReceiverProcess;
  let dataDir: string;
  let proxyDir: string;
  let certDir: string;
  let httpPort: number;
  let httpsPort: number;
  let caFile: string;
  const refs: string[] = [];

  const deploy = async (service: string, ref: string, route: Route): Promise<DeploymentResult> => {
    const outcome = await deployRouted({ images: buildImages, url: rx.url, key, audience: hostId, ref, service: { name: service, route, drain: '5s' } });
    if (!outcome.result) assert.fail(`${service}: ${outcome.error?.code ?? 'no answer'} ${outcome.error?.message ?? ''}`);
    return outcome.result;
  };

  before(async () => {
    engine = await PrivateDockerd.start({ bridge: true });
    containers = new ContainerRunner(createDockerClient(engine.host));
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-rt-'));
    proxyDir = await mkdtemp('/tmp/frp-');
    certDir = join(dataDir, 'certs');
    await mkdir(certDir);
    // A self-signed certificate for the TLS host alone: curl trusts it as its only CA.
    const keyFile = join(dataDir, 'secure.key');
    caFile = join(dataDir, 'secure.crt');
    const made = await capture('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-keyout', keyFile, '-out', caFile,
      '-subj', `/CN=${SECURE.host}`, '-addext', `subjectAltName=DNS:${SECURE.host}`,
    ]);
    assert.equal(made.code, 0, made.stderr);
    await writeFile(join(certDir, `${SECURE.host}.pem`), `${await readFile(caFile, 'utf8')}${await readFile(keyFile, 'utf8')}`, { mode: 0o600 });
    httpPort = await freePort();
    httpsPort = await freePort();
    refs.push(await buildRoutedVersion(s.buildDockerHost, repo, 'plain'), await buildRoutedVersion(s.buildDockerHost, repo, 'secure'));
    rx = await startReceiverProcess({
      DOCKER_HOST: engine.host, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: hostId, FERRY_DATA_DIR: dataDir,
      FERRY_PROXY_HTTP: `127.0.0.1:${httpPort}`, FERRY_PROXY_HTTPS: `127.0.0.1:${httpsPort}`, FERRY_PROXY_CERTS: certDir, FERRY_PROXY_DIR: proxyDir,
      FERRY_STABILITY_WINDOW_MS: '500',
    });
    // A receiver with in-memory nonces refuses what was signed before it started (same second included).
    while ((await signedCall(rx.url, { ...key, audience: hostId }, 'GET', '/v1/releases')).status === 401) await sleep(100);
  });

  after(async () => {
    await rx?.stop();
    if (proxyDir) await killHaproxy(proxyPaths(proxyDir));
    await engine?.stop();
    await removeImages(dockerodeFor(s.buildDockerHost), refs);
    for (const dir of [dataDir, proxyDir]) if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('each host name reaches its own app; the TLS one over HTTPS with its own certificate', async () => {
    assert.equal((await deploy(PLAIN.service, `${repo}:plain`, { host: PLAIN.host, path: '/', port: 8080 })).state, 'COMPLETED');
    assert.equal((await deploy(SECURE.service, `${repo}:secure`, { host: SECURE.host, path: '/', port: 8080, tls: true })).state, 'COMPLETED');
    assert.deepEqual(await getVia(httpPort, PLAIN.host, '/'), { status: 200, body: 'plain' });
    const secure = await curl(['--resolve', `${SECURE.host}:${httpsPort}:127.0.0.1`, '--cacert', caFile, `https://${SECURE.host}:${httpsPort}/`]);
    assert.deepEqual(secure, { status: 200, location: '', body: 'secure' });
    const ours = new X509Certificate(await readFile(caFile));
    assert.equal(new X509Certificate(await presented(httpsPort, SECURE.host)).fingerprint256, ours.fingerprint256);
    // Another name is given the default certificate, not this host's.
    assert.notEqual(new X509Certificate(await presented(httpsPort, PLAIN.host)).fingerprint256, ours.fingerprint256);
    // The plain app also answers over HTTPS (its route does not ask for TLS), on the default certificate.
    const plainTls = await curl(['-k', '--resolve', `${PLAIN.host}:${httpsPort}:127.0.0.1`, `https://${PLAIN.host}:${httpsPort}/`]);
    assert.equal(plainTls.body, 'plain');
    // Each app's container is the only server of its own route.
    const servers = [...(await haproxyServers(proxyPaths(proxyDir).adminSocket)).keys()].sort();
    const ids = [(await containers.inspect(PLAIN.service))?.id ?? '', (await containers.inspect(SECURE.service))?.id ?? ''].map(upstreamName).sort();
    assert.deepEqual(servers, ids);
  });

  test('plain HTTP to the TLS host is redirected (308) to https, path and query kept', async () => {
    const answer = await curl(['--resolve', `${SECURE.host}:${httpPort}:127.0.0.1`, `http://${SECURE.host}:${httpPort}/a/b?c=d`]);
    assert.equal(answer.status, 308);
    assert.match(answer.location, new RegExp(`^https://${SECURE.host.replace(/\./g, '\\.')}(?::\\d+)?/a/b\\?c=d$`));
    assert.notEqual(answer.body, 'secure');
  });

  test('Host headers that only look like a route reach what they name and nothing else', async () => {
    // Case and a port are not part of the name.
    assert.deepEqual(await getVia(httpPort, `${PLAIN.host.toUpperCase()}:${httpPort}`, '/'), { status: 200, body: 'plain' });
    // A longer name, a name inside another, another app's name with a path: never a neighbour.
    for (const host of [`${PLAIN.host}.evil`, `x${PLAIN.host}`, `${PLAIN.host}@${SECURE.host}`, '', 'unknown.test']) {
      const answer = await getVia(httpPort, host, '/');
      assert.notEqual(answer.body, 'plain', host);
      assert.notEqual(answer.body, 'secure', host);
    }
    assert.equal((await getVia(httpPort, `${PLAIN.host}.evil`, '/')).status, 404);
    // HTTPS with the TLS host's name but the plain host in Host: the request goes by its Host header.
    const fronted = await curl(['--resolve', `${SECURE.host}:${httpsPort}:127.0.0.1`, '--cacert', caFile, '-H', `Host: ${PLAIN.host}`, `https://${SECURE.host}:${httpsPort}/`]);
    assert.equal(fronted.body, 'plain');
  });

  test('removing a routed service takes its route out of the proxy: 404 for its host, no server for it, the other app serving on', async () => {
    const removedId = (await containers.inspect(SECURE.service))?.id;
    assert.ok(removedId);
    const answer = await signedCall(rx.url, { ...key, audience: hostId }, 'DELETE', `/v1/services/${SECURE.service}`);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal((answer.body as { state?: string }).state, 'ROLLED_BACK');
    assert.equal(await containers.inspect(SECURE.service), undefined);
    const servers = await haproxyServers(proxyPaths(proxyDir).adminSocket);
    assert.equal(servers.get(upstreamName(removedId)), undefined);
    assert.deepEqual([...servers.keys()], [upstreamName((await containers.inspect(PLAIN.service))?.id ?? '')]);
    // Neither redirected nor served: the host has no route any more.
    assert.equal((await getVia(httpPort, SECURE.host, '/')).status, 404);
    const secure = await curl(['--resolve', `${SECURE.host}:${httpsPort}:127.0.0.1`, '--cacert', caFile, `https://${SECURE.host}:${httpsPort}/`]);
    assert.equal(secure.status, 404);
    const table = await readFile(join(proxyDir, 'routes.json'), 'utf8');
    assert.doesNotMatch(table, new RegExp(SECURE.service));
    assert.deepEqual(await getVia(httpPort, PLAIN.host, '/'), { status: 200, body: 'plain' });
    // Removed again (nothing left): the proxy is not asked for anything and the answer is the same.
    const again = await signedCall(rx.url, { ...key, audience: hostId }, 'DELETE', `/v1/services/${SECURE.service}`);
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.deepEqual(await getVia(httpPort, PLAIN.host, '/'), { status: 200, body: 'plain' });
  });
});
