/**
 * What `ferry push` shows a person while it works, run as a user runs it against real receivers on
 * the stack's two Docker engines: under a real pseudo-terminal (util-linux `script`), a streamed
 * push to one target and a fan-out to two redraw a line per target with the bytes, rate and ETA
 * before the summary; Ctrl-C mid-transfer (a real ^C typed into the terminal) ends the push with
 * exit code 130, each target's state, nothing deployed, no stream left on a receiver and no spool
 * file left behind; through a pipe the same progress comes as plain lines, and under --json as
 * JSON lines that parse. Every push sends the whole image (--no-layer-negotiation), a FROM-scratch
 * image with a random layer of LAYER_BYTES, so that each transfer takes many parts. Nothing is
 * mocked and nothing is timed: the assertions are on what was printed and what the receivers hold.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { removeImages } from '../helpers/cleanup.ts';
import { ROOT, baseEnv, buildLayeredImage, freePort, runFerry, startReceiverProcess, type ReceiverProcess, type RunResult } from '../helpers/ferry.ts';
import { keyEnv, testKey, trustFile } from '../helpers/keys.ts';
import { dockerodeFor, stack } from '../helpers/stack.ts';

const SCRIPT = '/usr/bin/script';
const LAYER_BYTES = 96 * 1024 ** 2;
const ESC = '\u001b';

const run = randomBytes(4).toString('hex');
const s = stack();
const key = testKey(`tty-${run}`);
const image = `ferry-tty-${run}:1`;
const senderEnv = { DOCKER_HOST: s.buildDockerHost, ...keyEnv(key) };
const engines = [dockerodeFor(s.targetDockerHost), dockerodeFor(s.buildDockerHost)];
const services: string[] = [];

/** A progress line with a byte count of a known size, a rate and an ETA, as drawn on a terminal. */
const DRAWN = /\d+% [\d.]+ [KMG]?B of [\d.]+ [KMG]?B [\d.]+ [KMG]?B\/s ETA \S+/;

function service(label: string): string {
  const name = `tty-${label}-${run}`;
  services.push(name);
  return name;
}

/** The pushes' common flags: the whole image every time, and no network the stack's engines lack. */
function pushArgs(name: string, targets: ReceiverProcess[]): string[] {
  return ['push', image, ...targets.flatMap((t) => ['--to', t.url]), '--name', name, '--network', 'none', '--no-layer-negotiation'];
}

function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * Runs `ferry ARGS` on a pseudo-terminal of 120 columns (stdout and stderr both go to it, as in a
 * terminal window) and answers its exit code and what the terminal received. With `interruptWhen`,
 * types Ctrl-C once the output (its escape sequences left out) matches it: the terminal's line
 * discipline sends SIGINT to ferry, as a person's ^C does.
 */
function inTerminal(args: string[], env: Record<string, string>, interruptWhen?: RegExp): Promise<{ code: number; output: string; interrupted: boolean }> {
  const command = `stty cols 120 rows 40; exec ${[process.execPath, join(ROOT, 'bin/ferry.js'), ...args].map(shellQuote).join(' ')}`;
  return new Promise((resolve, reject) => {
    const child = spawn(SCRIPT, ['-qfec', command, '/dev/null'], { env: { ...baseEnv(), ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    let interrupted = false;
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      output += chunk;
      if (interruptWhen && !interrupted && interruptWhen.test(plain(output))) {
        interrupted = true;
        child.stdin.write('\x03');
      }
    });
    child.stderr.resume();
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, output, interrupted }));
  });
}

/** What the terminal received without the cursor movements and line clears the redraws use. */
function plain(output: string): string {
  return output.split(ESC).map((part, i) => (i === 0 ? part : part.replace(/^\[\d*[AJK]/, ''))).join('');
}

/** The terminal's lines as drawn one after the other (each redraw of a line is a line here). */
function drawnLines(output: string): string[] {
  return plain(output).split(/\r\n|\r|\n/).filter((l) => l.trim() !== '');
}

function firstIndex(lines: string[], test: (line: string) => boolean): number {
  return lines.findIndex(test);
}

/** A receiver refuses what was signed before it started (the same second included): ask until it answers. */
async function answering(receiver: ReceiverProcess): Promise<void> {
  for (;;) {
    const probe = await runFerry(['status', randomUUID(), '--to', receiver.url, '--json'], senderEnv);
    if (probe.stdout.includes('FERRY_ERR_NOT_FOUND')) return;
    await new Promise((r) => setTimeout(r, 200));
  }
}

function parseLines(result: RunResult): Record<string, unknown>[] {
  return result.stderr.trimEnd().split('\n').map((text) => {
    try {
      return JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new Error(`not a JSON line: ${JSON.stringify(text)}\n${result.stderr}`);
    }
  });
}

describe('ferry push progress on a terminal, through a pipe and as JSON', { timeout: 900_000 }, () => {
  /** A receiver on the stack's target engine and one on its build engine: two hosts for a fan-out. */
  let onTarget: ReceiverProcess;
  let onBuild: ReceiverProcess;
  /** The service the terminal test deploys; the pipe and JSON tests replace its container. */
  let replaced: string;

  before(async () => {
    assert.ok(existsSync(SCRIPT), `${SCRIPT} (util-linux) runs the pseudo-terminal these tests need`);
    await buildLayeredImage(s.buildDockerHost, image, randomBytes(LAYER_BYTES), `top-${run}`);
    [onTarget, onBuild] = await Promise.all([s.targetDockerHost, s.buildDockerHost].map((dockerHost, i) => startReceiverProcess({
      DOCKER_HOST: dockerHost, FERRY_TRUST_FILE: trustFile(key), FERRY_HOST_ID: `tty${i}-${run}`,
    }))) as [ReceiverProcess, ReceiverProcess];
    await Promise.all([answering(onTarget), answering(onBuild)]);
  });

  after(async () => {
    await onTarget?.stop();
    await onBuild?.stop();
    for (const engine of engines) {
      for (const name of services) {
        for (const suffix of ['', '.ferry-previous', '.ferry-next']) await engine.getContainer(`${name}${suffix}`).remove({ force: true }).catch(() => undefined);
      }
      await removeImages(engine, [image]);
    }
  });

  test('a streamed push to one target: its line is redrawn in place with bytes, rate and ETA before the summary', async () => {
    replaced = service('one');
    const { code, output } = await inTerminal(pushArgs(replaced, [onTarget]), senderEnv);
    assert.equal(code, 0, plain(output));
    assert.ok(output.includes(`${ESC}[1A`), `the line is redrawn in place:\n${JSON.stringify(output)}`);
    const lines = drawnLines(output);
    const drawn = firstIndex(lines, (l) => l.startsWith(onTarget.url) && DRAWN.test(l));
    const summary = firstIndex(lines, (l) => l.startsWith(`✔ ${replaced} is running ${image}`));
    assert.ok(drawn >= 0, `a line with bytes, rate and ETA:\n${lines.join('\n')}`);
    assert.ok(summary > drawn, `the summary comes after the progress:\n${lines.join('\n')}`);
    // Every byte reached the receiver before it deployed: the last drawn state of the line says so.
    assert.ok(lines.slice(drawn, summary).some((l) => l.startsWith(onTarget.url) && / 100% .*✔ COMPLETED/.test(l)), lines.join('\n'));
  });

  test('a fan-out to two targets: one line per target, both redrawn with bytes and rate, then the summary', async () => {
    const name = service('fan');
    const { code, output } = await inTerminal(pushArgs(name, [onTarget, onBuild]), senderEnv);
    assert.equal(code, 0, plain(output));
    assert.ok(output.includes(`${ESC}[2A`), 'two lines, redrawn in place together');
    const lines = drawnLines(output);
    const summary = firstIndex(lines, (l) => l.startsWith(`✔ ${name}: ${image} on 2/2 targets`));
    assert.ok(summary >= 0, lines.join('\n'));
    for (const target of [onTarget, onBuild]) {
      const drawn = firstIndex(lines, (l) => l.startsWith(target.url) && DRAWN.test(l));
      assert.ok(drawn >= 0 && drawn < summary, `${target.url} has a line with bytes, rate and ETA before the summary:\n${lines.join('\n')}`);
    }
  });

  test('Ctrl-C mid-transfer: exit 130, each target\'s state, nothing deployed, no stream or spool left', async () => {
    const name = service('int');
    const spool = await mkdtemp(join(tmpdir(), 'ferry-tty-spool-'));
    try {
      const { code, output, interrupted } = await inTerminal(pushArgs(name, [onTarget, onBuild]), { ...senderEnv, TMPDIR: spool }, DRAWN);
      assert.ok(interrupted, `no progress line to interrupt at:\n${plain(output)}`);
      assert.equal(code, 130, plain(output));
      const lines = drawnLines(output);
      const header = lines.findIndex((l) => /^(\^C)?✖ interrupted$/.test(l));
      assert.ok(header >= 0, lines.join('\n'));
      const states = lines.slice(header + 1);
      for (const target of [onTarget, onBuild]) {
        assert.ok(states.some((l) => l.startsWith(`  ${target.url}  `) && / {2}(interrupted at [\d.]+ [KMG]?B of [\d.]+ [KMG]?B; nothing was deployed there|not started)/.test(l)),
          `${target.url}'s state:\n${states.join('\n')}`);
      }
      assert.ok(states.some((l) => l.includes('interrupted at')), `the target whose line showed bytes was interrupted mid-transfer:\n${states.join('\n')}`);

      // Nothing deployed, on either host.
      for (const target of [onTarget, onBuild]) {
        const journal = await runFerry(['status', '--to', target.url, '--service', name, '--json'], senderEnv);
        assert.equal((JSON.parse(journal.stdout) as { error?: { code?: string } }).error?.code, 'FERRY_ERR_NOT_FOUND', `${target.url} journalled a deployment: ${journal.stdout}`);
      }
      for (const engine of engines) await assert.rejects(engine.getContainer(name).inspect(), /no such container/i);
      // The streams were deleted: no receiver keeps a record of one for this service.
      for (const target of [onTarget, onBuild]) {
        const dir = join(target.dataDir, 'streams');
        const records = await Promise.all((await readdir(dir)).filter((f) => f.endsWith('.json')).map((f) => readFile(join(dir, f), 'utf8').catch(() => '')));
        assert.ok(!records.some((text) => text.includes(name)), `${target.url} still holds a stream of ${name}`);
      }
      // The copy spooled for the fan-out was removed with the rest.
      assert.deepEqual((await readdir(spool)).filter((f) => f.startsWith('ferry-')), []);
    } finally {
      await rm(spool, { recursive: true, force: true });
    }
  });

  test('through a pipe: plain lines with bytes and rate, the receiver\'s stages, no escape sequence', async () => {
    assert.ok(replaced, 'needs the service the first test deployed');
    const result = await runFerry(pushArgs(replaced, [onTarget]), senderEnv);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.ok(!result.stderr.includes(ESC) && !result.stderr.includes('\r'), JSON.stringify(result.stderr));
    const lines = result.stderr.trimEnd().split('\n');
    assert.ok(lines.includes('sending while the image is read'), result.stderr);
    const position = new RegExp(`^${onTarget.url} \\d+% [\\d.]+ [KMG]?B of [\\d.]+ [KMG]?B, [\\d.]+ [KMG]?B/s`);
    const sent = firstIndex(lines, (l) => l.startsWith(`${onTarget.url} `) && / sent; deploying$/.test(l));
    assert.ok(firstIndex(lines, (l) => position.test(l)) >= 0, result.stderr);
    assert.ok(sent > firstIndex(lines, (l) => position.test(l)), result.stderr);
    // The running container it replaces ignores SIGTERM (busybox sleep as PID 1), so the receiver
    // spends the engine's stop timeout in DEPLOYING, seconds in which its journal is asked.
    assert.ok(lines.slice(sent).includes(`${onTarget.url} starting the container`), result.stderr);
    assert.equal(lines.at(-1), `${onTarget.url} done: COMPLETED`);
    assert.match(result.stdout, new RegExp(`^✔ ${replaced} is running ${image}`));
  });

  test('the receiver\'s health check, probe by probe as it counts them, then the rollback', async () => {
    const name = service('probe');
    // Nothing listens there: each probe fails at once, and four of them a second apart keep the
    // deployment in VALIDATING for seconds in which its journal is asked several times.
    const port = await freePort();
    const result = await runFerry([
      'push', image, '--to', onTarget.url, '--name', name, '--network', 'host',
      '--health', `tcp://127.0.0.1:${port}`, '--health-retries', '4', '--health-interval', '1s',
    ], senderEnv);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const lines = result.stderr.split('\n');
    const probes = lines.filter((l) => new RegExp(`^${onTarget.url} running the health check: probe [1-4] of 4 failed$`).test(l));
    assert.ok(probes.length > 0, result.stderr);
    const counts = probes.map((l) => Number(/probe (\d)/.exec(l)?.[1]));
    assert.deepEqual(counts, [...counts].sort(), 'the probes are counted up');
    assert.ok(lines.indexOf(probes[0] ?? '') > lines.findIndex((l) => l === `${onTarget.url} running the health check`), result.stderr);
  });

  test('--json: every progress line on stderr parses, with sizes and rates, and stdout is the one result', async () => {
    assert.ok(replaced, 'needs the service the first test deployed');
    const result = await runFerry([...pushArgs(replaced, [onTarget]), '--json'], senderEnv);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const records = parseLines(result);
    assert.ok(records.every((r) => typeof r.time === 'string' && typeof r.progress === 'string'), result.stderr);
    const sent = records.filter((r) => r.progress === 'sent');
    assert.ok(sent.length >= 2, result.stderr);
    for (const r of sent) {
      assert.equal(r.target, onTarget.url);
      assert.equal(typeof r.bytes, 'number');
      assert.equal(typeof r.bytesPerSecond, 'number');
    }
    const last = sent.at(-1);
    assert.equal(last?.total, last?.bytes, 'the last position is the whole package');
    assert.equal(last?.estimated, false);
    assert.deepEqual(records.filter((r) => r.progress === 'stage').map((r) => r.stage), ['package', 'transfer', 'deploy']);
    assert.ok(records.some((r) => r.progress === 'deploy' && r.state === 'DEPLOYING'), result.stderr);
    assert.deepEqual(records.at(-1), { ...records.at(-1), progress: 'done', target: onTarget.url, ok: true, state: 'COMPLETED' });
    const answer = JSON.parse(result.stdout) as { ok: boolean; service: string };
    assert.deepEqual([answer.ok, answer.service], [true, replaced]);
  });
});
