/**
 * Deployment files (services/sender/src/deployfile): the canonical form, the friendly forms, and
 * that every problem names its line, column and field path.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ManifestSchema } from '@ferry/protocol';
import { formatProblem, parseDeploymentJson, parseDeploymentText, type DeploymentDocument, type Problem } from '@ferry/sender';
import { phasesOf, serviceSpecOf } from '../../services/sender/src/deployfile/index.ts';

const BASE = '/srv/app';

function ok(text: string, env?: Record<string, string | undefined>): DeploymentDocument {
  const result = parseDeploymentText(text, { baseDir: BASE, ...(env ? { env } : {}) });
  assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
  return result.document;
}

function problems(text: string, env?: Record<string, string | undefined>): Problem[] {
  const result = parseDeploymentText(text, { baseDir: BASE, ...(env ? { env } : {}) });
  assert.ok(!result.ok, 'expected problems');
  return result.problems;
}

function one(text: string, env?: Record<string, string | undefined>): Problem {
  const found = problems(text, env);
  assert.equal(found.length, 1, JSON.stringify(found));
  const [first] = found;
  assert.ok(first);
  return first;
}

const MINIMAL = `version: 1
services:
  web:
    image: myapp:1.2
    targets: [http://10.0.0.5:7701]
`;

describe('deployment file: valid documents', () => {
  test('the minimal document gets the manifest defaults', () => {
    const doc = ok(MINIMAL);
    assert.deepEqual(doc, { version: 1, services: { web: { image: 'myapp:1.2', targets: ['http://10.0.0.5:7701'], env: {}, network: 'bridge' } } });
  });

  test("a manifest's service object (minus name) plus image and targets is a valid entry, verbatim", () => {
    const service = {
      env: { A: '1' }, network: 'bridge', ports: ['127.0.0.1:8080:80/tcp'], volumes: ['data:/data:ro'], restart: 'unless-stopped',
      labels: { team: 'web' }, memory: '256m', cpus: 0.5, command: ['serve', '--port', '80'], entrypoint: ['/bin/app'], user: '1000:1000',
      capAdd: ['NET_ADMIN'], privileged: false, pid: 'private', ipc: 'private', devices: ['/dev/null'], securityOpt: ['no-new-privileges'],
      health: { type: 'http', url: 'http://127.0.0.1:8080/healthz', expectStatus: 200, intervalMs: 500, timeoutMs: 1000, retries: 5, startPeriodMs: 0 },
    };
    const manifest = ManifestSchema.parse({
      schema: 'ferry.manifest/v1', deploymentId: '5f0c7f53-6a4e-4c3a-9a53-3b0f7d6d2e11', createdAt: new Date().toISOString(),
      image: { ref: 'myapp:1', id: `sha256:${'a'.repeat(64)}`, diffIds: [`sha256:${'b'.repeat(64)}`] },
      package: { format: 'docker-archive', compression: 'zstd', size: 1, digest: `blake3:${'c'.repeat(64)}` },
      service: { name: 'web', ...service },
    });
    const { name: _name, ...entry } = manifest.service;
    const result = parseDeploymentJson({ version: 1, services: { web: { image: 'myapp:1', targets: ['http://h:7701'], ...entry } } });
    assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
    assert.deepEqual(result.document.services.web, { image: 'myapp:1', targets: ['http://h:7701'], ...entry });
  });

  test('friendly forms: env list, scalar env values, labels list, memory number, health shorthand and durations', () => {
    const doc = ok(`version: 1
services:
  web:
    image: myapp:1
    targets: http://h:7701
    network: host
    env:
      - MODE=prod
      - EMPTY=
    labels: [team=web, tier=front]
    memory: 268435456
    cpus: "1.5"
    health:
      http: http://127.0.0.1:8080/healthz
      interval: 2s
      timeout: 500ms
      startPeriod: 1m
  db:
    image: postgres:16
    targets: [http://h:7701]
    env: {PORT: 5432, DEBUG: true}
    network: host
    health: tcp://127.0.0.1:5432
  job:
    image: job:1
    targets: [http://h:7701]
    health: cmd
`);
    const web = doc.services.web;
    assert.deepEqual(web?.targets, ['http://h:7701']);
    assert.deepEqual(web?.env, { MODE: 'prod', EMPTY: '' });
    assert.deepEqual(web?.labels, { team: 'web', tier: 'front' });
    assert.equal(web?.memory, '268435456');
    assert.equal(web?.cpus, 1.5);
    assert.deepEqual(web?.health, { type: 'http', url: 'http://127.0.0.1:8080/healthz', intervalMs: 2000, timeoutMs: 500, startPeriodMs: 60_000, retries: 30 });
    assert.deepEqual(doc.services.db?.env, { PORT: '5432', DEBUG: 'true' });
    assert.deepEqual(doc.services.db?.health, { type: 'tcp', host: '127.0.0.1', port: 5432, intervalMs: 1000, timeoutMs: 2000, retries: 30, startPeriodMs: 0 });
    assert.equal(doc.services.job?.health?.type, 'cmd');
  });

  test('unquoted Compose-style values stay strings (YAML 1.2): restart: no, ports 8080:80', () => {
    const doc = ok(`${MINIMAL}    restart: no\n    ports: [8080:80]\n`);
    assert.equal(doc.services.web?.restart, 'no');
    assert.deepEqual(doc.services.web?.ports, ['8080:80']);
  });

  test('build: relative contexts resolve against the file directory; a build alone names the image after the service', () => {
    const doc = ok(`version: 1
services:
  api:
    build: ./api
    targets: [http://h:7701]
  web:
    image: web:2
    build: {context: /abs/web, dockerfile: Dockerfile.prod, args: [VERSION=2, "FLAG=on"]}
    targets: [http://h:7701]
`);
    assert.deepEqual(doc.services.api?.build, { context: '/srv/app/api' });
    assert.equal(doc.services.api?.image, 'api:latest');
    assert.deepEqual(doc.services.web?.build, { context: '/abs/web', dockerfile: 'Dockerfile.prod', args: { VERSION: '2', FLAG: 'on' } });
  });

  test('${VAR}, $VAR, ${VAR:-default}, $$ and bare list names are filled from the environment', () => {
    const doc = ok(`${MINIMAL}    env:\n      - TOKEN=\${TOKEN}\n      - URL=postgres://$HOST/db\n      - LEVEL=\${LEVEL:-info}\n      - PRICE=$$5\n      - PASSED\n`, { TOKEN: 't0k', HOST: 'db', PASSED: 'a$b' });
    assert.deepEqual(doc.services.web?.env, { TOKEN: 't0k', URL: 'postgres://db/db', LEVEL: 'info', PRICE: '$5', PASSED: 'a$b' });
  });

  test('selector targets and an id are accepted', () => {
    const doc = ok('version: 1\nid: release-42\nservices:\n  web:\n    image: a:1\n    targets: ["selector:env=prod,role=web", http://h:7701/ferry]\n');
    assert.equal(doc.id, 'release-42');
    assert.deepEqual(doc.services.web?.targets, ['selector:env=prod,role=web', 'http://h:7701/ferry']);
  });
});

describe('deployment file: every problem names line, column and path', () => {
  test('a bad port names its list item', () => {
    const p = one(`${MINIMAL}    ports:\n      - "80"\n`);
    assert.deepEqual(p, { path: 'services.web.ports[0]', message: '[hostIp:]hostPort:containerPort[/tcp|udp]', line: 7, column: 9 });
    assert.equal(formatProblem(p, 'ferry.yaml'), 'ferry.yaml:7:9 services.web.ports[0]: [hostIp:]hostPort:containerPort[/tcp|udp]');
  });

  test('an unknown key is an error at the key, with a did-you-mean', () => {
    const typo = one(`${MINIMAL}    imagee: x\n`);
    assert.equal(typo.path, 'services.web.imagee');
    assert.deepEqual([typo.line, typo.column], [6, 5]);
    assert.match(typo.message, /^unknown field \(did you mean image\?\)/);
    const compose = one(`${MINIMAL}    environment: {A: b}\n`);
    assert.match(compose.message, /did you mean env\?/);
    const top = one(`${MINIMAL}servics: {}\n`);
    assert.equal(top.path, 'servics');
    assert.match(top.message, /did you mean services\?/);
    const health = one(`${MINIMAL}    health: {http: "http://x/", intervall: 2s}\n`);
    assert.equal(health.path, 'services.web.health.intervall');
    assert.match(health.message, /did you mean interval\?/);
  });

  test('version, missing targets, no image nor build', () => {
    assert.deepEqual(one(MINIMAL.replace('version: 1', 'version: 2')), { path: 'version', message: 'the only version is 1', line: 1, column: 10 });
    const noTargets = one('version: 1\nservices:\n  web:\n    image: a:1\n');
    assert.equal(noTargets.path, 'services.web.targets');
    assert.equal(noTargets.line, 4, 'a missing field points at its object');
    const empty = one('version: 1\nservices:\n  web:\n    image: a:1\n    targets: []\n');
    assert.deepEqual([empty.path, empty.message, empty.line], ['services.web.targets', 'at least one target', 5]);
    const nothing = one('version: 1\nservices:\n  web:\n    targets: [http://h:1]\n');
    assert.equal(nothing.path, 'services.web');
    assert.match(nothing.message, /^give image .* or build /);
  });

  test('bad values: target, image reference, service name, env name, health type and duration', () => {
    assert.equal(one(MINIMAL.replace('http://10.0.0.5:7701', 'ftp://h')).path, 'services.web.targets[0]');
    assert.equal(one(MINIMAL.replace('http://10.0.0.5:7701', '"selector:"')).path, 'services.web.targets[0]');
    assert.equal(one(MINIMAL.replace('myapp:1.2', 'MyApp:1')).path, 'services.web.image');
    const name = one(MINIMAL.replace('  web:', '  Web:'));
    assert.deepEqual([name.path, name.line, name.column], ['services.Web', 3, 3]);
    const env = one(`${MINIMAL}    env: {"1BAD": x}\n`);
    assert.equal(env.path, 'services.web.env["1BAD"]');
    assert.equal(env.line, 6);
    assert.equal(one(`${MINIMAL}    health: {type: grpc}\n`).path, 'services.web.health.type');
    const duration = one(`${MINIMAL}    health: {http: "http://x/", interval: 2 s}\n`);
    assert.deepEqual([duration.path, duration.message], ['services.web.health.interval', 'a duration such as 500ms, 2s or 1m (a plain number is milliseconds)']);
    assert.match(one(`${MINIMAL}    health: {http: "http://x/", interval: 2s, intervalMs: 500}\n`).message, /not both/);
    const bridge = one(`${MINIMAL}    network: host\n    ports: ["80:80"]\n`);
    assert.deepEqual([bridge.path, bridge.line], ['services.web.ports', 7]);
  });

  test('an env list item that is not KEY=VALUE, and an unset ${VAR}', () => {
    const item = one(`${MINIMAL}    env: [GOOD=1, "=bad"]\n`);
    assert.deepEqual([item.path, item.line], ['services.web.env[1]', 6]);
    const unset = one(`${MINIMAL}    env: {TOKEN: "\${NOPE}"}\n`, {});
    assert.equal(unset.path, 'services.web.env.TOKEN');
    assert.match(unset.message, /^\$\{NOPE\} is not set in the environment/);
  });

  test('several problems are all reported, in file order', () => {
    const found = problems(`version: 1
services:
  web:
    image: a:1
    targets: [http://h:1]
    ports: ["x"]
    restart: sometimes
  api:
    image: b:1
    targets: [nope]
`);
    assert.deepEqual(found.map((p) => [p.line, p.path]), [[6, 'services.web.ports[0]'], [7, 'services.web.restart'], [10, 'services.api.targets[0]']]);
  });

  test('YAML syntax errors and duplicate keys have a line', () => {
    const dup = problems('version: 1\nservices:\n  web: {}\n  web: {}\n');
    assert.equal(dup[0]?.line, 4);
    assert.match(dup[0]?.message ?? '', /unique/);
    const broken = problems('version: 1\nservices: [\n');
    assert.ok((broken[0]?.line ?? 0) >= 2);
  });

  test('a JSON document has paths but no lines, and no relative build context', () => {
    const result = parseDeploymentJson({ version: 1, services: { web: { build: { context: 'rel' }, targets: ['http://h:1'] } } });
    assert.ok(!result.ok);
    assert.deepEqual(result.problems, [{ path: 'services.web.build.context', message: 'an absolute path on the sender (a relative one needs a file to be relative to)' }]);
    const notObject = parseDeploymentJson([1]);
    assert.ok(!notObject.ok);
    assert.equal(notObject.problems[0]?.path, '');
  });

  test('${VAR} is left as written when no environment is given (the sender service)', () => {
    const result = parseDeploymentJson({ version: 1, services: { web: { image: 'a:1', targets: ['http://h:1'], env: { A: '${FERRY_KEY}' } } } });
    assert.ok(result.ok);
    assert.equal(result.document.services.web?.env.A, '${FERRY_KEY}');
  });
});

describe('deployment file: the shipped example', () => {
  test('deploy/examples/ferry.yaml is valid', async () => {
    const { readFile } = await import('node:fs/promises');
    const text = await readFile(new URL('../../deploy/examples/ferry.yaml', import.meta.url), 'utf8');
    const doc = ok(text, { DATABASE_URL: 'postgres://db/shop' });
    assert.deepEqual(Object.keys(doc.services), ['cache', 'web']);
    assert.deepEqual(phasesOf(doc).map((p) => p.services), [['cache'], ['web']]);
    assert.equal(doc.services.web?.build?.context, '/srv/app/web');
    assert.equal(doc.services.web?.env.DATABASE_URL, 'postgres://db/shop');
  });

  test('deploy/examples/three-tier/ferry.yaml is valid: db, then api, then web', async () => {
    const { readFile } = await import('node:fs/promises');
    const text = await readFile(new URL('../../deploy/examples/three-tier/ferry.yaml', import.meta.url), 'utf8');
    const doc = ok(text, {});
    assert.equal(doc.name, 'three-tier');
    assert.deepEqual(phasesOf(doc).map((p) => p.services), [['db'], ['api'], ['web']]);
    assert.deepEqual(doc.services.api?.env, { VERSION: '1', API_BROKEN: '' });
    assert.deepEqual(doc.services.web?.build, { context: '/srv/app', dockerfile: 'web/Dockerfile' });
  });
});

describe('deployment file: a bad service name', () => {
  test('is reported beside the other problems', () => {
    const found = problems('version: 1\nservices:\n  Web:\n    image: a:1\n    targets: [nope]\n');
    assert.deepEqual(found.map((p) => [p.path, p.line]), [['services.Web', 3], ['services.Web.targets[0]', 5]]);
  });
});

describe('deployment file: depends_on, phases and name', () => {
  const THREE = `version: 1
name: shop
services:
  web:
    image: web:1
    targets: [http://h:7701]
    depends_on: [api]
  api:
    image: api:1
    targets: [http://h:7701]
    depends_on:
      db: {condition: service_started}
      cache:
  db:
    image: db:1
    targets: [http://h:7701]
  cache:
    image: cache:1
    targets: [http://h:7701]
`;

  test('the list form waits for healthy, the map form takes Compose conditions; phases are the topological levels in file order', () => {
    const doc = ok(THREE);
    assert.equal(doc.name, 'shop');
    assert.equal(doc.phases, undefined, 'no phases were written');
    assert.deepEqual(doc.services.web?.depends_on, { api: { condition: 'healthy' } });
    assert.deepEqual(doc.services.api?.depends_on, { db: { condition: 'started' }, cache: { condition: 'healthy' } });
    assert.deepEqual(phasesOf(doc), [
      { name: 'phase-1', services: ['db', 'cache'] },
      { name: 'phase-2', services: ['api'] },
      { name: 'phase-3', services: ['web'] },
    ]);
    assert.deepEqual(phasesOf(doc, ['web', 'db']), [{ name: 'phase-1', services: ['db'] }, { name: 'phase-3', services: ['web'] }]);
    assert.deepEqual(phasesOf(ok(MINIMAL)), [{ name: 'phase-1', services: ['web'] }], 'no depends_on: one phase');
  });

  test('depends_on never reaches the manifest', () => {
    const doc = ok(THREE);
    const entry = doc.services.api;
    assert.ok(entry);
    assert.equal('depends_on' in serviceSpecOf('api', entry), false);
  });

  test('an unknown name is an error at the dependency itself, with a did-you-mean', () => {
    const listed = one(THREE.replace('depends_on: [api]', 'depends_on: [apu]'));
    assert.deepEqual(listed, { path: 'services.web.depends_on[0]', message: 'no service "apu" in this file (did you mean api?)', line: 7, column: 18 });
    const mapped = one(THREE.replace('      cache:\n', '      cahce:\n'));
    assert.deepEqual([mapped.path, mapped.line, mapped.column], ['services.api.depends_on.cahce', 13, 7]);
  });

  test('a cycle is one error, at its first edge, naming the whole cycle', () => {
    const found = one(THREE.replace('    targets: [http://h:7701]\n  cache:', '    targets: [http://h:7701]\n    depends_on: [web]\n  cache:'));
    assert.equal(found.message, 'depends_on forms a cycle: web → api → db → web');
    assert.deepEqual([found.path, found.line], ['services.web.depends_on[0]', 7]);
    assert.equal(formatProblem(found, 'ferry.yaml'), 'ferry.yaml:7:18 services.web.depends_on[0]: depends_on forms a cycle: web → api → db → web');
    const self = one(`${MINIMAL}    depends_on: [web]\n`);
    assert.deepEqual([self.message, self.line], ['depends_on forms a cycle: web → web', 6]);
  });

  test('conditions other than started and healthy are refused', () => {
    const job = one(THREE.replace('condition: service_started', 'condition: service_completed_successfully'));
    assert.equal(job.path, 'services.api.depends_on.db.condition');
    assert.match(job.message, /^started or healthy \(/);
    const extra = one(THREE.replace('{condition: service_started}', '{condition: started, restart: true}'));
    assert.equal(extra.path, 'services.api.depends_on.db.restart');
    assert.match(extra.message, /^unknown field; known: condition/);
    const camel = one(`${MINIMAL}    dependsOn: [web]\n`);
    assert.match(camel.message, /did you mean depends_on\?/);
  });

  test('explicit phases are kept as written, named; depends_on must agree with them', () => {
    const named = `${THREE}phases:
  - {name: data, services: [db, cache]}
  - {name: business, services: [api]}
  - {name: interfaces, services: [web]}
`;
    const doc = ok(named);
    assert.deepEqual(phasesOf(doc).map((p) => p.name), ['data', 'business', 'interfaces']);
    const together = one(named.replace('  - {name: business, services: [api]}\n  - {name: interfaces, services: [web]}', '  - {name: business, services: [api, web]}'));
    assert.equal(together.path, 'services.web.depends_on[0]');
    assert.match(together.message, /^depends on api, which phases put in the same phase/);
    const later = one(named.replace('[db, cache]', '[cache]').replace('services: [web]', 'services: [web, db]'));
    assert.equal(later.path, 'services.api.depends_on.db');
    assert.match(later.message, /a later phase, "interfaces"/);
  });

  test('explicit phases: every service once, only services of the file, distinct names', () => {
    const found = problems(`${THREE}phases:
  - {name: data, services: [db, cach]}
  - {name: data, services: [api, db]}
  - {name: interfaces, services: [web]}
`);
    assert.deepEqual(found.map((p) => [p.path, p.line]), [
      ['services.cache', 17],
      ['phases[0].services[1]', 21],
      ['phases[1].name', 22],
      ['phases[1].services[1]', 22],
    ]);
    assert.match(found[0]?.message ?? '', /^in no phase/);
    assert.match(found[1]?.message ?? '', /did you mean cache\?/);
    assert.match(found[3]?.message ?? '', /already in phase "data"/);
  });

  test('name is a Compose project name', () => {
    assert.equal(one(MINIMAL.replace('version: 1', 'version: 1\nname: My Shop')).path, 'name');
  });

  test('a JSON document orders the same way, with paths', () => {
    const result = parseDeploymentJson({ version: 1, services: { a: { image: 'a:1', targets: ['http://h:1'], depends_on: ['b'] }, b: { image: 'b:1', targets: ['http://h:1'], depends_on: { a: null } } } });
    assert.ok(!result.ok);
    assert.deepEqual(result.problems, [{ path: 'services.a.depends_on[0]', message: 'depends_on forms a cycle: a → b → a' }]);
  });
});
