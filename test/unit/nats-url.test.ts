import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isFerryError } from '@ferry/protocol';
import { natsConnectTarget, redactNatsUrl } from '@ferry/events';

const ROOT = join(import.meta.dirname, '../..');

void describe('natsConnectTarget', () => {
  void it('takes user and password out of the URL: nats.js would connect without them', () => {
    assert.deepEqual(natsConnectTarget('nats://ferry-publisher:s3cret@127.0.0.1:14222'), {
      servers: ['nats://127.0.0.1:14222'], user: 'ferry-publisher', pass: 's3cret',
    });
  });

  void it('decodes a percent-encoded password and reads a lone userinfo as a token', () => {
    assert.deepEqual(natsConnectTarget('nats://u:p%40ss%3Aw@h:4222'), { servers: ['nats://h:4222'], user: 'u', pass: 'p@ss:w' });
    assert.deepEqual(natsConnectTarget('tls://t0ken@h:4222'), { servers: ['tls://h:4222'], token: 't0ken' });
  });

  void it('leaves URLs without credentials as they are, one server per comma', () => {
    assert.deepEqual(natsConnectTarget('nats://a:4222, nats://b:4222'), { servers: ['nats://a:4222', 'nats://b:4222'] });
    assert.deepEqual(natsConnectTarget('127.0.0.1:4222'), { servers: ['127.0.0.1:4222'] });
  });

  void it('gives every server the one identity; two different ones are a config error naming no password', () => {
    assert.deepEqual(natsConnectTarget('nats://u:p@a:4222,nats://b:4222,nats://u:p@[::1]:4222'), {
      servers: ['nats://a:4222', 'nats://b:4222', 'nats://[::1]:4222'], user: 'u', pass: 'p',
    });
    assert.throws(() => natsConnectTarget('nats://u:one@a:4222,nats://u:two@b:4222'), (err: unknown) => {
      assert.ok(isFerryError(err, 'FERRY_ERR_CONFIG'));
      assert.doesNotMatch(err.message, /one|two/);
      return true;
    });
  });

  void it('refuses a URL it cannot parse without repeating its password', () => {
    assert.throws(() => natsConnectTarget('nats://u:hunter2@bad host:4222'), (err: unknown) => {
      assert.ok(isFerryError(err, 'FERRY_ERR_CONFIG'));
      assert.doesNotMatch(err.message, /hunter2/);
      assert.equal(err.cause, undefined);
      return true;
    });
  });
});

void describe('redactNatsUrl', () => {
  const cases: [string, string][] = [
    ['nats://ferry-publisher:0123abcd@127.0.0.1:14222', 'nats://ferry-publisher:***@127.0.0.1:14222'],
    ['nats://u:p@ss@h:4222', 'nats://u:***@h:4222'],
    ['tls://t0ken@h:4222', 'tls://***@h:4222'],
    ['nats://u:p@a:1,nats://b:2,nats://u:q@c:3', 'nats://u:***@a:1,nats://b:2,nats://u:***@c:3'],
    ['nats://127.0.0.1:4222', 'nats://127.0.0.1:4222'],
    ['127.0.0.1:4222', '127.0.0.1:4222'],
  ];

  void it('hides every password and token, keeps the rest', () => {
    for (const [url, redacted] of cases) assert.equal(redactNatsUrl(url), redacted, url);
  });

  void it('agrees with ferry_redact_url, which the shell scripts use', () => {
    for (const [url, redacted] of cases) {
      const shell = execFileSync('bash', ['-c', '. deploy/lib/safe-dir.sh && ferry_redact_url "$1"', 'redact', url], { cwd: ROOT, encoding: 'utf8' });
      assert.equal(shell.trim(), redacted, url);
    }
  });
});
