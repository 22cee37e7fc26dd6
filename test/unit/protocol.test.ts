import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import {
  ERRORS, EVENT_TYPES, FerryError, errorFromBody, eventSubject, isErrorCode, isFerryError, parseManifest, subjectToken,
  type ErrorCode,
} from '@ferry/protocol';

const DOC = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
const CODES = Object.keys(ERRORS) as ErrorCode[];

/** The example manifest of docs/protocol.md: its one line that starts like a manifest. */
function docManifest(): Record<string, unknown> {
  const line = DOC.split('\n').find((l) => l.startsWith('{"schema":"ferry.manifest/v1"'));
  assert.ok(line, 'docs/protocol.md has an example manifest');
  return JSON.parse(line) as Record<string, unknown>;
}

function mutated(change: (m: Record<string, Record<string, unknown>>) => void): unknown {
  const manifest = structuredClone(docManifest()) as Record<string, Record<string, unknown>>;
  change(manifest);
  return manifest;
}

function problemsOf(value: unknown): string[] {
  const result = parseManifest(value);
  assert.equal(result.ok, false, 'the manifest should be refused');
  return result.ok ? [] : result.problems;
}

describe('error registry', () => {
  it('has well-formed, unique codes', () => {
    assert.ok(CODES.length > 0);
    for (const code of CODES) assert.match(code, /^FERRY_ERR_[A-Z0-9]+(_[A-Z0-9]+)*$/);
    assert.equal(new Set(CODES.map((c) => c.toLowerCase())).size, CODES.length);
  });

  it('gives every code a 4xx or 5xx status and a message', () => {
    for (const code of CODES) {
      const { status, message } = ERRORS[code];
      assert.ok(Number.isInteger(status) && status >= 400 && status <= 599, `${code}: ${status}`);
      assert.ok(typeof message === 'string' && message.trim().length > 0, code);
    }
  });

  it('is documented in docs/protocol.md, code for code and status for status', () => {
    const rows = new Map<string, number>();
    for (const match of DOC.matchAll(/^\| `(FERRY_ERR_[A-Z0-9_]+)` \| (\d{3}) \|/gm)) {
      const [, code = '', status = ''] = match;
      assert.ok(!rows.has(code), `${code} has two rows in the error table`);
      rows.set(code, Number(status));
    }
    const missing = CODES.filter((code) => !rows.has(code));
    assert.deepEqual(missing, [], 'codes missing from the error table of docs/protocol.md');
    for (const code of CODES) assert.equal(rows.get(code), ERRORS[code].status, `status of ${code} in docs/protocol.md`);
  });

  it('has every code the document mentions', () => {
    const mentioned = new Set(DOC.match(/FERRY_ERR_[A-Z0-9_]*[A-Z0-9]/g) ?? []);
    const unknown = [...mentioned].filter((code) => !isErrorCode(code));
    assert.deepEqual(unknown, [], 'docs/protocol.md names codes the registry does not have');
  });

  it('recognises only its own codes', () => {
    assert.equal(isErrorCode('FERRY_ERR_REPLAY'), true);
    for (const value of ['FERRY_ERR_NOPE', 'ferry_err_replay', 'toString', 'hasOwnProperty', '', 42, null, undefined]) {
      assert.equal(isErrorCode(value), false, String(value));
    }
  });
});

describe('FerryError', () => {
  it('takes status and message from the registry', () => {
    const err = new FerryError('FERRY_ERR_REPLAY');
    assert.ok(err instanceof Error);
    assert.equal(err.name, 'FerryError');
    assert.equal(err.status, 401);
    assert.equal(err.message, ERRORS.FERRY_ERR_REPLAY.message);
    assert.deepEqual(err.toJSON(), { error: { code: 'FERRY_ERR_REPLAY', message: ERRORS.FERRY_ERR_REPLAY.message } });
    assert.ok(!('details' in err.toJSON().error));
  });

  it('round-trips through the error body', () => {
    for (const code of CODES) {
      const details = { deploymentId: '3f8e2c1a-7b4d-4e6f-9a2b-1c5d8e0f4a7b', expected: 1, received: [2, 3] };
      const sent = new FerryError(code, { message: `the ${code} case`, details, cause: new Error('not for the wire') });
      const body: unknown = JSON.parse(JSON.stringify(sent));
      assert.deepEqual(body, { error: { code, message: `the ${code} case`, details } });
      assert.ok(!JSON.stringify(body).includes('not for the wire'));
      const back = errorFromBody(sent.status, body);
      assert.equal(back.code, code);
      assert.equal(back.status, ERRORS[code].status);
      assert.equal(back.message, sent.message);
      assert.deepEqual(back.details, details);
      assert.deepEqual(back.toJSON(), sent.toJSON());
    }
  });

  it('keeps the status a peer answered with', () => {
    assert.equal(errorFromBody(503, new FerryError('FERRY_ERR_INTERNAL').toJSON()).status, 503);
  });

  it('turns anything else into FERRY_ERR_BAD_RESPONSE', () => {
    const bodies: unknown[] = [
      null, undefined, 'oops', { text: '<html>Bad Gateway</html>' }, { error: 'FERRY_ERR_REPLAY' },
      { error: { code: 'FERRY_ERR_NOPE', message: 'x' } }, { error: { code: 'FERRY_ERR_REPLAY' } }, { error: { code: 'FERRY_ERR_REPLAY', message: 7 } },
    ];
    for (const body of bodies) {
      const err = errorFromBody(502, body);
      assert.equal(err.code, 'FERRY_ERR_BAD_RESPONSE', JSON.stringify(body));
      assert.equal(err.status, 502);
      assert.match(err.message, /HTTP 502/);
    }
  });

  it('adds details without changing the error', () => {
    const original = new FerryError('FERRY_ERR_SIZE_MISMATCH', { details: { expected: 10 }, status: 499 });
    const more = original.withDetails({ deploymentId: 'd' });
    assert.deepEqual(original.details, { expected: 10 });
    assert.deepEqual(more.details, { expected: 10, deploymentId: 'd' });
    assert.equal(more.status, 499);
    assert.equal(more.message, original.message);
    assert.ok(isFerryError(more, 'FERRY_ERR_SIZE_MISMATCH'));
    assert.ok(!isFerryError(more, 'FERRY_ERR_REPLAY'));
    assert.ok(!isFerryError(new Error('x')));
  });
});

describe('parseManifest', () => {
  it('accepts the example of docs/protocol.md and fills in defaults', () => {
    const result = parseManifest(docManifest());
    assert.ok(result.ok, result.ok ? '' : result.problems.join('; '));
    const { manifest } = result;
    assert.equal(manifest.deploymentId, '3f8e2c1a-7b4d-4e6f-9a2b-1c5d8e0f4a7b');
    assert.equal(manifest.package.compression, 'zstd');
    assert.deepEqual(manifest.service.health, {
      type: 'http', url: 'http://127.0.0.1:8080/healthz', expectStatus: 200, intervalMs: 1000, timeoutMs: 2000, retries: 30, startPeriodMs: 0,
    });
  });

  it('defaults env to {} and network to bridge, and leaves health out', () => {
    const result = parseManifest(mutated((m) => { m.service = { name: 'web' }; }));
    assert.ok(result.ok);
    assert.deepEqual(result.manifest.service, { name: 'web', env: {}, network: 'bridge' });
  });

  const bad: [string, (m: Record<string, Record<string, unknown>>) => void, RegExp][] = [
    ['a bad package digest', (m) => { m.package.digest = 'blake3:XYZ'; }, /^package\.digest: /],
    ['a sha256 package digest', (m) => { m.package.digest = `sha256:${'0'.repeat(64)}`; }, /^package\.digest: /],
    ['an upper-case service name', (m) => { m.service.name = 'Web'; }, /^service\.name: /],
    ['a service name with a dot', (m) => { m.service.name = 'web.app'; }, /^service\.name: /],
    ['a service name of 64 characters', (m) => { m.service.name = 'w'.repeat(64); }, /^service\.name: /],
    ['an unknown top-level field', (m) => { m.extra = {}; }, /^\(root\): .*"extra"/],
    ['an unknown nested field', (m) => { m.image.platform = 'linux/amd64'; }, /^image: .*"platform"/],
    ['no package', (m) => { delete m.package; }, /^package: /],
    ['another schema version', (m) => { m.schema = 'ferry.manifest/v2' as never; }, /^schema: /],
    ['a deployment id that is not a UUID', (m) => { m.deploymentId = 'deploy-1' as never; }, /^deploymentId: /],
    ['a createdAt with an offset', (m) => { m.createdAt = '2026-01-01T01:00:00+01:00' as never; }, /^createdAt: /],
    ['an image id without algorithm', (m) => { m.image.id = '0'.repeat(64); }, /^image\.id: /],
    ['no layers', (m) => { m.image.diffIds = []; }, /^image\.diffIds: /],
    ['an image ref with a digest', (m) => { m.image.ref = `web@sha256:${'0'.repeat(64)}`; }, /^image\.ref: /],
    ['an unknown compression', (m) => { m.package.compression = 'xz'; }, /^package\.compression: /],
    ['a zero package size', (m) => { m.package.size = 0; }, /^package\.size: /],
    ['a fractional package size', (m) => { m.package.size = 1.5; }, /^package\.size: /],
    ['a bad env name', (m) => { m.service.env = { '1X': 'y' }; }, /^service\.env/],
    ['an unknown network', (m) => { m.service.network = 'overlay'; }, /^service\.network: /],
    ['a health URL that is not http(s)', (m) => { (m.service.health as Record<string, unknown>).url = 'ftp://127.0.0.1/'; }, /^service\.health\.url: /],
    ['a health interval under 50 ms', (m) => { (m.service.health as Record<string, unknown>).intervalMs = 10; }, /^service\.health\.intervalMs: /],
  ];
  for (const [name, change, problem] of bad) {
    it(`refuses ${name}, naming the field`, () => {
      const problems = problemsOf(mutated(change));
      assert.equal(problems.length, 1, problems.join('; '));
      assert.match(problems[0] ?? '', problem);
    });
  }

  it('reports every problem at once', () => {
    const problems = problemsOf(mutated((m) => {
      m.package.digest = 'nope';
      m.service.name = 'Bad Name';
      m.unexpected = {};
    }));
    assert.equal(problems.length, 3, problems.join('; '));
    assert.ok(problems.some((p) => p.startsWith('package.digest: ')));
    assert.ok(problems.some((p) => p.startsWith('service.name: ')));
    assert.ok(problems.some((p) => p.startsWith('(root): ') && p.includes('unexpected')));
  });

  it('refuses what is not an object', () => {
    for (const value of [null, 'manifest', [], 42]) assert.match(problemsOf(value)[0] ?? '', /^\(root\): /);
  });
});

describe('event subjects', () => {
  it('builds ferry.events.<host>.<service>.<type>', () => {
    assert.equal(eventSubject('edge-1', 'web', 'deployment.completed'), 'ferry.events.edge-1.web.deployment.completed');
    for (const type of EVENT_TYPES) assert.equal(eventSubject('h', 's', type), `ferry.events.h.s.${type}`);
  });

  it('turns dots, spaces, wildcards and other characters into "_"', () => {
    assert.equal(eventSubject('edge.example.com', 'my svc', 'image.loaded'), 'ferry.events.edge_example_com.my_svc.image.loaded');
    assert.equal(eventSubject('*', '>', 'host.lost'), 'ferry.events._._.host.lost');
    assert.equal(subjectToken('a/b\\c:d\té'), 'a_b_c_d__');
    assert.equal(subjectToken('Az09_-'), 'Az09_-');
  });

  it('never leaves a token empty', () => {
    assert.equal(subjectToken(''), '_');
    assert.equal(eventSubject('', '', 'drift.detected'), 'ferry.events._._.drift.detected');
  });
});
