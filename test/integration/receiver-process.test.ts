/**
 * `ferry receiver` replaces itself at start with the V8 flags and the malloc setting that keep its
 * memory flat (bin/main.ts): a real receiver process on the stack's target engine, read from /proc.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { describe, test } from 'node:test';
import { startReceiverProcess } from '../helpers/ferry.ts';
import { testKey, trustFile } from '../helpers/keys.ts';
import { stack } from '../helpers/stack.ts';

const s = stack();
const trust = trustFile(testKey('rp'));

async function procOf(pid: number | undefined): Promise<{ argv: string[]; env: Map<string, string> }> {
  assert.ok(pid !== undefined);
  const split = (text: string): string[] => text.split('\0').filter((part) => part !== '');
  const env = split(await readFile(`/proc/${pid}/environ`, 'utf8')).map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)] as const);
  return { argv: split(await readFile(`/proc/${pid}/cmdline`, 'utf8')), env: new Map(env) };
}

describe('the receiver process', { timeout: 120_000 }, () => {
  test('runs with 1 MiB semi-spaces, gc exposed and buffers of 128 KiB or more mapped on their own', async () => {
    const receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trust, FERRY_HOST_ID: `rp-${randomBytes(3).toString('hex')}` });
    try {
      const { argv, env } = await procOf(receiver.child.pid);
      for (const flag of ['--max-semi-space-size=1', '--v8-pool-size=1', '--expose-gc']) assert.ok(argv.includes(flag), `${flag} in ${argv.join(' ')}`);
      assert.equal(env.get('MALLOC_MMAP_THRESHOLD_'), '131072');
    } finally {
      await receiver.stop();
    }
  });

  test("keeps the operator's own malloc setting", async () => {
    const receiver = await startReceiverProcess({ DOCKER_HOST: s.targetDockerHost, FERRY_TRUST_FILE: trust, FERRY_HOST_ID: `rp-${randomBytes(3).toString('hex')}`, MALLOC_ARENA_MAX: '2' });
    try {
      const { argv, env } = await procOf(receiver.child.pid);
      assert.ok(argv.includes('--expose-gc'));
      assert.equal(env.get('MALLOC_ARENA_MAX'), '2');
      assert.equal(env.has('MALLOC_MMAP_THRESHOLD_'), false);
    } finally {
      await receiver.stop();
    }
  });
});
