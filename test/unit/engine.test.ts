import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { EngineError, createDockerClient, encodeQuery, isUnreachable, namePath, statusOf, toFerryError } from '@ferry/docker';
import { isFerryError } from '@ferry/protocol';

describe('engine client: query encoding', () => {
  it('writes nothing for an empty query or one whose values are all absent', () => {
    assert.equal(encodeQuery({}), '');
    assert.equal(encodeQuery({ a: undefined, b: null }), '');
  });

  it('writes booleans as true/false and numbers as digits', () => {
    assert.equal(encodeQuery({ all: true, force: false, t: 10 }), '?all=true&force=false&t=10');
  });

  it('writes objects (filters, buildargs) as one JSON string, escaped', () => {
    const query = encodeQuery({ filters: { label: ['ferry.service'], dangling: ['true'] } });
    assert.equal(new URLSearchParams(query).get('filters'), '{"label":["ferry.service"],"dangling":["true"]}');
    const args = new URLSearchParams(encodeQuery({ buildargs: { A: 'x y&z', B: '=' } }));
    assert.deepEqual(JSON.parse(args.get('buildargs') ?? ''), { A: 'x y&z', B: '=' });
  });

  it('writes arrays as repeated keys and escapes reserved characters in strings', () => {
    assert.equal(encodeQuery({ key: ['a', 'b'] }), '?key=a&key=b');
    const params = new URLSearchParams(encodeQuery({ repo: 'registry:5000/team/app', tag: 'v1&x=2' }));
    assert.equal(params.get('repo'), 'registry:5000/team/app');
    assert.equal(params.get('tag'), 'v1&x=2');
  });
});

describe('engine client: names in paths', () => {
  it('keeps the slashes, colons and @ of a reference', () => {
    assert.equal(namePath('registry:5000/team/app:v1'), 'registry:5000/team/app:v1');
    assert.equal(namePath('app@sha256:ab'), 'app@sha256:ab');
  });

  it('escapes what would end the path early', () => {
    assert.equal(namePath('a?b#c d'), 'a%3Fb%23c%20d');
  });
});

describe('engine client: errors', () => {
  it('an answer error carries statusCode, the parsed body and the engine words', () => {
    const err = new EngineError(404, { message: 'No such image: nope:1 ' }, 'GET', '/images/nope:1/json');
    assert.equal(err.statusCode, 404);
    assert.deepEqual(err.json, { message: 'No such image: nope:1 ' });
    assert.match(err.message, /HTTP code 404.*No such image: nope:1/);
    assert.equal(statusOf(err), 404);
    const ferry = toFerryError(err, 'FERRY_ERR_DOCKER', 'inspect image nope:1');
    assert.ok(isFerryError(ferry, 'FERRY_ERR_DOCKER'));
    assert.equal(ferry.message, 'Could not inspect image nope:1: No such image: nope:1');
    assert.deepEqual(ferry.details, { dockerStatus: 404 });
  });

  it('a text body is kept as text', () => {
    const err = new EngineError(502, 'Bad Gateway\n', 'GET', '/info');
    assert.equal(toFerryError(err, 'FERRY_ERR_DOCKER', 'read the engine info').message, 'Could not read the engine info: Bad Gateway');
  });

  it('a socket error keeps its code and maps to FERRY_ERR_DOCKER_UNAVAILABLE', () => {
    for (const code of ['ENOENT', 'ECONNREFUSED']) {
      const err = Object.assign(new Error(`connect ${code}`), { code });
      assert.equal(isUnreachable(err), true);
      assert.ok(isFerryError(toFerryError(err, 'FERRY_ERR_DOCKER', 'list images'), 'FERRY_ERR_DOCKER_UNAVAILABLE'));
    }
  });
});

describe('createDockerClient', () => {
  let saved: string | undefined;
  beforeEach(() => { saved = process.env.DOCKER_HOST; });
  afterEach(() => {
    if (saved === undefined) delete process.env.DOCKER_HOST;
    else process.env.DOCKER_HOST = saved;
  });

  it('says when it talks over a unix socket', () => {
    assert.equal(createDockerClient('unix:///tmp/x/d.sock').socketPath, '/tmp/x/d.sock');
    assert.equal(createDockerClient('tcp://127.0.0.1:2375').socketPath, undefined);
    assert.equal(createDockerClient('tcp://[::1]').socketPath, undefined);
  });

  it('without an address, takes DOCKER_HOST, else the usual socket', () => {
    process.env.DOCKER_HOST = 'unix:///tmp/elsewhere.sock';
    assert.equal(createDockerClient().socketPath, '/tmp/elsewhere.sock');
    delete process.env.DOCKER_HOST;
    assert.equal(createDockerClient().socketPath, '/var/run/docker.sock');
    process.env.DOCKER_HOST = 'ssh://user@host';
    assert.throws(() => createDockerClient(), (err) => isFerryError(err, 'FERRY_ERR_CONFIG'));
  });

  it('refuses addresses it does not understand with FERRY_ERR_CONFIG', () => {
    for (const host of ['ssh://user@host', 'unix://relative.sock', '/var/run/docker.sock', 'tcp://']) {
      assert.throws(() => createDockerClient(host), (err) => isFerryError(err, 'FERRY_ERR_CONFIG'), host);
    }
  });
});
