/**
 * Names that are also members of Object.prototype (`constructor`, `hasOwnProperty`, `toString`)
 * are ordinary names wherever a user's name becomes a key: registry projection and store, JSON
 * bodies, manifests, deployment files. `__proto__`, which no JavaScript object can hold as an
 * ordinary key, is refused with a clear error instead of being dropped in silence.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { RequestHandler } from 'express';
import { createEvent, NullSink, type FerryEvent } from '@ferry/events';
import { createBaseApp, finishApp, listen, readSignedJson } from '@ferry/http';
import { digestOf } from '@ferry/integrity';
import { createLogger } from '@ferry/log';
import { isFerryError, parseManifest, prototypeKeyPaths } from '@ferry/protocol';
import { applyEvent, emptyProjection, MemoryStore, Registry } from '@ferry/registry';
import { parseEnvPairs, parseLabels } from '../../apps/cli/src/args.ts';
import { parseDeploymentText } from '../../services/sender/src/deployfile/parse.ts';

const silent = createLogger({ level: 'silent' });
const MEMBERS = ['constructor', 'hasOwnProperty', 'toString', 'valueOf', '__defineGetter__', 'isPrototypeOf'];

function event(service: string, id?: string, type: 'image.loaded' | 'deployment.completed' = 'image.loaded'): FerryEvent {
  const base = { source: 'ferry://receiver/h1', host: 'h1', service, deploymentId: `dep-${service}` };
  const e: FerryEvent = type === 'deployment.completed'
    ? createEvent('deployment.completed', { ...base, data: { timings: {} } })
    : createEvent('image.loaded', { ...base, data: { image: 'web:1', imageId: `sha256:${'b'.repeat(64)}`, durationMs: 1 } });
  return id === undefined ? e : { ...e, id };
}

describe('registry projection and store: names of Object.prototype members', () => {
  test('events for services and with ids named like prototype members are applied once each', () => {
    const data = emptyProjection();
    for (const name of [...MEMBERS, '__proto__']) {
      assert.ok(applyEvent(data, event(name, name)), `event ${name} applied`);
      assert.equal(applyEvent(data, event(name, name)), undefined, `event ${name} applied once`);
      assert.equal(data.history[name]?.length, 1, `history of ${name}`);
      assert.ok(Object.hasOwn(data.seen, name));
    }
    assert.equal(Object.getPrototypeOf(data.history), null, 'no prototype to find members on');
  });

  test('a projection kept in a plain object (as a store gives it back) takes the same events', () => {
    const data = structuredClone(emptyProjection());
    assert.equal(Object.getPrototypeOf(data.history), Object.prototype);
    for (const name of [...MEMBERS, '__proto__']) {
      assert.ok(applyEvent(data, event(name, name, 'deployment.completed')), name);
      assert.ok(Object.hasOwn(data.history, name), `history of ${name} is its own entry`);
    }
    assert.equal(Object.getPrototypeOf(data.history), Object.prototype, 'a "__proto__" service did not replace the prototype');
  });

  test('the memory store keeps such keys as entries, across load and replace', async () => {
    const store = new MemoryStore();
    for (const name of [...MEMBERS, '__proto__']) store.set('p:history', name, [{ id: name }]);
    let data = await store.load();
    for (const name of [...MEMBERS, '__proto__']) assert.deepEqual(Object.hasOwn(data['p:history'], name) && data['p:history'][name], [{ id: name }], name);
    assert.equal(Object.getPrototypeOf(data['p:history']), null);
    await store.replace(['p:history'], { 'p:history': JSON.parse('{"__proto__":[{"id":"again"}]}') as Record<string, unknown> });
    data = await store.load();
    assert.deepEqual(Object.keys(data['p:history']), ['__proto__']);
  });

  test('the registry answers history, services and deployments for such names, before and after they exist', async () => {
    const store = new MemoryStore();
    const make = (): Registry => new Registry({
      store, events: new NullSink(), logger: silent, registryId: 'reg', ttlSeconds: 30, driftMode: 'warn', driftIgnore: [],
    });
    const registry = make();
    await registry.start();
    try {
      for (const name of [...MEMBERS, '__proto__']) {
        assert.deepEqual(registry.history(name), [], `history(${name}) of a service never seen`);
        assert.deepEqual(registry.services({ service: name }), []);
        assert.deepEqual(registry.services({ host: name }), []);
      }
      let seq = 0;
      for (const name of MEMBERS) registry.project(event(name, undefined, 'deployment.completed'), ++seq);
      for (const name of MEMBERS) assert.equal(registry.history(name).length, 1, name);
      assert.equal(registry.deployments().length, MEMBERS.length);
    } finally {
      registry.stop();
    }
    // What the store kept is read back into a fresh registry the same way.
    const again = make();
    await again.start();
    try {
      for (const name of MEMBERS) assert.equal(again.history(name).length, 1, `${name} after a restart`);
      assert.deepEqual(again.history('__proto__'), []);
    } finally {
      again.stop();
    }
  });
});

describe('JSON bodies (readSignedJson): "__proto__" is refused, other member names are kept', () => {
  test('a key "__proto__" anywhere → 400 FERRY_ERR_BAD_REQUEST; "constructor" and friends come through', async () => {
    const app = createBaseApp(silent);
    // Stands in for the signature check: the digest the body was signed with.
    app.use(((req, res, next) => {
      Object.assign(res.locals, { auth: { contentDigest: String(req.headers['x-test-digest']) } });
      next();
    }) satisfies RequestHandler);
    app.post('/echo', (async (req, res) => {
      const body = await readSignedJson(req, res, { maxBytes: 64 * 1024 }) as { labels: Record<string, string> };
      res.json({ keys: Object.keys(body.labels) });
    }) satisfies RequestHandler);
    const server = await listen(finishApp(app), '127.0.0.1', 0);
    const post = async (text: string): Promise<{ status: number; body: { keys?: string[]; error?: { code: string } } }> => {
      const response = await fetch(`${server.url}/echo`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-test-digest': digestOf(text) }, body: text });
      return { status: response.status, body: await response.json() as { keys?: string[]; error?: { code: string } } };
    };
    try {
      for (const text of ['{"labels":{"__proto__":"x"}}', '{"labels":{"a":"1"},"more":[{"__proto__":{"polluted":true}}]}', '{"__proto__":{"labels":{}}}']) {
        const answer = await post(text);
        assert.equal(answer.status, 400, text);
        assert.equal(answer.body.error?.code, 'FERRY_ERR_BAD_REQUEST');
      }
      const fine = await post(JSON.stringify({ labels: Object.fromEntries(MEMBERS.map((name) => [name, 'x'])) }));
      assert.equal(fine.status, 200);
      assert.deepEqual(fine.body.keys, MEMBERS);
      assert.equal(({} as Record<string, unknown>).polluted, undefined, 'nothing reached Object.prototype');
    } finally {
      await server.close(0);
    }
  });

  test('prototypeKeyPaths names each place, and takes deep nesting in its stride', () => {
    assert.deepEqual(prototypeKeyPaths(JSON.parse('{"a":{"b":[{"__proto__":1}]},"constructor":{}}')), [['a', 'b', '0', '__proto__']]);
    assert.deepEqual(prototypeKeyPaths({ constructor: 1, toString: 2 }), []);
    const deep = JSON.parse(`${'['.repeat(50_000)}{"__proto__":1}${']'.repeat(50_000)}`) as unknown;
    assert.equal(prototypeKeyPaths(deep)[0]?.length, 50_001);
  });
});

describe('manifests: env names and labels', () => {
  const manifest = (service: Record<string, unknown>): unknown => ({
    schema: 'ferry.manifest/v1', deploymentId: '3b241101-e2bb-4255-8caf-4136c566a962', createdAt: '2026-01-01T00:00:00Z',
    image: { ref: 'web:1', id: `sha256:${'a'.repeat(64)}`, diffIds: [`sha256:${'b'.repeat(64)}`] },
    package: { format: 'docker-archive', compression: 'none', size: 1, digest: `blake3:${'c'.repeat(64)}` },
    service: { name: 'web', ...service },
  });

  test('env and labels named like prototype members are kept', () => {
    const names = Object.fromEntries(MEMBERS.map((name) => [name, name.toUpperCase()]));
    // Label keys start with a letter or digit.
    const labels = Object.fromEntries(MEMBERS.filter((name) => !name.startsWith('_')).map((name) => [name, name]));
    const parsed = parseManifest(manifest({ env: names, labels }));
    assert.ok(parsed.ok, JSON.stringify(parsed));
    assert.deepEqual(parsed.manifest.service.env, names);
    assert.deepEqual(parsed.manifest.service.labels, labels);
  });

  test('"__proto__" as an env name or label key is a manifest problem, not a variable lost in silence', () => {
    for (const field of ['env', 'labels']) {
      const parsed = parseManifest(JSON.parse(JSON.stringify(manifest({})).replace('"name":"web"', `"name":"web","${field}":{"__proto__":"x","A":"1"}`)) as unknown);
      assert.equal(parsed.ok, false, field);
      assert.ok(!parsed.ok && parsed.problems.includes(`service.${field}.__proto__: "__proto__" is not allowed as a name`), JSON.stringify(parsed));
    }
  });
});

describe('the sender: deployment files and flags', () => {
  const file = (service: string): string => `version: 1\nservices:\n  web:\n    image: web:1\n    targets: [http://h:7701]\n${service}`;

  test('a field named like a prototype member is an unknown field, with no hint made of a function', () => {
    const result = parseDeploymentText(file('    constructor: 1\n    toString: 2\n'), { baseDir: '/tmp' });
    assert.equal(result.ok, false);
    for (const problem of result.ok ? [] : result.problems) assert.ok(!problem.message.includes('native code'), problem.message);
  });

  test('${constructor} and a bare "constructor" in an env list are variables that are not set, not Object', () => {
    for (const env of ['    env: [constructor]\n', '    env:\n      A: "${constructor}"\n']) {
      const result = parseDeploymentText(file(env), { baseDir: '/tmp', env: { HOME: '/root' } });
      assert.equal(result.ok, false, env);
      assert.match(result.ok ? '' : result.problems[0]?.message ?? '', /constructor.* is not set in the environment/);
    }
  });

  test('"__proto__" as a service, env or label name is a problem at its line', () => {
    const result = parseDeploymentText(`${file('    env:\n      __proto__: x\n')}  __proto__:\n    image: b:1\n`, { baseDir: '/tmp' });
    assert.equal(result.ok, false);
    const problems = result.ok ? [] : result.problems;
    assert.ok(problems.some((p) => p.path === 'services.web.env.__proto__' && p.line === 7), JSON.stringify(problems));
    assert.ok(problems.some((p) => p.path === 'services.__proto__'), JSON.stringify(problems));
  });

  test('--env and --label refuse "__proto__" and keep the other names', () => {
    assert.throws(() => parseEnvPairs(['__proto__=x']), (err: unknown) => isFerryError(err, 'FERRY_ERR_USAGE'));
    assert.throws(() => parseLabels(['__proto__=x']), (err: unknown) => isFerryError(err, 'FERRY_ERR_USAGE'));
    assert.deepEqual(Object.keys(parseEnvPairs(MEMBERS.map((name) => `${name}=1`))), MEMBERS);
    assert.deepEqual(Object.keys(parseLabels(MEMBERS)), MEMBERS);
  });
});
