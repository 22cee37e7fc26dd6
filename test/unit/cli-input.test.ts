/**
 * What the command line takes the way Docker and Kamal users type it, as pure logic: "did you
 * mean" for a mistyped command or option, durations with units (one parser for every flag and for
 * the deployment file), `-e KEY` and `--env-file`, and a health check that cannot reach a
 * container on the bridge network.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { durationText, parseDuration, unpublishedHealthPort, unpublishedHealthPortHint, type ServiceSpec } from '@ferry/protocol';
import { runCli, type Io } from '../../apps/cli/src/index.ts';
import { envFromFlags, parseDurationFlag, parseEnvPairs, serviceSpecFromFlags } from '../../apps/cli/src/args.ts';
import { parseDeploymentText } from '../../services/sender/src/deployfile/index.ts';
import { duration } from '../../apps/cli/src/grants.ts';
import { parseEnvFile, readEnvFiles } from '../../apps/cli/src/env-file.ts';
import { Capture, usageError } from '../helpers/cli.ts';
import { healthCheckFailed, healthCheckFailedWithoutRestore, healthFailureReason } from '../../services/receiver/src/deploy/health.ts';

async function cli(argv: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new Capture();
  const stderr = new Capture();
  const io: Io = { env, stdout, stderr };
  const code = await runCli(argv, io);
  return { code, stdout: stdout.text, stderr: stderr.text };
}

const PUSH = ['push', 'img:1', '--to', 'http://127.0.0.1:1', '--name', 'web'];

describe('did you mean', () => {
  test('a mistyped command exits 2 naming the nearest one, services included', async () => {
    for (const [typed, meant] of [['psuh', 'push'], ['deplyo', 'deploy'], ['stauts', 'status'], ['recevier', 'receiver'], ['hots', 'hosts'], ['PUSH', 'push']] as const) {
      const r = await cli([typed]);
      assert.equal(r.code, 2, typed);
      assert.match(r.stderr, new RegExp(`Unknown command "${typed}"; did you mean "${meant}"\\? \\[FERRY_ERR_USAGE\\]`), r.stderr);
    }
  });

  test('a command nothing is near still points to "ferry help"; a short word is not stretched to fit', async () => {
    for (const typed of ['frobnicate', 'ls', 'rm', 'ps', 'x']) {
      const r = await cli([typed]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, new RegExp(`Unknown command "${typed}"; see "ferry help"`), r.stderr);
    }
  });

  test('a mistyped option exits 2 naming the nearest option of that command', async () => {
    const cases: [string[], string, string][] = [
      [[...PUSH, '--helth', 'http://127.0.0.1:8080/'], '--helth', '--health'],
      [[...PUSH, '--health', 'http://x/', '--health-intervall', '2s'], '--health-intervall', '--health-interval'],
      [[...PUSH, '--evn-file', 'x'], '--evn-file', '--env-file'],
      [[...PUSH, '--netwrok', 'host'], '--netwrok', '--network'],
      [[...PUSH, '--NAME', 'web'], '--NAME', '--name'],
      [['deploy', '--fiel', 'x.yaml'], '--fiel', '--file'],
      [['deploy', '--paralel', '2'], '--paralel', '--parallel'],
      [['status', 'x', '--to', 'http://h:1', '--jsno'], '--jsno', '--json'],
    ];
    for (const [argv, typed, meant] of cases) {
      const r = await cli(argv);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`Unknown option "${typed}"; did you mean "${meant}"\\?`), r.stderr);
    }
  });

  test('an option nothing is near is only named; --json gets the same message', async () => {
    for (const typed of ['--frobnicate-everything', '--rm', '-d']) {
      const r = await cli([...PUSH, typed]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, new RegExp(`Unknown option "${typed}" \\[FERRY_ERR_USAGE\\]`), r.stderr);
    }
    const json = await cli([...PUSH, '--json', '--helth', 'x']);
    const answer = JSON.parse(json.stdout) as { error: { code: string; message: string } };
    assert.equal(answer.error.code, 'FERRY_ERR_USAGE');
    assert.equal(answer.error.message, 'Unknown option "--helth"; did you mean "--health"?');
  });
});

describe('durations', () => {
  test('units, compounds and plain numbers in the unit each setting always had', () => {
    const cases: [string, 'ms' | 's', number][] = [
      ['500ms', 'ms', 500], ['2s', 'ms', 2000], ['1m', 'ms', 60_000], ['1h', 'ms', 3_600_000], ['7d', 's', 604_800_000],
      ['1m30s', 'ms', 90_000], ['1h2m3s4ms', 'ms', 3_723_004], ['1.5s', 'ms', 1500], ['0.5m', 's', 30_000],
      ['100', 'ms', 100], ['100', 's', 100_000], ['0', 'ms', 0], ['2.5', 's', 2500],
    ];
    for (const [text, unit, ms] of cases) assert.equal(parseDuration(text, unit), ms, text);
  });

  test('anything else is not a duration', () => {
    for (const text of ['', 's', '-1s', '+1s', '1 s', ' 1s', '1s ', '1sec', '1S', '1e3', '1e3ms', '0x10', '1..5s', '.5s', '2s2', '1y', 'Infinity', 'NaN', '1m30', `${'9'.repeat(70)}s`]) {
      assert.equal(parseDuration(text, 'ms'), undefined, JSON.stringify(text));
    }
  });

  test('shown back as people write them', () => {
    assert.deepEqual([50, 1500, 1000, 60_000, 90_000, 600_000, 604_800_000].map(durationText), ['50ms', '1.5s', '1s', '1m', '1m30s', '10m', '7d']);
  });

  test('a flag out of range or malformed names the flag, its range and the bare unit', () => {
    assert.equal(parseDurationFlag('health-interval', '2s', 'ms', 50, 60_000), 2000);
    assert.equal(parseDurationFlag('health-interval', '250', 'ms', 50, 60_000), 250);
    assert.equal(parseDurationFlag('health-interval', undefined, 'ms', 50, 60_000), undefined);
    usageError(() => parseDurationFlag('health-interval', '10', 'ms', 50, 60_000), /^--health-interval 10: expected a duration from 50ms to 1m, such as .*a plain number is in milliseconds/);
    usageError(() => parseDurationFlag('health-timeout', 'soon', 'ms', 50, 60_000), /^--health-timeout soon: expected a duration/);
    usageError(() => parseDurationFlag('ttl', '8d', 's', 60_000, 604_800_000), /^--ttl 8d: expected a duration from 1m to 7d.*plain number is in seconds/);
  });

  test('through ferry push: a bad --health-* duration exits 2 naming the flag', async () => {
    const r = await cli([...PUSH, '--network', 'host', '--health', 'http://127.0.0.1:8080/', '--health-start-period', '11m']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--health-start-period 11m: expected a duration from 0ms to 10m/);
  });

  test('trust and grant durations share the parser, in whole seconds', () => {
    assert.equal(duration('grace', '7d'), 604_800);
    assert.equal(duration('grace', '1d12h'), 129_600);
    assert.equal(duration('grace', '90'), 90);
    usageError(() => duration('grace', '1500ms'), /^--grace 1500ms: a duration in whole seconds/);
    usageError(() => duration('grace', 'forever'), /^--grace forever:/);
  });

  test('the deployment file: units, compounds, plain numbers as milliseconds, one message for the rest', () => {
    const file = (health: string): ReturnType<typeof parseDeploymentText> => parseDeploymentText(
      `version: 1\nservices:\n  web:\n    image: app:1\n    targets: [http://h:7701]\n    network: host\n    health: ${health}\n`, { baseDir: '/' });
    const ok = file('{http: "http://127.0.0.1:8080/", interval: 1.5s, timeout: 750, startPeriod: 1m30s}');
    assert.ok(ok.ok, JSON.stringify(!ok.ok && ok.problems));
    assert.deepEqual(ok.document.services.web?.health, { type: 'http', url: 'http://127.0.0.1:8080/', intervalMs: 1500, timeoutMs: 750, startPeriodMs: 90_000, retries: 30 });
    const bad = file('{http: "http://127.0.0.1:8080/", interval: soon}');
    assert.ok(!bad.ok);
    assert.deepEqual(bad.problems.map((p) => [p.path, p.message]), [['services.web.health.interval', 'a duration such as 500ms, 2s or 1m (a plain number is milliseconds)']]);
  });
});

describe('-e KEY and --env-file', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-envfile-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  test('-e KEY takes the value from the environment, and is left out when it is not set there (as docker)', () => {
    const env = parseEnvPairs(['A=1', 'FROM_ENV', 'MISSING', 'EMPTY', 'B='], { FROM_ENV: 'inherited=yes', EMPTY: '' });
    assert.deepEqual(env, { A: '1', FROM_ENV: 'inherited=yes', EMPTY: '', B: '' });
    // Only the environment's own variables: `-e constructor` is not Object.prototype.constructor.
    assert.deepEqual(parseEnvPairs(['constructor', 'toString'], {}), {});
  });

  test('docker\'s env-file format: comments, blank lines, values as written, KEY alone', () => {
    const text = '\uFEFF# a comment\n\nA=1\n  B=two words  \nQUOTED="kept"\nEQ=a=b\r\nEMPTY=\n\tINHERIT\n   # indented comment\nC=$HOME\n';
    assert.deepEqual(parseEnvFile('f', text), ['A=1', 'B=two words  ', 'QUOTED="kept"', 'EQ=a=b', 'EMPTY=', 'INHERIT', 'C=$HOME']);
  });

  test('an env-file mistake names the file and line, never the value', () => {
    usageError(() => parseEnvFile('prod.env', 'A=1\n=s3cret-value\n'), /^--env-file prod\.env line 2: no variable name before "="$/);
    usageError(() => parseEnvFile('prod.env', 'export TOKEN=s3cret-value\n'), /^--env-file prod\.env line 1: a variable name has no spaces/);
    usageError(() => parseEnvFile('prod.env', 'my s3cret value\n'), /^--env-file prod\.env line 1: a variable name has no spaces/);
    usageError(() => parseEnvFile('prod.env', '__proto__=x\n'), /__proto__ is not allowed/);
    for (const text of ['=s3cret-value', 'export TOKEN=s3cret-value', 'my s3cret value']) {
      assert.throws(() => parseEnvFile('prod.env', text), (err: Error) => !err.message.includes('s3cret'));
    }
  });

  test('files are read in order, then -e wins; KEY alone in a file takes from the environment; names are checked', async () => {
    const first = join(dir, 'first.env');
    const second = join(dir, 'second.env');
    await writeFile(first, 'A=from-first\nB=from-first\nINHERIT\nUNSET\n');
    await writeFile(second, 'B=from-second\nC=from-second\n');
    const env = envFromFlags({ 'env-file': [first, second], env: ['C=from-flag'] }, { INHERIT: 'from-environment' });
    assert.deepEqual(env, { A: 'from-first', B: 'from-second', INHERIT: 'from-environment', C: 'from-flag' });
    usageError(() => readEnvFiles([join(dir, 'missing.env')]), /^--env-file .*missing\.env: cannot read it \(ENOENT\)/);
    await writeFile(join(dir, 'binary.env'), Buffer.from([0x41, 0x3d, 0xff, 0xfe]));
    usageError(() => readEnvFiles([join(dir, 'binary.env')]), /not UTF-8 text/);
    await writeFile(join(dir, 'dotted.env'), 'APP.MODE=s3cret\n');
    assert.throws(() => envFromFlags({ 'env-file': [join(dir, 'dotted.env')] }, {}), (err: Error) => /^-e\/--env APP\.MODE: not an environment variable name/.test(err.message) && !err.message.includes('s3cret'));
  });

  test('through serviceSpecFromFlags: the spec carries what the files and flags say', async () => {
    const file = join(dir, 'spec.env');
    await writeFile(file, 'MODE=prod\nTOKEN\n');
    const spec = serviceSpecFromFlags('web', { network: 'host', 'env-file': [file], env: ['DEBUG'] }, [], undefined, { TOKEN: 't', DEBUG: '1' });
    assert.deepEqual(spec.env, { MODE: 'prod', TOKEN: 't', DEBUG: '1' });
  });

  test('an -e name missing is refused without echoing the value', () => {
    usageError(() => parseEnvPairs(['=s3cret']), /^--env: expected KEY=VALUE or KEY, and the name is missing$/);
  });
});

describe('a health check on the host\'s loopback for a container on the bridge network', () => {
  const spec = (health: ServiceSpec['health'], extra: Partial<ServiceSpec> = {}): Pick<ServiceSpec, 'network' | 'ports' | 'health'> => ({ network: 'bridge', health, ...extra });
  const http = (url: string): ServiceSpec['health'] => ({ type: 'http', url, intervalMs: 1000, timeoutMs: 2000, retries: 30, startPeriodMs: 0 });
  const tcp = (host: string, port: number): ServiceSpec['health'] => ({ type: 'tcp', host, port, intervalMs: 1000, timeoutMs: 2000, retries: 30, startPeriodMs: 0 });

  test('is found for every spelling of loopback, with the port the check waits on', () => {
    assert.equal(unpublishedHealthPort(spec(http('http://127.0.0.1:8080/healthz'))), 8080);
    assert.equal(unpublishedHealthPort(spec(http('http://localhost/'))), 80);
    assert.equal(unpublishedHealthPort(spec(http('https://LOCALHOST./'))), 443);
    assert.equal(unpublishedHealthPort(spec(http('http://127.1.2.3:9000/'))), 9000);
    assert.equal(unpublishedHealthPort(spec(http('http://[::1]:8080/'))), 8080);
    assert.equal(unpublishedHealthPort(spec(http('http://[::ffff:127.0.0.1]:8080/'))), 8080);
    assert.equal(unpublishedHealthPort(spec(tcp('127.0.0.1', 5432))), 5432);
    assert.equal(unpublishedHealthPort(spec(tcp('::1', 5432))), 5432);
    assert.equal(unpublishedHealthPort(spec(http('http://127.0.0.1:8080/'), { ports: ['9090:8080', '8080:8080/udp'] })), 8080, 'another host port, or udp, does not count');
  });

  test('is not found when the check can reach the container, or when that cannot be told', () => {
    assert.equal(unpublishedHealthPort(spec(http('http://127.0.0.1:8080/'), { ports: ['8080:80'] })), undefined);
    assert.equal(unpublishedHealthPort(spec(http('http://127.0.0.1:8080/'), { ports: ['127.0.0.1:8080:80/tcp'] })), undefined);
    assert.equal(unpublishedHealthPort(spec(http('http://127.0.0.1:8080/'), { network: 'host' })), undefined);
    assert.equal(unpublishedHealthPort(spec(http('http://127.0.0.1:8080/'), { network: 'none' })), undefined);
    assert.equal(unpublishedHealthPort(spec(http('http://10.0.0.5:8080/'))), undefined);
    assert.equal(unpublishedHealthPort(spec(http('http://localhost.example.com:8080/'))), undefined);
    assert.equal(unpublishedHealthPort(spec(tcp('128.0.0.1', 8080))), undefined);
    assert.equal(unpublishedHealthPort(spec({ type: 'cmd', intervalMs: 1000, timeoutMs: 2000, retries: 30, startPeriodMs: 0 })), undefined);
    assert.equal(unpublishedHealthPort(spec(undefined)), undefined);
  });

  test('ferry push refuses it before anything is packaged, saying what to add', async () => {
    usageError(
      () => serviceSpecFromFlags('web', {}, [], http('http://127.0.0.1:8080/healthz')),
      /^--health http:\/\/127\.0\.0\.1:8080\/healthz: the container runs on the bridge network and publishes no port 8080: add -p 8080:8080 or --network host$/,
    );
    usageError(() => serviceSpecFromFlags('web', {}, [], tcp('::1', 5432)), /^--health tcp:\/\/\[::1\]:5432: .*publishes no port 5432/);
    assert.equal(serviceSpecFromFlags('web', { publish: ['8080:80'] }, [], http('http://127.0.0.1:8080/')).ports?.[0], '8080:80');
    const r = await cli([...PUSH, '--health', 'http://localhost:3000/up']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--health http:\/\/localhost:3000\/up: the container runs on the bridge network and publishes no port 3000: add -p 3000:3000 or --network host/);
  });

  test('a deployment file gets the same problem at the service\'s health, in the file\'s words', () => {
    const result = parseDeploymentText('version: 1\nservices:\n  web:\n    image: app:1\n    targets: [http://h:7701]\n    health: http://127.0.0.1:8080/healthz\n', { baseDir: '/' });
    assert.ok(!result.ok);
    assert.deepEqual(result.problems.map((p) => [p.path, p.line, p.message]), [
      ['services.web.health', 6, 'the container runs on the bridge network and publishes no port 8080: add ports: ["8080:8080"] or network: host'],
    ]);
  });

  test('the receiver\'s failure reason says it too, when a manifest got there anyway', () => {
    const outcome = { ok: false, attempts: 3, probes: [], durationMs: 10, reason: 'health check failed 3 times (last: ECONNREFUSED)' };
    assert.equal(healthFailureReason(outcome, spec(http('http://127.0.0.1:8080/'))), `health check failed 3 times (last: ECONNREFUSED); ${unpublishedHealthPortHint(8080)}`);
    assert.equal(healthFailureReason(outcome, spec(http('http://127.0.0.1:8080/'), { network: 'host' })), outcome.reason);
    const failed = healthCheckFailed(healthFailureReason(outcome, spec(http('http://127.0.0.1:8080/'))));
    assert.equal(failed.message, `Health check failed: ${outcome.reason}; ${unpublishedHealthPortHint(8080)}; the previous version was restored`);
    // With nothing to roll back to, the reason is still given.
    assert.equal(healthCheckFailedWithoutRestore(failed).message, `Health check failed: ${outcome.reason}; ${unpublishedHealthPortHint(8080)}; there was no previous version to restore`);
  });
});
