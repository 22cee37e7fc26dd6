/**
 * One failed deployment, one report. A real container that prints a few lines (one of them its
 * secret token, one in colour) and exits 1 is deployed with `ferry push` to one receiver, with
 * `ferry push --to A --to B`, with `ferry deploy -f ferry.yaml` and through the sender service,
 * against real `ferry receiver` processes on the stack's two engines; each failure's report names
 * the error, the target, the container's exit code and last log lines, the probes and what runs
 * again, and `ferry status ID` prints that same report from the receiver's journal afterwards.
 * A service that answers its health path 404 is reported with every one of its 30 probes, not
 * just the 10 answers kept. The token never appears: not in an output, not in a journal file.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SignedClient } from '@ferry/auth';
import type { DeploymentFailure } from '@ferry/protocol';
import { removeImages, removeService } from '../helpers/cleanup.ts';
import { buildFromDockerfile } from '../helpers/images.ts';
import { buildTestImage, freePort, runFerry, startFerryProcess, startReceiverProcess, type FerryProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`fr-${run}`);
const repo = `ferry-fr-${run}`;
const service = `fr-${run}`;
const probed = `frp-${run}`;
const secret = `s3cret-token-${run}`;
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
/** The stack's engines: receiver A deploys on the target engine, B on the build engine. */
const engines = [dockerodeFor(s.targetDockerHost), dockerodeFor(s.buildDockerHost)] as const;
/** What the crashing container prints, each run of it; the token as the receiver keeps it. */
const CRASH_LINES = [`booting ${run}`, 'token is ${API_TOKEN}', 'colour red', `fatal: no database ${run}`];
const NEXT_CRASHED = '  next: the container exited with code 1: its log lines above say why; fix that and push again';
const HEADLINE = '✖ Health check failed: the container exited before it became healthy; the previous version was restored [FERRY_ERR_HEALTHCHECK_FAILED]';

interface JournalRecord { deploymentId: string; state: string; failure?: DeploymentFailure }

/** Every failure report in a command's output: from its `✖` line (followed by the target) to its `next:` line. */
function reports(text: string): string[][] {
  const lines = text.split('\n');
  const found: string[][] = [];
  lines.forEach((l, i) => {
    if (!l.startsWith('✖ ') || !lines[i + 1]?.startsWith('  target      ')) return;
    const end = lines.findIndex((n, j) => j > i && n.startsWith('  next: '));
    assert.ok(end > i, `a report without its next: line:\n${text}`);
    found.push(lines.slice(i, end + 1));
  });
  return found;
}

function deploymentIdOf(report: string[]): string {
  const id = /^ {2}deployment {2}([0-9a-f-]{36}) /.exec(report.find((l) => l.startsWith('  deployment  ')) ?? '')?.[1];
  assert.ok(id, report.join('\n'));
  return id;
}

/** The rows of a report that name one part, e.g. `container`. */
function row(report: string[], name: string): string {
  const found = report.find((l) => l.startsWith(`  ${name.padEnd(12)}`));
  assert.ok(found, `no ${name} row in\n${report.join('\n')}`);
  return found;
}

/** The container's log lines a report printed. */
function logLines(report: string[]): string[] {
  const from = report.findIndex((l) => l.startsWith('  log         '));
  return report.slice(from + 1).filter((l) => l.startsWith('    ')).map((l) => l.slice(4));
}

describe('one failure report from push, fan-out, deploy, the sender service and status', { timeout: 600_000 }, () => {
  let rx: [ReceiverProcess, ReceiverProcess];
  let sender: FerryProcess;
  let dir: string;
  let healthPort: number;
  /** Per receiver URL: the container of the good version, which every failure there restores. */
  const previous = new Map<string, string>();
  const outputs: RunResult[] = [];

  const ferry = async (args: string[], env: Record<string, string> = {}): Promise<RunResult> => {
    const result = await runFerry(args, { ...senderEnv, ...env });
    outputs.push(result);
    return result;
  };

  const crashFlags = (): string[] => [
    '--name', service, '--network', 'none', '--env', `API_TOKEN=${secret}`,
    '--health', `http://127.0.0.1:${healthPort}/healthz`, '--health-interval', '100ms', '--health-retries', '30',
  ];

  /** `ferry status ID` prints the very report the command printed, and its record says what the report says. */
  const sameFromStatus = async (report: string[], url: string): Promise<JournalRecord> => {
    const id = deploymentIdOf(report);
    const status = await ferry(['status', id, '--to', url]);
    assert.equal(status.code, 0, status.stdout + status.stderr);
    assert.deepEqual(reports(status.stdout), [report], 'status ID shows the same report');
    const json = await ferry(['status', id, '--to', url, '--json']);
    const record = JSON.parse(json.stdout) as JournalRecord;
    assert.equal(record.deploymentId, id);
    const attempts = record.failure?.health?.attempts;
    assert.ok(attempts !== undefined, json.stdout);
    assert.match(row(report, 'health'), new RegExp(`^ {2}health {6}${attempts} probes? \\(http\\)`), 'the probes counted in full, as the receiver counted them');
    return record;
  };

  /** A crash's report: the same headline, log lines and next: line wherever it was deployed; the previous container runs again. */
  const assertCrashReport = async (report: string[], url: string): Promise<void> => {
    assert.equal(report[0], HEADLINE, report.join('\n'));
    assert.ok(row(report, 'target').endsWith(`(${url})`), report.join('\n'));
    assert.match(row(report, 'deployment'), / — failed while VALIDATING, now ROLLED_BACK$/);
    assert.match(row(report, 'container'), /^ {2}container {3}[0-9a-f]{12} exited with code 1\b/);
    // A restart policy may have run it more than once before the check saw it exit: every run prints the same lines.
    assert.deepEqual([...new Set(logLines(report))].sort(), [...CRASH_LINES].sort(), report.join('\n'));
    assert.equal(row(report, 'restored'), `  restored    the previous container ${previous.get(url)?.slice(0, 12)} runs again`);
    assert.equal(report.at(-1), NEXT_CRASHED);
    const record = await sameFromStatus(report, url);
    assert.equal(record.state, 'ROLLED_BACK');
    assert.equal(record.failure?.stage, 'VALIDATING');
    assert.equal(record.failure?.container?.exitCode, 1);
    assert.deepEqual(record.failure?.restored, { outcome: 'previous', containerId: previous.get(url) });
    const engine = engines[url === rx[0].url ? 0 : 1];
    assert.equal((await engine.getContainer(service).inspect()).Id, previous.get(url), 'and it does');
  };

  before(async () => {
    healthPort = await freePort();
    await buildTestImage(s.buildDockerHost, `${repo}:1`, `v1-${run}`);
    // Exec form: the image has busybox and no /bin/sh. printf turns \033 into ESC: a coloured line.
    await buildFromDockerfile(s.buildDockerHost, `${repo}:crash`, `FROM ${repo}:1\nENTRYPOINT ["/bin/busybox", "sh", "-c", ${JSON.stringify(
      `echo booting ${run}; echo token is $API_TOKEN; printf 'colour \\033[31mred\\033[0m\\n'; echo fatal: no database ${run} >&2; exit 1`,
    )}]\n`);
    const trust = trustFile(key);
    rx = await Promise.all(engines.map((_, i) => startReceiverProcess({
      DOCKER_HOST: i === 0 ? s.targetDockerHost : s.buildDockerHost, FERRY_TRUST_FILE: trust, FERRY_HOST_ID: `fr${i}-${run}`,
    }))) as [ReceiverProcess, ReceiverProcess];
    dir = await mkdtemp(join(tmpdir(), 'ferry-fr-'));
    sender = await startFerryProcess('sender', {
      FERRY_LISTEN: '127.0.0.1:0', FERRY_HOST_ID: `frs-${run}`, FERRY_DATA_DIR: dir, FERRY_TRUST_FILE: trust, ...keyEnv(key),
      DOCKER_HOST: s.buildDockerHost, TMPDIR: dir,
    });
    // The version that runs before every failure, on both hosts; a receiver refuses what was
    // signed before it started (the same second included): push until it takes it.
    for (;;) {
      const good = await ferry(['push', `${repo}:1`, '--to', rx[0].url, '--to', rx[1].url, '--name', service, '--network', 'none', '--json']);
      if (good.code === 0) break;
      assert.match(good.stdout, /FERRY_ERR_STALE_TIMESTAMP|FERRY_ERR_REPLAY/, good.stdout + good.stderr);
      await sleep(500);
    }
    for (const [i, r] of rx.entries()) previous.set(r.url, (await engines[i].getContainer(service).inspect()).Id);
  });

  after(async () => {
    await sender?.stop().catch(() => undefined);
    for (const r of rx ?? []) await r.stop().catch(() => undefined);
    for (const engine of engines) {
      for (const name of [service, probed]) await removeService(engine, name);
      await removeImages(engine, [`${repo}:crash`, `${repo}:1`]);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('ferry push to one target: the report on stderr, the same from ferry status ID', async () => {
    const result = await ferry(['push', `${repo}:crash`, '--to', rx[0].url, ...crashFlags()]);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const found = reports(result.stderr);
    assert.equal(found.length, 1, result.stderr);
    await assertCrashReport(found[0] ?? [], rx[0].url);
  });

  test('ferry push --to A --to B: one report per target, each the same as ferry status ID', async () => {
    const result = await ferry(['push', `${repo}:crash`, '--to', rx[0].url, '--to', rx[1].url, ...crashFlags()]);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const found = reports(result.stdout);
    assert.equal(found.length, 2, result.stdout);
    const byUrl = new Map(found.map((r) => [/\((http:[^)]+)\)$/.exec(row(r, 'target'))?.[1], r]));
    for (const r of rx) await assertCrashReport(byUrl.get(r.url) ?? [], r.url);
  });

  test('ferry deploy -f ferry.yaml: the same report per target', async () => {
    const file = join(dir, 'ferry.yaml');
    await writeFile(file, `version: 1
services:
  ${service}:
    image: ${repo}:crash
    targets: [${rx[0].url}, ${rx[1].url}]
    network: none
    env:
      - API_TOKEN=\${API_TOKEN}
    health:
      http: http://127.0.0.1:${healthPort}/healthz
      interval: 100ms
      retries: 30
`);
    const result = await ferry(['deploy', '-f', file], { API_TOKEN: secret });
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const found = reports(result.stdout);
    assert.equal(found.length, 2, result.stdout);
    for (const [i, r] of rx.entries()) await assertCrashReport(found[i] ?? [], r.url);
  });

  test("the sender service's job view carries the receiver's report", async () => {
    const api = new SignedClient({ url: sender.url, credentials: key, peer: 'sender', unreachable: 'FERRY_ERR_SENDER_UNREACHABLE', learn: 'healthz' });
    const id = `fr-job-${run}`;
    await api.request('POST', '/v1/deployments', {
      version: 1, id, services: {
        [service]: {
          image: `${repo}:crash`, targets: [rx[0].url], network: 'none', env: { API_TOKEN: secret },
          health: { type: 'http', url: `http://127.0.0.1:${healthPort}/healthz`, intervalMs: 100, retries: 30 },
        },
      },
    });
    let job: { state: string; services: { targets: { url: string; deploymentId?: string; error?: { code: string }; failure?: DeploymentFailure }[] }[] };
    for (;;) {
      job = await api.request('GET', `/v1/deployments/${id}`) as typeof job;
      if (job.state === 'succeeded' || job.state === 'failed') break;
      await sleep(300);
    }
    assert.equal(job.state, 'failed');
    const t = job.services[0]?.targets[0];
    assert.equal(t?.error?.code, 'FERRY_ERR_HEALTHCHECK_FAILED');
    const record = JSON.parse((await ferry(['status', t?.deploymentId ?? '', '--to', rx[0].url, '--json'])).stdout) as JournalRecord;
    assert.deepEqual(t?.failure, record.failure, 'the job view holds the record\'s report');
    assert.deepEqual([...new Set(t?.failure?.container?.logs)].sort(), [...CRASH_LINES].sort());
    const status = await ferry(['status', t?.deploymentId ?? '', '--to', rx[0].url]);
    await assertCrashReport(reports(status.stdout)[0] ?? [], rx[0].url);
  });

  test('a health path answering 404: all 30 probes counted, the last 10 answers shown, the container still ran', async () => {
    const port = await freePort();
    const result = await ferry([
      'push', `${repo}:1`, '--to', rx[0].url, '--name', probed, '--network', 'host', '--env', `PORT=${port}`,
      '--health', `http://127.0.0.1:${port}/nope`, '--health-interval', '50ms', '--health-retries', '30',
    ]);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const [report = []] = reports(result.stderr);
    assert.equal(report[0], '✖ Health check failed: health check failed 30 times (last: HTTP 404); there was no previous version to restore [FERRY_ERR_HEALTHCHECK_FAILED]');
    assert.equal(row(report, 'health'), '  health      30 probes (http); the last 10: HTTP 404 ×10');
    assert.match(row(report, 'container'), /^ {2}container {3}[0-9a-f]{12} was running$/);
    assert.equal(row(report, 'restored'), `  restored    nothing: no earlier version of ${probed} was on this host, so none runs now`);
    assert.match(report.at(-1) ?? '', /^ {2}next: the container runs but did not pass its health check \(last answer: HTTP 404\)/);
    const record = await sameFromStatus(report, rx[0].url);
    assert.equal(record.failure?.health?.attempts, 30);
    assert.equal(record.failure?.health?.probes.length, 10);
  });

  test('the token never appears: not in any output, not in a journal file', async () => {
    for (const { stdout, stderr } of outputs) assert.ok(!stdout.includes(secret) && !stderr.includes(secret), stdout + stderr);
    for (const r of rx) {
      const journal = join(r.dataDir, 'journal');
      const texts = await Promise.all((await readdir(journal)).map((name) => readFile(join(journal, name), 'utf8')));
      assert.ok(texts.some((t) => t.includes('token is ${API_TOKEN}')), 'the line is kept, its value replaced');
      assert.ok(texts.every((t) => !t.includes(secret)));
      assert.ok(texts.every((t) => !t.includes('\\u001b')), 'no escape sequence kept');
    }
  });
});
