/**
 * The bash HMAC of deploy/ferry-push.sh (and of docs/protocol.md §5.3) against the worked example
 * of §3.4 and against node:crypto for keys the example does not cover: non-ASCII bytes, exactly
 * 64 bytes, longer than 64 (hashed first). It is run from the files themselves, so the script and
 * the document cannot drift from the protocol.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ROOT, capture } from '../helpers/ferry.ts';

const CANONICAL = [
  'FERRY-HMAC-SHA256-V1', 'POST', '/v1/packages', '1767225600', 'q3Vv9bT1X0mZKc7hN2rQ8w',
  'blake3:7c446e0158ef423130e0400c091d5e6f7c2001ac9a8f31d7c17ae625334a582b', 'ci-main', 'edge-1', '',
].join('\n');

/** The `hmac()` function as written in FILE, from its first line to the closing brace. */
async function hmacFunction(file: string): Promise<string> {
  const text = await readFile(join(ROOT, file), 'utf8');
  const match = /^hmac\(\) \{[^\n]*\n(?:.*\n)*?\}\n/m.exec(text);
  assert.ok(match, `no hmac() in ${file}`);
  return match[0];
}

async function bashHmac(file: string, secret: string, message: string): Promise<string> {
  // The secret and message go through the environment, as the script keeps them off command lines.
  const result = await capture('bash', ['-c', `${await hmacFunction(file)}\nprintf '%s' "$MESSAGE" | hmac "$SECRET"`], {
    PATH: process.env.PATH, SECRET: secret, MESSAGE: message,
  });
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

describe('the bash HMAC-SHA256 of the shell fallback', () => {
  for (const file of ['deploy/ferry-push.sh', 'docs/protocol.md']) {
    test(`${file}: the worked example of §3.4`, async () => {
      assert.equal(await bashHmac(file, 'example-secret-DO-NOT-USE-0123456789', CANONICAL), '7ef66b2c97e997a49b7490fe09936b7c1674c180460ecf82212be5df03eb18bf');
    });
  }

  test('keys with non-ASCII characters, of exactly 64 bytes and longer than 64 match node:crypto', async () => {
    const keys = ['clé-secrète-ünïcode-0123', 'x'.repeat(64), randomBytes(60).toString('base64url'), 'a-secret-of-sixteen'];
    for (const key of keys) {
      const message = `${CANONICAL}\n${randomBytes(8).toString('hex')}`;
      assert.equal(await bashHmac('deploy/ferry-push.sh', key, message), createHmac('sha256', Buffer.from(key, 'utf8')).update(message).digest('hex'), key);
    }
  });
});
