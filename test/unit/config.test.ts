import assert from 'node:assert/strict';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { documentHeader, generateKeyPair, privateKeyPem, publicKeyText } from '@ferry/auth';
import { parseListen } from '@ferry/config';
import { FerryError } from '@ferry/protocol';
import { loadReceiverConfig } from '@ferry/receiver';
import { loadSenderConfig } from '@ferry/sender';
import { grantFor, keyEnv, testKey } from '../helpers/keys.ts';

const PEM = privateKeyPem(generateKeyPair().privateKey);
/** The base64 body of the PEM: what would leak if a message quoted the key. */
const PEM_BODY = PEM.split('\n')[1] ?? '';

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

/** The message of a FERRY_ERR_CONFIG thrown while the credentials are read. */
function credentialRefusal(load: () => unknown): string {
  let message = '';
  assert.throws(load, (err: unknown) => {
    assert.ok(err instanceof FerryError, String(err));
    assert.equal(err.code, 'FERRY_ERR_CONFIG');
    message = err.message;
    return true;
  });
  return message;
}

function problems(message: string): string[] {
  return message.split('\n').slice(1).map((line) => line.replace(/^ {2}- /, ''));
}

describe('loadReceiverConfig', () => {
  it('needs nothing: the trust file defaults to <data dir>/trust.json, and the rest has defaults', () => {
    const config = loadReceiverConfig({});
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 7701 });
    assert.equal(config.dataDir, '/var/lib/ferry');
    assert.equal(config.trustFile, '/var/lib/ferry/trust.json');
    assert.deepEqual(config.labels, {});
    assert.equal(config.logLevel, 'info');
    assert.equal(config.natsUrl, undefined);
    assert.equal(config.dockerHost, undefined);
    assert.match(config.hostId, /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/);
    assert.ok(Object.isFrozen(config));
    assert.equal(loadReceiverConfig({ FERRY_DATA_DIR: '/srv/ferry' }).trustFile, '/srv/ferry/trust.json');
  });

  it('reads every variable', () => {
    const config = loadReceiverConfig({
      FERRY_TRUST_FILE: '/etc/ferry/trust.json',
      FERRY_LABELS: 'env=prod,role=web',
      FERRY_LISTEN: '[::1]:8000',
      FERRY_NATS_URL: 'nats://10.0.0.2:4222',
      FERRY_DATA_DIR: '/srv/ferry',
      FERRY_HOST_ID: 'edge-7',
      FERRY_LOG_LEVEL: 'debug',
      DOCKER_HOST: 'unix:///run/docker.sock',
    });
    assert.deepEqual(config.listen, { host: '::1', port: 8000 });
    assert.equal(config.trustFile, '/etc/ferry/trust.json');
    assert.deepEqual(config.labels, { env: 'prod', role: 'web' });
    assert.equal(config.natsUrl, 'nats://10.0.0.2:4222');
    assert.equal(config.dataDir, '/srv/ferry');
    assert.equal(config.hostId, 'edge-7');
    assert.equal(config.logLevel, 'debug');
    assert.equal(config.dockerHost, 'unix:///run/docker.sock');
  });

  it('treats an empty variable as unset', () => {
    const config = loadReceiverConfig({ FERRY_TRUST_FILE: '', FERRY_LISTEN: '', FERRY_NATS_URL: '' });
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 7701 });
    assert.equal(config.natsUrl, undefined);
    assert.equal(config.trustFile, '/var/lib/ferry/trust.json');
  });

  it('ignores variables that are not Ferry\'s', () => {
    assert.doesNotThrow(() => loadReceiverConfig({ PATH: '/usr/bin', FERRYMAN: 'x', HOME: '/root' }));
  });

  it('reports every problem in one error', () => {
    const message = refusal(() => loadReceiverConfig({
      FERRY_LISTEN: 'localhost', FERRY_DATA_DIR: 'relative/dir', FERRY_LOG_LEVEL: 'loud', FERRY_TRUST_FILE: 'trust.json',
    }));
    const list = problems(message);
    assert.equal(list.length, 4, message);
    assert.ok(list.some((p) => p.startsWith('FERRY_LISTEN: ') && p.includes('host:port')), message);
    assert.ok(list.some((p) => p.startsWith('FERRY_TRUST_FILE: ') && p.includes('absolute')), message);
    assert.ok(list.some((p) => p.startsWith('FERRY_DATA_DIR: ') && p.includes('absolute')), message);
    assert.ok(list.some((p) => p.startsWith('FERRY_LOG_LEVEL: ')), message);
  });

  it('names an unknown FERRY_ variable and suggests the closest one', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_NAT_URL: 'nats://x:4222' }));
    assert.deepEqual(problems(message), ['FERRY_NAT_URL: unknown variable (did you mean FERRY_NATS_URL?)']);
    assert.ok(!message.includes('nats://x:4222'));
  });

  it('gives no suggestion when nothing is close', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_COLOUR_SCHEME: 'dark' }));
    assert.deepEqual(problems(message), ['FERRY_COLOUR_SCHEME: unknown variable']);
  });

  it('reports an unknown variable together with the other problems', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_LISTEN: 'x', FERRY_DATADIR: '/srv' }));
    assert.match(message, /FERRY_DATADIR: unknown variable \(did you mean FERRY_DATA_DIR\?\)/);
    assert.match(message, /FERRY_LISTEN: /);
  });

  // The shared-secret variable is gone: a receiver still given one refuses to start, and its value
  // (a secret once) is not repeated in the error.
  it('refuses the retired FERRY_KEYS without showing its value', () => {
    const secret = 'Zm9vYmFyLXNlY3JldC1mb3ItdGVzdHMtb25seQ';
    const message = refusal(() => loadReceiverConfig({ FERRY_KEYS: `ci:${secret}`, FERRY_LISTEN: 'nope' }));
    assert.ok(problems(message).some((p) => p.startsWith('FERRY_KEYS: unknown variable')), message);
    assert.ok(!message.includes(secret), message);
  });

  it('never shows a key given where it does not belong, next to other problems', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_LISTEN: 'nope', FERRY_LABELS: 'env prod', FERRY_KEY: PEM }));
    assert.ok(!message.includes(PEM_BODY), message);
    assert.ok(!message.includes('PRIVATE KEY'), message);
  });

  it('names a malformed FERRY_LABELS', () => {
    const message = refusal(() => loadReceiverConfig({ FERRY_LABELS: 'env prod' }));
    assert.deepEqual(problems(message).map((p) => p.split(':')[0]), ['FERRY_LABELS']);
    assert.ok(!message.includes('env prod'));
  });
});

describe('loadSenderConfig', () => {
  it('reads the key (FERRY_KEY or FERRY_KEY_FILE), the grant and the optional settings', () => {
    const key = testKey('ci');
    const config = loadSenderConfig({ FERRY_KEY_ID: 'ci', FERRY_KEY: PEM, FERRY_NATS_URL: 'tls://nats.example.com:4222', DOCKER_HOST: 'tcp://build:2375' });
    assert.equal(config.credentials.keyId, 'ci');
    assert.equal(publicKeyText(config.credentials.privateKey), publicKeyText(createPrivateKey(PEM)));
    assert.equal(config.credentials.grant, undefined);
    assert.equal(config.natsUrl, 'tls://nats.example.com:4222');
    assert.equal(config.dockerHost, 'tcp://build:2375');
    assert.ok(Object.isFrozen(config));

    const admin = testKey('admin');
    const grant = grantFor(key, admin, { role: 'deploy', services: ['web-*'] });
    const fromFile = loadSenderConfig({ ...keyEnv(key, grant) });
    assert.equal(fromFile.credentials.keyId, 'ci');
    assert.equal(publicKeyText(fromFile.credentials.privateKey), key.publicKey);
    assert.equal(fromFile.credentials.grant, documentHeader(grant), 'the grant is sent as it was signed');
  });

  it('defaults NATS and Docker to unset', () => {
    const config = loadSenderConfig({ FERRY_KEY_ID: 'ci', FERRY_KEY: PEM });
    assert.equal(config.natsUrl, undefined);
    assert.equal(config.dockerHost, undefined);
  });

  it('reports every problem of the variables in one error, without the key', () => {
    const message = refusal(() => loadSenderConfig({
      FERRY_KEY_ID: 'ci', FERRY_KEY: PEM, FERRY_KEY_FILE: 'key.pem', FERRY_NATS_URL: 'http://nats:4222', DOCKER_HOST: '/var/run/docker.sock',
    }));
    const list = problems(message);
    assert.equal(list.length, 3, message);
    for (const name of ['FERRY_KEY_FILE', 'FERRY_NATS_URL', 'DOCKER_HOST']) {
      assert.ok(list.some((p) => p.startsWith(`${name}: `)), `${name} in ${message}`);
    }
    assert.ok(!message.includes(PEM_BODY), message);
  });

  it('refuses a bad key id, a key that is not a PEM, or an RSA key, naming the variable and never quoting the key', () => {
    const notPem = 'tooShort-123-not-a-key';
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const cases: [string, Record<string, string>, RegExp][] = [
      ['a key id with a space', { FERRY_KEY_ID: 'has space', FERRY_KEY: PEM }, /^FERRY_KEY_ID: /],
      ['not a PEM', { FERRY_KEY_ID: 'ci', FERRY_KEY: notPem }, /^FERRY_KEY: not a PEM private key/],
      ['an RSA key', { FERRY_KEY_ID: 'ci', FERRY_KEY: rsa }, /^FERRY_KEY: an Ed25519 key is required/],
      ['a missing key file', { FERRY_KEY_ID: 'ci', FERRY_KEY_FILE: '/nonexistent/ferry/key.pem' }, /^FERRY_KEY_FILE: cannot read/],
    ];
    for (const [label, env, expected] of cases) {
      const message = credentialRefusal(() => loadSenderConfig(env));
      assert.match(message, expected, label);
      for (const secret of [PEM_BODY, notPem, rsa.split('\n')[1] ?? '']) assert.ok(!message.includes(secret), `${label}: ${message}`);
    }
  });

  it('refuses a grant for another key id or another public key', () => {
    const key = testKey('ci');
    const admin = testKey('admin');
    const forOther = grantFor(testKey('other'), admin, { role: 'deploy' });
    assert.match(credentialRefusal(() => loadSenderConfig(keyEnv(key, forOther))), /FERRY_GRANT is for key id other/);
    const otherPair = grantFor(testKey('ci'), admin, { role: 'deploy' });
    assert.match(credentialRefusal(() => loadSenderConfig(keyEnv(key, otherPair))), /FERRY_GRANT is for another public key/);
  });

  it('requires the key id and the key', () => {
    const list = problems(refusal(() => loadSenderConfig({})));
    assert.ok(list.some((p) => p.startsWith('FERRY_KEY_ID: required')), list.join('\n'));
    assert.match(credentialRefusal(() => loadSenderConfig({ FERRY_KEY_ID: 'ci' })), /FERRY_KEY_FILE \(or FERRY_KEY\) is required/);
  });

  it('suggests the known variable for a typo', () => {
    const message = refusal(() => loadSenderConfig({ FERRY_KEY_ID: 'ci', FERRY_KEY: PEM, FERRY_KEYID: 'ci' }));
    assert.match(message, /FERRY_KEYID: unknown variable \(did you mean FERRY_KEY_ID\?\)/);
    assert.ok(!message.includes(PEM_BODY));
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
