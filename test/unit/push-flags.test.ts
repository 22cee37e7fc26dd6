/** `ferry push`'s docker-run-style container flags, its three progress renderings and `ferry help`, as pure logic. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DEFAULT_BACKOFF, DEFAULT_PARALLEL } from '@ferry/sender';
import { createProgress, runCli, serviceSpecFromFlags, splitCommand, type Io } from '@ferry/cli';
import { Capture, usageError } from '../helpers/cli.ts';

const ESC = '\u001b';

describe('ferry push container flags', () => {
  test('every flag lands in its ServiceSpec field, spelled as docker run takes it', () => {
    const spec = serviceSpecFromFlags('web', {
      env: ['A=1', 'B=x=y'], publish: ['8080:80', '127.0.0.1:5353:53/udp'], volume: ['data:/data', '/srv/conf:/etc/app:ro'],
      memory: '256m', cpus: '1.5', 'cap-add': ['NET_ADMIN', 'cap_sys_time'], restart: 'unless-stopped',
      label: ['team=edge', 'flag'], user: '1000:1000', entrypoint: '/bin/app', command: 'serve --port "80 80"',
      privileged: true, device: ['/dev/fuse'], 'security-opt': ['no-new-privileges'], pid: 'host', ipc: 'shareable',
    });
    assert.deepEqual(spec, {
      name: 'web', env: { A: '1', B: 'x=y' }, network: 'bridge',
      ports: ['8080:80', '127.0.0.1:5353:53/udp'], volumes: ['data:/data', '/srv/conf:/etc/app:ro'],
      memory: '256m', cpus: 1.5, capAdd: ['NET_ADMIN', 'cap_sys_time'], restart: 'unless-stopped',
      labels: { team: 'edge', flag: '' }, user: '1000:1000', entrypoint: ['/bin/app'], command: ['serve', '--port', '80 80'],
      privileged: true, devices: ['/dev/fuse'], securityOpt: ['no-new-privileges'], pid: 'host', ipc: 'shareable',
    });
  });

  test('no flags: only the name, no env and the bridge network', () => {
    assert.deepEqual(serviceSpecFromFlags('web', {}), { name: 'web', env: {}, network: 'bridge' });
  });

  test('the words after "--" are the command; --entrypoint "" clears the image\'s', () => {
    const spec = serviceSpecFromFlags('web', { entrypoint: '' }, ['sh', '-c', 'echo $HOME; sleep 1']);
    assert.deepEqual(spec.command, ['sh', '-c', 'echo $HOME; sleep 1']);
    assert.deepEqual(spec.entrypoint, []);
    usageError(() => serviceSpecFromFlags('web', { command: 'a' }, ['b']), /--command or after "--", not both/);
  });

  test('a refused value names the flag the user typed and the value', () => {
    usageError(() => serviceSpecFromFlags('web', { publish: ['8080:80', '80'] }), /^-p\/--publish 80: \[hostIp:\]hostPort/);
    usageError(() => serviceSpecFromFlags('web', { publish: ['70000:80'] }), /^-p\/--publish 70000:80:/);
    usageError(() => serviceSpecFromFlags('web', { volume: ['data:/srv/../etc'] }), /^-v\/--volume data:\/srv\/\.\.\/etc:/);
    usageError(() => serviceSpecFromFlags('web', { volume: ['relative/path:/data'] }), /^-v\/--volume relative\/path:\/data:/);
    usageError(() => serviceSpecFromFlags('web', { memory: '1m' }), /^-m\/--memory 1m: .*at least 6m/);
    usageError(() => serviceSpecFromFlags('web', { memory: 'lots' }), /^-m\/--memory lots:/);
    usageError(() => serviceSpecFromFlags('web', { cpus: '0' }), /^--cpus 0:/);
    usageError(() => serviceSpecFromFlags('web', { cpus: 'two' }), /^--cpus two:/);
    usageError(() => serviceSpecFromFlags('web', { 'cap-add': ['NET ADMIN'] }), /^--cap-add NET ADMIN: a capability name/);
    usageError(() => serviceSpecFromFlags('web', { restart: 'sometimes' }), /^--restart sometimes: expected one of no, unless-stopped, on-failure, always/);
    usageError(() => serviceSpecFromFlags('web', { label: ['ferry.mine=1'] }), /^--label ferry\.mine: .*reserved/);
    usageError(() => serviceSpecFromFlags('web', { label: ['=v'] }), /^--label =v: expected KEY=VALUE/);
    usageError(() => serviceSpecFromFlags('web', { user: 'root user' }), /^-u\/--user root user:/);
    usageError(() => serviceSpecFromFlags('web', { device: ['dev/fuse'] }), /^--device dev\/fuse:/);
    usageError(() => serviceSpecFromFlags('web', { 'security-opt': ['label=disable'] }), /^--security-opt label=disable:/);
    usageError(() => serviceSpecFromFlags('web', { env: ['=1'] }), /^--env: expected KEY=VALUE or KEY, and the name is missing$/);
    usageError(() => serviceSpecFromFlags('web', { network: 'overlay' }), /^--network must be host, bridge or none/);
    usageError(() => serviceSpecFromFlags('web', { network: 'host', publish: ['80:80'] }), /^-p\/--publish: ports are published only with the bridge network/);
    usageError(() => serviceSpecFromFlags('Web!', {}), /^--name Web!:/);
    usageError(() => serviceSpecFromFlags('web', { pid: 'container:x' }), /^--pid container:x:/);
  });

  test('--command splits like a shell without expanding, or takes a JSON array', () => {
    assert.deepEqual(splitCommand('command', `sh -c 'echo "a b"; exit 3'`), ['sh', '-c', 'echo "a b"; exit 3']);
    assert.deepEqual(splitCommand('command', String.raw`echo a\ b "c\"d" '' $HOME`), ['echo', 'a b', 'c"d', '', '$HOME']);
    assert.deepEqual(splitCommand('command', '  ["sh", "-c", "x y"] '), ['sh', '-c', 'x y']);
    assert.deepEqual(splitCommand('command', '   '), []);
    usageError(() => splitCommand('command', `echo 'open`), /unterminated ' quote/);
    usageError(() => splitCommand('command', '["sh", 1]'), /JSON array of strings/);
  });

  test('through the CLI: a bad flag exits 2 naming it and saying what to do next, before any config is read', async () => {
    const stdout = new Capture();
    const stderr = new Capture();
    const io: Io = { env: {}, stdout, stderr };
    const code = await runCli(['push', 'img:1', '--to', 'http://127.0.0.1:1', '--name', 'web', '-p', '80', '--cap-add', 'NET_ADMIN'], io);
    assert.equal(code, 2, stderr.text);
    assert.match(stderr.text, /-p\/--publish 80:/);
    assert.match(stderr.text, /next: see "ferry help push"/);
    const json = new Capture();
    assert.equal(await runCli(['push', 'img:1', '--to', 'http://127.0.0.1:1', '--name', 'web', '--restart', 'x', '--json'], { env: {}, stdout: json, stderr }), 2);
    const answer = JSON.parse(json.text) as { ok: boolean; error: { code: string; message: string }; next: string };
    assert.equal(answer.ok, false);
    assert.equal(answer.error.code, 'FERRY_ERR_USAGE');
    assert.match(answer.error.message, /^--restart x:/);
    assert.match(answer.next, /ferry help/);
  });

  test('"--help" after "--" is part of the command, not a request for help', async () => {
    const stdout = new Capture();
    const stderr = new Capture();
    const code = await runCli(['push', 'img:1', '--name', 'web', '--', 'app', '--help'], { env: {}, stdout, stderr });
    assert.equal(code, 2);
    assert.match(stderr.text, /--to URL is required/);
  });
});

describe('ferry help', () => {
  async function helpOf(...argv: string[]): Promise<string> {
    const stdout = new Capture();
    assert.equal(await runCli(argv, { env: {}, stdout, stderr: new Capture() }), 0);
    return stdout.text;
  }

  test('every command listed has its own help, also as COMMAND --help', async () => {
    const listed = [...(await helpOf('help')).matchAll(/^ {2}([a-z]+) {2,}/gm)].map((m) => m[1] ?? '');
    const cli = listed.filter((name) => !['receiver', 'sender', 'registry', 'help'].includes(name));
    assert.deepEqual(cli, ['push', 'deploy', 'build', 'status', 'rollback', 'hosts', 'drift', 'releases', 'release', 'events', 'key', 'trust', 'grant', 'bundle', 'inventory', 'version']);
    for (const name of cli) {
      const text = await helpOf('help', name);
      assert.match(text, new RegExp(`^Usage: ferry ${name} `));
      assert.equal(await helpOf(name, '--help'), text);
    }
  });

  test('the help states the defaults the commands use', async () => {
    // The texts are written out (help.ts loads none of the commands' code): this keeps them true.
    const push = await helpOf('help', 'push');
    assert.match(push, new RegExp(`--parallel N +targets served at once \\(default ${DEFAULT_PARALLEL}\\)`));
    assert.match(push, new RegExp(`restarting receiver or a 5xx \\(default ${DEFAULT_BACKOFF.attempts} with several targets, 1 with one\\)`));
    assert.match(push, /--compression auto\|zstd\|gzip\|none \(default auto: chosen for the link/);
    const deploy = await helpOf('help', 'deploy');
    assert.match(deploy, new RegExp(`--parallel N +services of one phase, and targets of one service, served at once \\(default ${DEFAULT_PARALLEL}\\)`));
    assert.match(deploy, new RegExp(`--retries N +attempts per target, with backoff \\(default ${DEFAULT_BACKOFF.attempts}\\)`));
  });

  test('an unknown command exits 2 and points to "ferry help"', async () => {
    const stdout = new Capture();
    const stderr = new Capture();
    assert.equal(await runCli(['frobnicate'], { env: {}, stdout, stderr }), 2);
    assert.match(stderr.text, /Unknown command "frobnicate"; see "ferry help" \[FERRY_ERR_USAGE\]/);
    assert.equal(stdout.text, '');
  });
});

describe('push progress', () => {
  const exact = (bytes: number) => ({ bytes, estimated: false });

  test('not a terminal: plain lines, a quarter at a time per target, the receiver\'s stages', () => {
    const out = new Capture(false);
    const progress = createProgress(out, { json: false, targets: ['http://a', 'http://b'] });
    progress.stage('package', { image: 'app:1', compression: 'zstd' });
    progress.stage('transfer', { bytes: 1000 });
    for (const position of [100, 250, 260, 500, 999, 1000]) progress.sent('http://a', position, exact(1000));
    progress.deploying('http://a');
    progress.deployState('http://a', 'LOADING');
    progress.deployState('http://a', 'VALIDATING');
    progress.deployState('http://a', 'VALIDATING', { attempts: 2, retries: 30, lastOk: false });
    progress.retrying('http://b', 1, 500, 'connection reset');
    progress.done('http://a', true, 'COMPLETED');
    progress.done('http://b', false, 'FAILED FERRY_ERR_RECEIVER_CIRCUIT_OPEN');
    progress.close();
    // The rate and ETA depend on the clock: what the lines say besides them is checked.
    const lines = out.text.trimEnd().split('\n').map((l) => l.replace(/(, [\d.]+ [KMG]?B\/s)?(, ETA \S+)?$/, ''));
    assert.deepEqual(lines, [
      'packaging app:1 (zstd)', 'sending 1.0 KB',
      'http://a 25% 250 B of 1.0 KB', 'http://a 50% 500 B of 1.0 KB', 'http://a 99% 999 B of 1.0 KB', 'http://a 100% 1.0 KB of 1.0 KB',
      'http://a 1.0 KB sent; deploying', 'http://a loading the image', 'http://a running the health check',
      'http://a running the health check: probe 2 of 30 failed',
      '  retrying http://b (attempt 2) in 500 ms: connection reset',
      'http://a done: COMPLETED', 'http://b failed: FAILED FERRY_ERR_RECEIVER_CIRCUIT_OPEN',
    ]);
    assert.ok(!out.text.includes(ESC), 'no terminal escapes');
  });

  test('not a terminal, streamed: the stage says so, and a size not known yet gives bytes alone', () => {
    const out = new Capture(false);
    const progress = createProgress(out, { json: false, targets: ['http://a'] });
    progress.stage('transfer', { bytes: 0 });
    progress.sent('http://a', 10);
    progress.sent('http://a', 400, { bytes: 1000, estimated: true });
    assert.deepEqual(out.text.trimEnd().split('\n').map((l) => l.replace(/(, [\d.]+ [KMG]?B\/s)?(, ETA \S+)?$/, '')), [
      'sending while the image is read', 'http://a 40% 400 B of ~1.0 KB',
    ]);
  });

  test('--json: one JSON object per line, the last position of each target always reported', () => {
    const out = new Capture(true);
    const progress = createProgress(out, { json: true, targets: ['http://a', 'http://s'] });
    progress.stage('transfer', { bytes: 10 });
    progress.sent('http://a', 1, exact(10));
    progress.sent('http://a', 2, exact(10));
    progress.sent('http://a', 10, exact(10));
    progress.deploying('http://a');
    progress.deployState('http://a', 'LOADING');
    progress.done('http://a', true, 'COMPLETED');
    // A stream: its size is estimated, and known once every byte went.
    progress.sent('http://s', 3, { bytes: 9, estimated: true });
    progress.sent('http://s', 8, { bytes: 9, estimated: true });
    progress.deploying('http://s');
    const records = out.text.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(records.map((r) => [r.progress, r.target ?? r.stage, r.bytes, r.total, r.estimated, r.state]), [
      ['stage', 'transfer', 10, undefined, undefined, undefined],
      ['sent', 'http://a', 1, 10, false, undefined], ['sent', 'http://a', 10, 10, false, undefined],
      ['stage', 'http://a', undefined, undefined, undefined, undefined], ['deploy', 'http://a', undefined, undefined, undefined, 'LOADING'],
      ['done', 'http://a', undefined, undefined, undefined, 'COMPLETED'],
      ['sent', 'http://s', 3, 9, true, undefined], ['sent', 'http://s', 8, 8, false, undefined], ['stage', 'http://s', undefined, undefined, undefined, undefined],
    ]);
    assert.ok(records.every((r) => typeof r.time === 'string'));
    assert.ok(records.filter((r) => r.progress === 'sent').every((r) => typeof r.bytesPerSecond === 'number'));
  });

  test('a terminal: one line per target, redrawn in place', () => {
    const out = new Capture(true);
    const progress = createProgress(out, { json: false, targets: ['http://a', 'http://b', 'http://c'] });
    progress.stage('transfer', { bytes: 100 });
    progress.sent('http://a', 40, exact(100));
    progress.sent('http://c', 5_000_000);
    progress.done('http://b', true, 'COMPLETED');
    progress.close();
    // Every redraw after the first moves the cursor up over the three lines.
    const frames = out.text.split(`${ESC}[3A`);
    assert.ok(frames.length >= 3, JSON.stringify(out.text));
    const last = frames.at(-1)?.split('\n').filter(Boolean) ?? [];
    assert.equal(last.length, 3);
    assert.match(last[0] ?? '', /^\rhttp:\/\/a .* 40% 40 B of 100 B .*ETA/);
    assert.match(last[1] ?? '', /^\rhttp:\/\/b .*✔ COMPLETED/);
    assert.match(last[2] ?? '', /^\rhttp:\/\/c .* 5\.0 MB /, 'a size not known yet: the bytes alone');
    assert.ok(last.every((l) => l.endsWith(`${ESC}[K`)), 'each line clears what an older, longer line left');
    // Closed: the summary printed next is never drawn over.
    const before = out.text;
    progress.done('http://a', true, 'COMPLETED');
    progress.close();
    assert.equal(out.text, before);
  });

  test('a pseudo-terminal that says 0 columns still gets whole lines', () => {
    const out = new Capture(true);
    out.columns = 0;
    const progress = createProgress(out, { json: false, targets: ['http://a'] });
    progress.sent('http://a', 40, exact(100));
    progress.close();
    assert.match(out.text, /http:\/\/a .* 40% 40 B of 100 B/);
  });

  test('interrupted: each target\'s state, in words and as data', () => {
    for (const mode of ['tty', 'plain', 'json'] as const) {
      const out = new Capture(mode === 'tty');
      const targets = ['http://new', 'http://mid', 'http://dep', 'http://ok'];
      const progress = createProgress(out, { json: mode === 'json', targets, service: 'web' });
      progress.stage('transfer', { bytes: 0 });
      progress.sent('http://mid', 312_000_000, { bytes: 1_100_000_000, estimated: true });
      progress.sent('http://dep', 50, exact(50));
      progress.deploying('http://dep');
      progress.deployState('http://dep', 'LOADING');
      progress.sent('http://ok', 50, exact(50));
      progress.done('http://ok', true, 'COMPLETED');
      const left = progress.interrupted();
      assert.deepEqual(left.map((t) => [t.target, t.state, t.bytes]), [
        ['http://new', 'not started', 0], ['http://mid', 'interrupted', 312_000_000], ['http://dep', 'deploying', 50], ['http://ok', 'deployed', 50],
      ]);
      if (mode === 'json') {
        const records = out.text.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.progress === 'interrupted');
        assert.deepEqual(records.map((r) => [r.target, r.state]), left.map((t) => [t.target, t.state]));
        continue;
      }
      const text = out.text.split(ESC).map((part, i) => (i === 0 ? part : part.replace(/^\[\d*[AJK]/, ''))).join('');
      assert.match(text, /http:\/\/new {2}not started\n/);
      assert.match(text, /http:\/\/mid {2}interrupted at 312 MB of ~1\.1 GB; nothing was deployed there/);
      assert.match(text, /http:\/\/dep {2}every byte sent; the receiver was loading the image, and may still finish: see ferry status --to http:\/\/dep --service web/);
      assert.match(text, /http:\/\/ok {2}deployed \(COMPLETED\)/);
    }
  });
});
