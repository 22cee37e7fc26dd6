/**
 * The receiver's front door on real sockets: refusals happen from the headers alone, before any
 * body byte, and a signed request cannot be used twice.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { signRequest } from '@ferry/auth';
import { digestOf } from '@ferry/integrity';
import { startReceiverProcess, type ReceiverProcess } from '../helpers/ferry.ts';
import { stack } from '../helpers/stack.ts';

const key = { keyId: 'auth-test', secret: randomBytes(24).toString('base64url') };
const body = Buffer.from('--x\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n{}\r\n--x--\r\n');

interface RawAnswer { status: number; headers: string; body: string; bodyBytesSent: number }

/**
 * Sends a request head and then, only if the server asks (100 Continue) or never answers, the
 * body. Returns how many body bytes went out before the answer, which is what "before the body is
 * read" means on the wire.
 */
function rawRequest(url: string, headers: Record<string, string>, payload: Buffer, declaredLength = payload.length): Promise<RawAnswer> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let received = '';
    let bodyBytesSent = 0;
    const head = [
      'POST /v1/packages HTTP/1.1', `Host: ${hostname}:${port}`, 'Content-Type: multipart/form-data; boundary=x',
      `Content-Length: ${declaredLength}`, 'Expect: 100-continue', 'Connection: close',
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', '',
    ].join('\r\n');
    socket.write(head);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      received += chunk;
      if (received.startsWith('HTTP/1.1 100')) {
        received = received.slice(received.indexOf('\r\n\r\n') + 4);
        socket.write(payload);
        bodyBytesSent += payload.length;
      }
    });
    socket.on('error', reject);
    socket.on('close', () => {
      const [statusLine = '', ...rest] = received.split('\r\n');
      const split = rest.indexOf('');
      resolve({ status: Number(statusLine.split(' ')[1]), headers: rest.slice(0, split).join('\n'), body: rest.slice(split + 1).join('\r\n'), bodyBytesSent });
    });
  });
}

const code = (answer: RawAnswer): string => {
  const json = answer.body.slice(answer.body.indexOf('{'), answer.body.lastIndexOf('}') + 1);
  return (JSON.parse(json) as { error: { code: string } }).error.code;
};

describe('receiver authentication on real sockets', { timeout: 60_000 }, () => {
  let receiver: ReceiverProcess;
  before(async () => {
    receiver = await startReceiverProcess({
      DOCKER_HOST: stack().targetDockerHost, FERRY_KEYS: `${key.keyId}:${key.secret},other:${randomBytes(24).toString('base64url')}`,
      FERRY_HOST_ID: 'auth-test',
    });
  });
  after(async () => receiver?.stop());

  const signed = (overrides: Partial<Parameters<typeof signRequest>[0]> = {}): Record<string, string> =>
    signRequest({ method: 'POST', path: '/v1/packages', contentDigest: digestOf('{}'), ...key, ...overrides });

  test('a bad signature, an unknown key and a stale timestamp get 401 before a body byte is sent', async () => {
    const cases: [string, Record<string, string>][] = [
      ['FERRY_ERR_BAD_SIGNATURE', signed({ secret: randomBytes(24).toString('base64url') })],
      ['FERRY_ERR_UNKNOWN_KEY', signRequest({ method: 'POST', path: '/v1/packages', contentDigest: digestOf('{}'), keyId: 'nobody', secret: key.secret })],
      ['FERRY_ERR_STALE_TIMESTAMP', signed({ now: Math.floor(Date.now() / 1000) - 301 })],
      ['FERRY_ERR_BAD_SIGNATURE', signed({ path: '/v1/other' })],
      ['FERRY_ERR_AUTH_MISSING', {}],
    ];
    for (const [expected, headers] of cases) {
      // A gigabyte is declared; none of it is ever sent, and the answer still comes.
      const answer = await rawRequest(receiver.url, headers, body, 1024 ** 3);
      assert.equal(answer.status, 401, expected);
      assert.equal(code(answer), expected);
      assert.equal(answer.bodyBytesSent, 0, `${expected}: refused before the body`);
      assert.match(answer.headers, /connection: close/i);
    }
  });

  test('the same signed request sent twice: the second is refused as a replay', async () => {
    const headers = signed();
    const first = await rawRequest(receiver.url, headers, body);
    assert.equal(first.bodyBytesSent, body.length, 'the first one was let in');
    assert.notEqual(code(first), 'FERRY_ERR_REPLAY');
    const second = await rawRequest(receiver.url, headers, body);
    assert.equal(second.status, 401);
    assert.equal(code(second), 'FERRY_ERR_REPLAY');
    assert.equal(second.bodyBytesSent, 0);
  });

  test('GET /healthz needs no key and names the host', async () => {
    const answer = await fetch(`${receiver.url}/healthz`);
    assert.equal(answer.status, 200);
    assert.deepEqual(await answer.json(), { status: 'ok', host: 'auth-test', version: '0.1.0' });
  });
});
