/**
 * The logger's redaction paths (RELIABILITY row 9): keys, signatures and deployment environment
 * values in the shapes the receiver logs them never reach a log line, also through the child
 * loggers per request and per deployment. Lines are read back as JSON from a sink.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger, type Logger } from '@ferry/log';

const secret = `key-${randomBytes(16).toString('hex')}`;
const signature = randomBytes(32).toString('hex');
const envValue = `env-${randomBytes(16).toString('hex')}`;
const bearer = `tok-${randomBytes(16).toString('hex')}`;

function sinkLogger(level = 'trace'): { logger: Logger; lines: () => Record<string, unknown>[]; text: () => string } {
  let text = '';
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      text += chunk.toString();
      callback();
    },
  });
  const logger = createLogger({ level, name: 'ferry-receiver', destination });
  return {
    logger,
    text: () => text,
    lines: () => text.trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}

function assertClean(text: string): void {
  for (const [what, value] of [['key secret', secret], ['signature', signature], ['env value', envValue], ['bearer token', bearer]]) {
    assert.ok(!text.includes(value), `${what} leaked: ${text}`);
  }
}

const manifest = {
  deploymentId: '6f1c2e9a-4b7d-4c1e-9a3f-0d2b5e8c7a10',
  image: { ref: 'web:1', id: `sha256:${'a'.repeat(64)}` },
  service: { name: 'web', env: { SECRET: envValue, PORT: '8080' }, network: 'host' },
};

void describe('log redaction', () => {
  void it('removes signatures and credentials from request headers', () => {
    const { logger, text, lines } = sinkLogger();
    const headers = { 'x-ferry-signature': signature, 'x-ferry-key-id': 'ci', authorization: `Bearer ${bearer}` };
    logger.info({ req: { method: 'POST', url: '/v1/packages', headers } }, 'request');
    logger.info({ headers }, 'headers alone');
    assertClean(text());
    const [first] = lines();
    assert.deepEqual((first?.req as { headers: Record<string, string> }).headers, {
      'x-ferry-signature': '[redacted]', 'x-ferry-key-id': 'ci', authorization: '[redacted]',
    }, 'the key id stays: it names the key without revealing it');
  });

  void it('removes a deployment\'s environment values wherever the manifest or spec is logged', () => {
    const { logger, text, lines } = sinkLogger();
    logger.info({ manifest }, 'manifest');
    logger.info({ service: manifest.service }, 'service');
    logger.info({ spec: { name: 'web', env: manifest.service.env } }, 'spec');
    logger.info({ env: manifest.service.env }, 'env');
    assertClean(text());
    const [first] = lines();
    assert.equal((first?.manifest as typeof manifest).service.name, 'web', 'the rest of the manifest is kept');
  });

  void it('removes keys and secrets in configuration-shaped objects', () => {
    const { logger, text } = sinkLogger();
    // FERRY_KEY carries a sender's private key (PEM text) when no FERRY_KEY_FILE names one.
    logger.info({ FERRY_KEY_ID: 'ci', FERRY_KEY: secret }, 'env');
    logger.info({ config: { key: secret, secret } }, 'config');
    logger.info({ key: secret, secret }, 'flat');
    logger.info({ privateKey: secret, credentials: { keyId: 'ci', privateKey: secret } }, 'private key');
    logger.info({ FERRY_JOIN_TOKEN: secret, enroll: { joinToken: secret, token: secret } }, 'join token');
    assertClean(text());
  });

  void it('keeps redacting in the child loggers per request and per deployment', () => {
    const { logger, text, lines } = sinkLogger();
    const perRequest = logger.child({ reqId: 'r-1' });
    const perDeployment = perRequest.child({ deploymentId: manifest.deploymentId, service: 'web' });
    perRequest.info({ headers: { 'x-ferry-signature': signature } }, 'request');
    perDeployment.warn({ manifest, env: manifest.service.env }, 'deployment');
    assertClean(text());
    const [request, deployment] = lines();
    assert.equal(request?.reqId, 'r-1');
    assert.equal(deployment?.reqId, 'r-1');
    assert.equal(deployment?.deploymentId, manifest.deploymentId);
  });

  void it('writes one JSON object per line with level, time and the logger name', () => {
    const { logger, lines } = sinkLogger('info');
    logger.debug('hidden below the level');
    logger.error({ err: new Error('boom') }, 'failed');
    const all = lines();
    assert.equal(all.length, 1);
    assert.equal(all[0]?.level, 50);
    assert.equal(all[0]?.name, 'ferry-receiver');
    assert.equal(all[0]?.msg, 'failed');
    assert.equal(new Date(all[0]?.time as string).toISOString(), all[0]?.time);
    assert.equal((all[0]?.err as { message: string }).message, 'boom');
  });
});
