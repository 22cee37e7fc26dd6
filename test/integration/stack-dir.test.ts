/**
 * The scripts run as root (deploy/local-stack.sh, test/run.sh, bench/run.sh, deploy/demo.sh) take
 * nothing from a state directory somebody else could have made or written to: anyone on the host
 * can create /tmp/ferry-stack before the stack ever runs and plant a stack.env in it. Each case
 * plants files that would touch a marker if anything sourced or ran them, points the scripts at
 * the directory, and checks the refusal names it and that the marker never appears.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT } from '../helpers/ferry.ts';

const TEST = { timeout: 120_000 };
const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;

let base: string;
let marker: string;

/** A state dir as an attacker would leave it: a stack.env and friends that touch the marker if run. */
function plant(dir: string): void {
  writeFileSync(join(dir, 'stack.env'), `export FERRY_NATS_URL=$(touch ${marker})\ntouch ${marker}\n`, { mode: 0o644 });
  writeFileSync(join(dir, 'nats.secrets'), `touch ${marker}\n`, { mode: 0o644 });
  writeFileSync(join(dir, 'key.env'), `touch ${marker}\n`, { mode: 0o644 });
}

/** The environment of a script under test: none of the stack's values that test/run.sh exported. */
function env(extra: Record<string, string>): NodeJS.ProcessEnv {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FERRY_')));
  return { ...clean, ...extra };
}

function run(args: string[], extra: Record<string, string>): { code: number | null; stderr: string } {
  const result = spawnSync('bash', args, { cwd: ROOT, env: env(extra), encoding: 'utf8', timeout: 100_000 });
  return { code: result.status, stderr: result.stderr };
}

/** Every way of reaching the stack dir: the stack script's commands and the scripts that read stack.env. */
const READERS: [string, string[]][] = [
  ['local-stack.sh up', ['deploy/local-stack.sh', 'up']],
  ['local-stack.sh env', ['deploy/local-stack.sh', 'env']],
  ['local-stack.sh status', ['deploy/local-stack.sh', 'status']],
  ['local-stack.sh down --purge', ['deploy/local-stack.sh', 'down', '--purge']],
  ['test/run.sh', ['test/run.sh', 'no-such.test.ts']],
  ['bench/run.sh', ['bench/run.sh', '--help']],
];

function refusedEverywhere(dir: string, name: string, extra: Record<string, string> = {}): void {
  const before = readdirSync(dir).sort();
  for (const [what, args] of READERS) {
    const { code, stderr } = run(args, { FERRY_STACK_DIR: dir, ...extra });
    assert.notEqual(code, 0, `${what} must refuse ${name}`);
    assert.match(stderr, new RegExp(`refusing ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), `${what}: ${stderr}`);
    assert.equal(existsSync(marker), false, `${what} ran something from ${name}`);
  }
  assert.deepEqual(readdirSync(dir).sort(), before, 'nothing was added to the planted dir');
}

describe('root scripts and the stack dir', () => {
  before(() => {
    base = mkdtempSync('/tmp/fx-stackdir-');
    marker = join(base, 'MARKER');
  });

  after(() => {
    rmSync(base, { recursive: true, force: true });
  });

  test('a fresh stack dir is made 0700 by local-stack.sh, and its env file is read as data', TEST, () => {
    const dir = join(base, 'fresh', 'stack');
    // `install` of a package whose command exists installs nothing; it still makes the state dir.
    const made = run(['deploy/local-stack.sh', 'install', 'bash:bash'], { FERRY_STACK_DIR: dir });
    assert.equal(made.code, 0, made.stderr);
    assert.equal(statSync(dir).mode & 0o7777, 0o700);
    assert.equal(statSync(join(base, 'fresh')).mode & 0o7777, 0o700);

    writeFileSync(join(dir, 'stack.env'), 'export FERRY_REDIS_URL=redis://127.0.0.1:1\n', { mode: 0o600 });
    const read = spawnSync('bash', ['-c', '. deploy/lib/safe-dir.sh && ferry_load_env "$1" && printf "%s" "$FERRY_REDIS_URL"', 't', join(dir, 'stack.env')], { cwd: ROOT, env: env({}), encoding: 'utf8' });
    assert.equal(read.stdout, 'redis://127.0.0.1:1', read.stderr);

    writeFileSync(join(dir, 'stack.env'), `export FERRY_REDIS_URL=redis://127.0.0.1:1\nexport FERRY_NATS_URL=$(touch ${marker})\n`, { mode: 0o600 });
    const refused = spawnSync('bash', ['-c', '. deploy/lib/safe-dir.sh && ferry_load_env "$1"; echo "rc=$? url=${FERRY_REDIS_URL:-unset}"', 't', join(dir, 'stack.env')], { cwd: ROOT, env: env({}), encoding: 'utf8' });
    assert.match(refused.stderr, /line 2 is not 'export FERRY_NAME=VALUE'/);
    assert.equal(refused.stdout.trim(), 'rc=1 url=unset', 'nothing from a refused file is exported');
    assert.equal(existsSync(marker), false);
  });

  test('a world-writable stack dir with a planted stack.env is refused by every script', TEST, () => {
    const dir = join(base, 'open');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    plant(dir);
    refusedEverywhere(dir, 'a 0777 dir');
  });

  test('a stack dir that is a symbolic link to a dir of ours is refused', TEST, () => {
    const target = join(base, 'real');
    mkdirSync(target, { mode: 0o700 });
    plant(target);
    const link = join(base, 'link');
    symlinkSync(target, link);
    refusedEverywhere(link, 'a symbolic link');
    assert.ok(lstatSync(link).isSymbolicLink());
  });

  test('a 0700 stack dir made by another user is refused', { ...TEST, skip: isRoot ? false : 'needs root to chown' }, () => {
    const dir = join(base, 'theirs');
    mkdirSync(dir, { mode: 0o700 });
    plant(dir);
    for (const name of ['', 'stack.env', 'nats.secrets', 'key.env']) chownSync(join(dir, name), NOBODY, NOBODY);
    refusedEverywhere(dir, "another user's dir");
  });

  test('a stack dir under a directory others can write to is refused, even when it is ours and 0700', { ...TEST, skip: isRoot ? false : 'needs root to chown' }, () => {
    const parent = join(base, 'shared');
    mkdirSync(parent);
    chmodSync(parent, 0o777);
    const dir = join(parent, 'stack');
    mkdirSync(dir, { mode: 0o700 });
    plant(dir);
    chmodSync(join(dir, 'stack.env'), 0o600);
    refusedEverywhere(dir, 'a dir whose parent anyone may rename');
  });

  test('stack.ts (the tests\' and the bench\'s reader) refuses a planted stack.env too', TEST, () => {
    const dir = join(base, 'planted-for-ts');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    plant(dir);
    const code = "import { stack } from './test/helpers/stack.ts'; try { stack(); console.log('read'); } catch (err) { console.log(String(err)); }";
    const result = spawnSync(process.execPath, ['--input-type=module', '-e', code], { cwd: ROOT, env: env({ FERRY_STACK_DIR: dir }), encoding: 'utf8' });
    assert.match(result.stdout, /is not safe to read: .*refusing/, result.stderr);
    assert.equal(existsSync(marker), false);
  });

  test('demo.sh refuses a planted demo dir before it reads its receiver.pid or writes a key', TEST, () => {
    const demo = join(base, 'demo');
    mkdirSync(demo);
    chmodSync(demo, 0o777);
    plant(demo);
    // A process that a planted receiver.pid asks `demo.sh stop` to kill.
    const victim = spawn('sleep', ['300'], { stdio: 'ignore' });
    try {
      writeFileSync(join(demo, 'receiver.pid'), `${victim.pid}\n`);
      const keyBefore = readFileSync(join(demo, 'key.env'), 'utf8');
      // The stack dir does not exist: were the check missing, `stop` would find nothing to stop there.
      for (const args of [['deploy/demo.sh', 'stop'], ['deploy/demo.sh']]) {
        const { code, stderr } = run(args, { FERRY_DEMO_DIR: demo, FERRY_STACK_DIR: join(base, 'no-stack') });
        assert.notEqual(code, 0);
        assert.match(stderr, /refusing .*demo: its mode is 777/);
      }
      assert.equal(victim.exitCode, null);
      assert.equal(victim.signalCode, null, 'the planted pid was not killed');
      assert.equal(readFileSync(join(demo, 'key.env'), 'utf8'), keyBefore);
      assert.equal(existsSync(join(base, 'no-stack')), false);
      assert.equal(existsSync(marker), false);
    } finally {
      victim.kill();
    }
  });
});
