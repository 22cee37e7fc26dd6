/**
 * The one label and selector grammar (docs/protocol.md §2.3): what it takes, what it refuses, and
 * that every place that reads a selector or a label list reads it through it.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { coversHost } from '@ferry/auth';
import {
  MAX_SELECTOR_LENGTH, checkSelectorInput, isFerryError, matchesSelector, parseHostLabels, parseSelector,
} from '@ferry/protocol';
import { formatProblem, parseDeploymentJson } from '@ferry/sender';
import { loadReceiverConfig } from '@ferry/receiver';

const bad = (code: string) => (err: unknown): boolean => isFerryError(err) && err.code === code;

describe('selector grammar', () => {
  test('key=value terms must all match, key!=value terms must all not', () => {
    const s = parseSelector('env=prod,role!=db');
    assert.deepEqual(s, { equal: [['env', 'prod']], notEqual: [['role', 'db']] });
    assert.ok(matchesSelector(s, { env: 'prod', role: 'web' }));
    assert.ok(matchesSelector(s, { env: 'prod' }), 'a missing label is not equal to anything');
    assert.ok(!matchesSelector(s, { env: 'prod', role: 'db' }));
    assert.ok(!matchesSelector(s, { env: 'staging' }));
    assert.ok(!matchesSelector(parseSelector('env!=prod'), { env: 'prod' }));
    assert.ok(matchesSelector(parseSelector('env!=prod'), {}));
  });

  test('spaces around terms and operators are layout; an empty value is a value', () => {
    assert.deepEqual(parseSelector(' env = prod , role != db '), { equal: [['env', 'prod']], notEqual: [['role', 'db']] });
    assert.deepEqual(parseSelector('tier='), { equal: [['tier', '']], notEqual: [] });
    assert.ok(matchesSelector(parseSelector('tier='), { tier: '' }));
    assert.ok(!matchesSelector(parseSelector('tier='), {}));
    assert.deepEqual(parseSelector('k8s.io/zone=eu-1_a'), { equal: [['k8s.io/zone', 'eu-1_a']], notEqual: [] });
  });

  test('refuses what is not KEY=VALUE or KEY!=VALUE, with FERRY_ERR_BAD_REQUEST naming the problem', () => {
    const cases: [string, RegExp][] = [
      ['', /empty/],
      ['   ', /empty/],
      ['env', /not KEY=VALUE or KEY!=VALUE/],
      ['=prod', /not a label key/],
      ['!=prod', /not a label key/],
      [' =prod', /not a label key/],
      ['env=prod,', /empty term/],
      [',env=prod', /empty term/],
      ['env=prod,,role=web', /empty term/],
      ['env==prod', /operator is = or !=/],
      ['env!==prod', /operator is = or !=/],
      ['-env=prod', /not a label key/],
      ['e v=prod', /not a label key/],
      ['env<prod', /not KEY=VALUE/],
      ['env=pr,od', /not KEY=VALUE/],
      [`${'k'.repeat(64)}=v`, /not a label key/],
      [`env=${'v'.repeat(257)}`, /at most 256/],
    ];
    for (const [text, message] of cases) {
      assert.throws(() => parseSelector(text), (err: unknown) => bad('FERRY_ERR_BAD_REQUEST')(err) && message.test((err as Error).message), JSON.stringify(text));
    }
  });

  test('hostile input: prototype names, control characters, huge and many-term selectors', () => {
    for (const key of ['__proto__', ' __proto__', '.constructor', '_x']) {
      assert.throws(() => parseSelector(`${key}=x`), bad('FERRY_ERR_BAD_REQUEST'), key);
      assert.throws(() => parseHostLabels(`${key}=x`), bad('FERRY_ERR_BAD_REQUEST'), key);
    }
    // Names of Object.prototype's members are plain keys: matched as own labels only.
    assert.ok(!matchesSelector(parseSelector('constructor=x'), {}));
    assert.ok(matchesSelector(parseSelector('toString!=x'), {}));
    assert.deepEqual(Object.keys(parseHostLabels('constructor=a,toString=b,hasOwnProperty=c')), ['constructor', 'toString', 'hasOwnProperty']);
    assert.equal(Object.getPrototypeOf(parseHostLabels('constructor=a')), Object.prototype);

    for (const c of ['\u0000', '\n', '\r', '\t', '\u001b', '\u007f', '\u0085']) {
      assert.throws(() => parseSelector(`env=pr${c}od`), bad('FERRY_ERR_BAD_REQUEST'), JSON.stringify(c));
      assert.throws(() => parseSelector(`en${c}v=prod`), bad('FERRY_ERR_BAD_REQUEST'), JSON.stringify(c));
      assert.throws(() => parseSelector(`env=prod${c}`), bad('FERRY_ERR_BAD_REQUEST'), `trailing ${JSON.stringify(c)}`);
      assert.throws(() => parseHostLabels(`env=pr${c}od`), bad('FERRY_ERR_BAD_REQUEST'), JSON.stringify(c));
    }
    // A refused term is shown escaped and cut short, never raw.
    assert.throws(() => parseSelector(`a\u001b[31m${'x'.repeat(500)}`), (err: unknown) => {
      const message = (err as Error).message;
      assert.ok(!message.includes('\u001b'), message);
      assert.ok(message.length < 200, message);
      return true;
    });

    const huge = `env=${'v'.repeat(MAX_SELECTOR_LENGTH)}`;
    assert.throws(() => parseSelector(huge), (err: unknown) => bad('FERRY_ERR_BAD_REQUEST')(err) && (err as Error).message.length < 200);
    assert.throws(() => parseSelector(','.repeat(1_000_000)), bad('FERRY_ERR_BAD_REQUEST'));
    assert.throws(() => parseSelector('='.repeat(1_000_000)), bad('FERRY_ERR_BAD_REQUEST'));
    const many = Array.from({ length: 65 }, (_, i) => `k${i}=v`).join(',');
    assert.throws(() => parseSelector(many), /more than 64 terms/);
    assert.equal(parseSelector(Array.from({ length: 64 }, (_, i) => `k${i}=v`).join(',')).equal.length, 64);
    // Unicode beyond the control characters is a value like any other.
    assert.ok(matchesSelector(parseSelector('region=zürich'), { region: 'zürich' }));
  });

  test('checkSelectorInput turns a problem into a usage error naming the input and the grammar', () => {
    assert.throws(() => checkSelectorInput('--selector', 'env'), (err: unknown) => {
      assert.ok(bad('FERRY_ERR_USAGE')(err));
      assert.match((err as Error).message, /^--selector: "env" is not KEY=VALUE or KEY!=VALUE; a selector is KEY=VALUE or KEY!=VALUE, joined by commas/);
      return true;
    });
    assert.deepEqual(checkSelectorInput('--selector', 'env!=prod'), { equal: [], notEqual: [['env', 'prod']] });
  });
});

describe('label assignments', () => {
  test('key=value pairs; != and a key named twice are refused', () => {
    assert.deepEqual(parseHostLabels('env=prod, role=web,empty='), { env: 'prod', role: 'web', empty: '' });
    assert.throws(() => parseHostLabels('env!=prod'), /selector term/);
    assert.throws(() => parseHostLabels('env=prod,env=dev'), /given twice/);
    assert.throws(() => parseHostLabels('env'), /not KEY=VALUE/);
    assert.throws(() => parseHostLabels(''), /empty/);
    assert.throws(() => parseHostLabels(Array.from({ length: 65 }, (_, i) => `k${i}=v`).join(',')), /more than 64/);
  });

  test('FERRY_LABELS is read by the same grammar', () => {
    const env = { FERRY_HOST_ID: 'h1', FERRY_DATA_DIR: '/tmp/ferry-selector-unit' };
    assert.deepEqual({ ...loadReceiverConfig({ ...env, FERRY_LABELS: 'env=prod,role=web' }).labels }, { env: 'prod', role: 'web' });
    for (const text of ['env!=prod', '__proto__=x', 'env=a,env=b', 'env=a\u001bb']) assert.throws(() => loadReceiverConfig({ ...env, FERRY_LABELS: text }), /FERRY_LABELS: KEY=VALUE/, text);
  });
});

describe('every reader of selectors takes the same grammar', () => {
  test('grants: a host selector with != covers the hosts it matches', () => {
    const scope = { hosts: ['env!=prod,role=web'] };
    assert.ok(coversHost(scope, { id: 'h1', labels: { env: 'staging', role: 'web' } }));
    assert.ok(!coversHost(scope, { id: 'h2', labels: { env: 'prod', role: 'web' } }));
    assert.ok(!coversHost(scope, { id: 'h3', labels: { env: 'staging', role: 'db' } }));
  });

  test('deployment files: selector targets with != are accepted, a malformed one names the grammar', () => {
    const parse = (target: string): ReturnType<typeof parseDeploymentJson> => parseDeploymentJson({ version: 1, services: { web: { image: 'a:1', targets: [target] } } });
    assert.equal(parse('selector:env!=prod,role=web').ok, true);
    const refused = parse('selector:env==prod');
    assert.equal(refused.ok, false);
    assert.match(refused.ok ? '' : refused.problems.map((p) => formatProblem(p)).join('\n'), /KEY!=VALUE/);
  });
});
