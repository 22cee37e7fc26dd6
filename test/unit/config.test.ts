import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseListen } from '@ferry/config';
import { FerryError } from '@ferry/protocol';
import { loadReceiverConfig } from '@ferry/receiver';
import { loadSenderConfig } from '@ferry/sender';

const SECRET = 'Zm9vYmFyLXNlY3JldC1mb3ItdGVzdHMtb25seQ';
const OTHER_SECRET = 'b3RoZXItc2VjcmV0LWZvci10ZXN0cw';
const KEYS = `ci:${SECRET}`;

/** The FerryError message of a refused configuration. */
function refusal(load: () => unknown): string {
  let message = '';
  assert.throws(load, (err: unknown) => {
    assert.ok(err instanceof FerryError, String(err));
    assert.equal(err.code, 'FERRY_ERR_CONFIG');
    assert.match(err.message, /^Invalid configuration:\n {2}- /);
    message = err.message;
    return true;
  });
  return message;
}

function problems(message: string): string[] {
  return message.split('\n').slice(1).map((line) => line.replace(/^ {2}- /, ''));
}

describe('loadReceiverConfig', () => {
  it('needs only FERRY_KEYS and defaults the rest', () => {
    const config = loadReceiverConfig({ FERRY_KEYS: KEYS });
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 7701 });
    assert.equal(config.dataDir, '/var/lib/ferry');
    assert.equal(config.logLevel, 'info');
    assert.equal(config.natsUrl, undefined);
    assert.equal(config.dockerHost, undefined);
    assert.match(config.hostId, /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/);
    assert.deepEqual(config.keys.ids, ['ci']);
    assert.equal(config.keys.secretFor('ci'), SECRET);
    assert.ok(Object.isFrozen(config));
  });

  it('reads every variable', () => {
    const config = loadReceiverConfig({
      FERRY_KEYS: `${KEYS},next:${OTHER_SECRET}`,
      FERRY_LISTEN: '[::1]:8000',
      FERRY_NATS_URL: 'nats://10.0.0.2:4222',
      FERRY_DATA_DIR: '/srv/ferry',
      FERRY_HOST_ID: 'edge-7',
      FERRY_LOG_LEVEL: 'debug',
      DOCKER_HOST: 'unix:///run/docker.sock',
    });
    assert.deepEqual(config.listen, { host: '::1', port: 8000 });
    assert.deepEqual(config.keys.ids, ['ci', 'next']);
    assert.equal(config.natsUrl, 'nats://10.0.0.2:4222');
    assert.equal(config.dataDir, '/srv/ferry');
    assert.equal(config.hostId, 'edge-7');
    assert.equal(config.logLevel, 'debug');
    assert.equal(config.dockerHost, 'unix:///run/docker.sock');
  });

  it('treats an empty variable as unset', () => {
    const config = loadReceiverConfig({ FERRY_KEYS: KEYS, FERRY_LISTEN: '', FERRY_NATS_URL: '' });
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 7701 });
    assert.equal(config.natsUrl, undefined);
  });

  it('ignores variables that are not Ferry\'s', () => {
    assert.doesNotThrow(() => loadReceiverConfig({ FERRY_KEYS: KEYS, PATH: '/usr/bin', FERRYMAN: 'x', HOME: '/root' }));
  });

  it('reports every problem in one error', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_LISTEN: 'localhost', FERRY_DATA_DIR: 'relative/dir', FERRY_LOG_LEVEL: 'loud' }));
    const list = problems(message);
    assert.equal(list.length, 4, message);
    assert.ok(list.some((p) => p.startsWith('FERRY_LISTEN: ') && p.includes('host:port')), message);
    assert.ok(list.some((p) => p.startsWith('FERRY_KEYS: required')), message);
    assert.ok(list.some((p) => p.startsWith('FERRY_DATA_DIR: ') && p.includes('absolute')), message);
    assert.ok(list.some((p) => p.startsWith('FERRY_LOG_LEVEL: ')), message);
  });

  it('names an unknown FERRY_ variable and suggests the closest one', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_KEYS: KEYS, FERRY_NAT_URL: 'nats://x:4222' }));
    assert.deepEqual(problems(message), ['FERRY_NAT_URL: unknown variable (did you mean FERRY_NATS_URL?)']);
    assert.ok(!message.includes('nats://x:4222'));
  });

  it('gives no suggestion when nothing is close', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_KEYS: KEYS, FERRY_COLOUR_SCHEME: 'dark' }));
    assert.deepEqual(problems(message), ['FERRY_COLOUR_SCHEME: unknown variable']);
  });

  it('reports an unknown variable together with the other problems', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_LISTEN: 'x', FERRY_DATADIR: '/srv' }));
    assert.match(message, /FERRY_DATADIR: unknown variable \(did you mean FERRY_DATA_DIR\?\)/);
    assert.match(message, /FERRY_LISTEN: /);
    assert.match(message, /FERRY_KEYS: /);
  });

  describe('never shows a secret', () => {
    const cases: [string, string][] = [
      ['a short secret', 'ci:tooShort-123'],
      ['a duplicate key id', `ci:${SECRET},ci:${OTHER_SECRET}`],
      ['a bad key id', `no way:${SECRET}`],
      ['valid keys next to other problems', KEYS],
    ];
    for (const [name, keys] of cases) {
      it(name, () => {
        const message = refusal(() => loadReceiverConfig({ FERRY_KEYS: keys, FERRY_LISTEN: 'nope', FERRY_KEY: SECRET }));
        for (const secret of [SECRET, OTHER_SECRET, 'tooShort-123']) assert.ok(!message.includes(secret), message);
      });
    }
  });

  it('names the bad key entry', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_KEYS: 'ci:short' }));
    assert.match(message, /FERRY_KEYS: entry 1: secret must be at least 16 characters/);
    assert.ok(!message.includes(':short'));
  });
});

describe('loadSenderConfig', () => {
  it('reads the key and the optional settings', () => {
    const config = loadSenderConfig({ FERRY_KEY_ID: 'ci', FERRY_KEY: SECRET, FERRY_NATS_URL: 'tls://nats.example.com:4222', DOCKER_HOST: 'tcp://build:2375' });
    assert.deepEqual(config.credentials, { keyId: 'ci', secret: SECRET });
    assert.equal(config.natsUrl, 'tls://nats.example.com:4222');
    assert.equal(config.dockerHost, 'tcp://build:2375');
    assert.ok(Object.isFrozen(config));
  });

  it('defaults NATS and Docker to unset', () => {
    const config = loadSenderConfig({ FERRY_KEY_ID: 'ci', FERRY_KEY: SECRET });
    assert.equal(config.natsUrl, undefined);
    assert.equal(config.dockerHost, undefined);
  });

  it('reports every problem in one error, without the secret', () => {
    const message = refusal(() => loadSenderConfig({ FERRY_KEY_ID: 'has space', FERRY_KEY: 'tooShort-123', FERRY_NATS_URL: 'http://nats:4222', DOCKER_HOST: '/var/run/docker.sock' }));
    const list = problems(message);
    assert.equal(list.length, 4, message);
    for (const name of ['FERRY_KEY_ID', 'FERRY_KEY', 'FERRY_NATS_URL', 'DOCKER_HOST']) {
      assert.ok(list.some((p) => p.startsWith(`${name}: `)), `${name} in ${message}`);
    }
    assert.ok(!message.includes('tooShort-123'), message);
  });

  it('requires the key id and the key', () => {
    const list = problems(refusal(() => loadSenderConfig({})));
    assert.equal(list.length, 2);
    assert.ok(list.some((p) => p.startsWith('FERRY_KEY_ID: required')));
    assert.ok(list.some((p) => p.startsWith('FERRY_KEY: required')));
  });

  it('suggests the known variable for a typo', () => {
    const message = refusal(() => loadSenderConfig({ FERRY_KEY_ID: 'ci', FERRY_KEY: SECRET, FERRY_KEYID: 'ci' }));
    assert.match(message, /FERRY_KEYID: unknown variable \(did you mean FERRY_KEY_ID\?\)/);
    assert.ok(!message.includes(SECRET));
  });
});

describe('parseListen', () => {
  it('reads host:port and [v6]:port', () => {
    assert.deepEqual(parseListen('0.0.0.0:7701'), { host: '0.0.0.0', port: 7701 });
    assert.deepEqual(parseListen('[::]:80'), { host: '::', port: 80 });
    assert.deepEqual(parseListen('receiver.local:65535'), { host: 'receiver.local', port: 65535 });
  });

  it('refuses anything else', () => {
    for (const value of ['7701', ':7701', 'host:', 'host:65536', '::1:7701', 'host:port', 'a:b:1']) {
      assert.equal(parseListen(value), undefined, value);
    }
  });
});
