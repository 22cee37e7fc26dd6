/**
 * The registry dashboard in a real browser (Debian's Chromium, driven by playwright-core), fed by
 * real parts only: a `ferry registry` process projecting the stack's NATS event stream, a
 * `ferry receiver` process registered with it, and a real `ferry push` of a small image. The page
 * is opened before the push and never reloaded: the deployment has to arrive over its live stream.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { RegistryClient } from '@ferry/auth';
import { JetStreamPublisher, ReleaseEvents, keySigner } from '@ferry/events';
import { newReleaseId } from '@ferry/protocol';
import { ROOT, buildTestImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, natsConnect, stack } from '../helpers/stack.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
/** Deploys (ferry push); the receiver trusts it. */
const key = testKey(`dash-${run}`);
/** Asks the registry for the receiver's join token. */
const admin = testKey(`dash-admin-${run}`);
const token = randomBytes(24).toString('base64url');
const registryId = `registry-${run}`;
const hostId = `dash-${run}`;
const service = `dash-web-${run}`;
const image = `ferry-dash-${run}:1`;
const screenshot = join(ROOT, 'test-output', 'dashboard.png');

interface RegistryProcess {
  url: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts `ferry registry` on a free loopback port and waits until it says it listens. */
async function startRegistryProcess(env: Record<string, string>): Promise<RegistryProcess> {
  const dataDir = await mkdtemp(join(tmpdir(), 'ferry-reg-'));
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('FERRY_') && name !== 'DOCKER_HOST'));
  const child = spawn(process.execPath, [join(ROOT, 'bin/ferry.js'), 'registry'], {
    env: { ...inherited, FERRY_LISTEN: '127.0.0.1:0', FERRY_DATA_DIR: dataDir, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { output += chunk; });
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      output += `${line}\n`;
      try {
        const entry = JSON.parse(line) as { msg?: unknown; url?: unknown };
        if (entry.msg === 'registry listening' && typeof entry.url === 'string') resolve(entry.url);
      } catch {
        // not a log line
      }
    });
    child.once('exit', (code) => reject(new Error(`registry exited with ${code}: ${output}`)));
  });
  return {
    url, child,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

describe('the registry dashboard in a real browser', { timeout: 600_000 }, () => {
  let registry: RegistryProcess;
  let receiver: ReceiverProcess;
  let browser: Browser;
  let port: number;
  const target = dockerodeFor(s.targetDockerHost);
  const build = dockerodeFor(s.buildDockerHost);

  before(async () => {
    port = await freePort();
    await buildTestImage(s.buildDockerHost, image, `dash-${run}`);
    registry = await startRegistryProcess({
      FERRY_TRUST_FILE: trustFile([{ key: admin, role: 'admin' }, key]), FERRY_HOST_ID: registryId, FERRY_NATS_URL: s.natsRegistryUrl, FERRY_DASHBOARD_TOKEN: token,
    });
    // The receiver enrolls its host key with a join token; its events count once they are signed by it.
    const { token: joinToken } = await new RegistryClient(registry.url, admin).joinToken({ host: hostId });
    receiver = await startReceiverProcess({
      DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_NATS_URL: s.natsUrl, FERRY_HOST_ID: hostId,
      FERRY_REGISTRY_URL: registry.url, FERRY_JOIN_TOKEN: joinToken, FERRY_LABELS: `env=e2e,run=${run}`,
      FERRY_HEARTBEAT_SECONDS: '1',
    });
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--headless=new'] });
  });

  after(async () => {
    await browser?.close();
    await receiver?.stop();
    await registry?.stop();
    await removeService(target, service);
    await removeImages(target, [image]);
    await removeImages(build, [image]);
    // The registry's projection is a durable consumer on the shared stream; this run's goes with it.
    const nc = await natsConnect(s.natsAdminUrl);
    const jsm = await nc.jetstreamManager();
    await jsm.consumers.delete('FERRY_EVENTS', `ferry-registry-${registryId}`).catch(() => undefined);
    await nc.drain();
  });

  /** Opens the dashboard the way an operator does: the token once in the URL, a cookie after. */
  async function openDashboard(): Promise<Page> {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    // Waits end when the DOM shows what is expected; a hang fails by the suite's timeout instead.
    page.setDefaultTimeout(0);
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(err.message));
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(message.text());
    });
    await page.goto(`${registry.url}/?token=${encodeURIComponent(token)}`);
    assert.equal(new URL(page.url()).search, '', 'the token is dropped from the address bar');
    await page.locator('#connection[data-state="live"]').waitFor();
    assert.deepEqual(problems, [], 'no script error and no CSP violation');
    return page;
  }

  test('a push appears live on an open page: host, deployment, service, events, then drift', async (t) => {
    const page = await openDashboard();
    const host = page.locator(`article[data-host="${hostId}"]`);
    await host.locator('.badge', { hasText: 'online' }).waitFor();
    assert.match(await host.textContent() ?? '', new RegExp(`run=${run}`), 'the host shows its labels');
    // Heartbeats are not changes of their own; "last seen" still moves on an open page.
    const seenAt = await host.locator('header time').getAttribute('datetime');
    await host.locator(`header time:not([datetime="${seenAt}"])`).waitFor();
    // A mark in the page's memory: still there at the end means the page was never reloaded.
    await page.evaluate(() => {
      (globalThis as { ferryMark?: string }).ferryMark = 'unchanged';
    });

    const result = await runFerry([
      'push', image, '--to', receiver.url, '--name', service, '--network', 'host', '--env', `PORT=${port}`,
      '--health', `http://127.0.0.1:${port}/healthz`, '--json',
    ], { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key), FERRY_NATS_URL: s.natsUrl, FERRY_REGISTRY_URL: registry.url });
    assert.equal(result.code, 0, result.stderr + result.stdout);
    const { deploymentId } = JSON.parse(result.stdout) as { deploymentId: string };

    const row = page.locator(`#deployments tr[data-deployment-id="${deploymentId}"][data-host="${hostId}"][data-state="succeeded"]`);
    await row.waitFor();
    const cells = await row.locator('td').allTextContents();
    assert.deepEqual(cells.slice(0, 4), ['succeeded', service, hostId, image]);
    await page.locator(`#events li[data-deployment="${deploymentId}"][data-type="ferry.deployment.completed"]`).waitFor();
    await host.locator(`tr[data-service="${service}"]`, { hasText: image }).waitFor();

    // The container stops behind Ferry's back: the next heartbeat reports it, the row turns to drift.
    await target.getContainer(service).stop({ t: 0 });
    const drifted = host.locator(`tr.drift[data-service="${service}"]`);
    await drifted.waitFor();
    assert.match(await drifted.locator('.reasons').textContent() ?? '', /state: wants running, has exited/);
    assert.equal(await page.evaluate(() => (globalThis as { ferryMark?: string }).ferryMark), 'unchanged', 'the page was not reloaded');

    await mkdir(join(ROOT, 'test-output'), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    t.diagnostic(`screenshot: ${screenshot}`);
    await page.close();
  });

  test('a release\'s progress appears live, and each service\'s quality figures', async (t) => {
    const page = await openDashboard();
    // The push of the test before: one deployment, succeeded.
    const quality = page.locator(`#quality tr[data-service="${service}"]`);
    await quality.waitFor();
    assert.equal(await quality.locator('.success-rate').textContent(), '100 %');
    assert.match(await quality.locator('.p50').textContent() ?? '', /\d+(\.\d)? (ms|s)/);

    // A sender's release events, signed with the deploying key, as `ferry deploy` publishes them.
    const publisher = await JetStreamPublisher.connect({ url: s.natsUrl, name: `dash-release-${run}` });
    const releaseId = newReleaseId();
    const events = new ReleaseEvents({ sink: publisher, source: 'ferry://sender/e2e', releaseId, project: `shop-${run}`, signer: keySigner(key.keyId, key.privateKey) });
    try {
      events.publish('release.started', {
        phases: ['data', 'apps'], waves: [[hostId]],
        services: [
          { name: 'db', image: 'db:1', imageId: 'sha256:aa', phase: 0, dependsOn: [], hosts: [hostId] },
          { name: 'api', image: 'api:1', imageId: 'sha256:bb', phase: 1, dependsOn: [{ service: 'db', condition: 'healthy' }], hosts: [hostId] },
        ],
      });
      const row = page.locator(`#releases tr[data-release-id="${releaseId}"]`);
      await page.locator(`#releases tr[data-release-id="${releaseId}"][data-state="in-progress"]`).waitFor();
      assert.match(await row.locator('.release-progress').textContent() ?? '', /2 pending/);
      assert.deepEqual((await row.locator('td').allTextContents()).slice(2, 6).map((t) => t.trim()).filter((_, i) => i !== 1), [`shop-${run}`, '2', '1']);

      events.publish('release.phase.completed', { phase: 0, name: 'data', wave: 0, outcomes: { [hostId]: { db: 'healthy' } } });
      await row.locator('.release-progress', { hasText: '1 healthy · 1 pending' }).waitFor();
      events.publish('release.paused', { wave: 0, reason: 'continue' });
      await page.locator(`#releases tr[data-release-id="${releaseId}"][data-state="paused"]`).waitFor();
      events.publish('release.phase.completed', { phase: 1, name: 'apps', wave: 0, outcomes: { [hostId]: { api: 'healthy' } } });
      events.publish('release.completed', { outcomes: {}, durationMs: 2000 });
      await page.locator(`#releases tr[data-release-id="${releaseId}"][data-state="completed"]`).waitFor();
      assert.match(await row.locator('.release-progress').textContent() ?? '', /^2 healthy$/);
      // The bar's widths are set through the CSSOM, which the page's CSP allows.
      const width = await row.locator('.progress .outcome-healthy').evaluate((node) => (node as unknown as { style: { width: string } }).style.width);
      assert.equal(width, '100%');
      await page.locator(`#events li[data-type="ferry.release.completed"]`, { hasText: releaseId }).waitFor();
      // Newest first, and why it paused is not shown as an error.
      assert.equal(await page.locator('#events li').first().getAttribute('data-type'), 'ferry.release.completed');
      assert.equal(await page.locator('#events li[data-type="ferry.release.paused"] .error').count(), 0);
      await mkdir(join(ROOT, 'test-output'), { recursive: true });
      const shot = join(ROOT, 'test-output', 'dashboard-release.png');
      await page.screenshot({ path: shot, fullPage: true });
      t.diagnostic(`screenshot: ${shot}`);
    } finally {
      await publisher.close();
    }
    await page.close();
  });

  test('with FERRY_DASHBOARD_TOKEN set, the dashboard refuses whoever lacks it', async () => {
    for (const path of ['/', '/dashboard/state', '/dashboard/events', '/dashboard/app.js']) {
      const anonymous = await fetch(`${registry.url}${path}`);
      assert.equal(anonymous.status, 401, path);
      assert.equal(((await anonymous.json()) as { error: { code: string } }).error.code, 'FERRY_ERR_AUTH_MISSING');
      const wrong = await fetch(`${registry.url}${path}`, { headers: { authorization: 'Bearer not-the-token-at-all' } });
      assert.equal(wrong.status, 401, path);
      await wrong.body?.cancel();
    }
    const state = await fetch(`${registry.url}/dashboard/state`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(state.status, 200);
    const body = await state.json() as { hosts: { id: string }[] };
    assert.ok(body.hosts.some((h) => h.id === hostId), 'the bearer token reads the state');

    // A browser without the cookie gets the refusal, not the page.
    const context = await browser.newContext();
    const page = await context.newPage();
    const answer = await page.goto(registry.url);
    assert.equal(answer?.status(), 401);
    assert.equal(await page.locator('#hosts').count(), 0);
    await context.close();

    // The cookie a token opens is HttpOnly and SameSite=Strict; the signed API ignores it.
    const opened = await fetch(`${registry.url}/?token=${encodeURIComponent(token)}`, { redirect: 'manual' });
    assert.equal(opened.status, 303);
    assert.equal(opened.headers.get('location'), '/');
    const cookie = opened.headers.get('set-cookie') ?? '';
    assert.match(cookie, /HttpOnly/);
    assert.match(cookie, /SameSite=Strict/);
    assert.ok(!cookie.includes(token), 'the cookie does not hold the token itself');
    const withCookie = await fetch(`${registry.url}/dashboard/state`, { headers: { cookie: cookie.split(';')[0] ?? '' } });
    assert.equal(withCookie.status, 200);
    await withCookie.body?.cancel();
    const api = await fetch(`${registry.url}/v1/hosts`, { headers: { cookie: cookie.split(';')[0] ?? '' } });
    assert.equal(api.status, 401);
    await api.body?.cancel();
  });
});
