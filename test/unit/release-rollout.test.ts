/**
 * `rollout:` in a deployment file (deployfile/rollout.ts) and the waves it makes of a release's
 * hosts (release/waves.ts): the forms a Kamal, Nomad or Ansible user writes, each problem at its
 * line, and which hosts each wave takes.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, test } from 'node:test';
import { parseDeploymentText, planWaves, type DeploymentDocument, type Problem, type Rollout } from '@ferry/sender';
import { allowedUnhealthy } from '../../services/sender/src/deployfile/index.ts';

const TARGETS = ['http://a:7701', 'http://b:7701', 'http://c:7701', 'http://d:7701'];

function parsed(rollout: string): { ok: true; document: DeploymentDocument } | { ok: false; problems: Problem[] } {
  return parseDeploymentText(`version: 1
services:
  web: {image: web:1, targets: [${TARGETS.join(', ')}]}
${rollout}`, { baseDir: '/srv' });
}

function rolloutOf(text: string): Rollout | undefined {
  const result = parsed(text);
  assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
  return result.document.rollout;
}

function problemsOf(text: string): Array<[string, number | undefined, string]> {
  const result = parsed(text);
  assert.ok(!result.ok, 'expected problems');
  return result.problems.map((p) => [p.path, p.line, p.message]);
}

describe('rollout: in a deployment file', () => {
  test('a list of waves: a count, a share, labels, names; pauses as durations or manual', () => {
    assert.deepEqual(rolloutOf(`rollout:
  - {name: canary, hosts: 1, pause: manual}
  - {hosts: 25%, pause: 30s}
  - {hosts: "role=edge,env!=dev", pause: 90}
  - hosts: [edge-4, http://d:7701]
`), {
      maxUnhealthy: { count: 0 },
      waves: [
        { name: 'canary', hosts: { count: 1 }, pause: 'manual' },
        { hosts: { percent: 25 }, pause: { ms: 30_000 } },
        { hosts: { selector: 'role=edge,env!=dev' }, pause: { ms: 90_000 } },
        { hosts: { names: ['edge-4', 'http://d:7701'] } },
      ],
    });
  });

  test('the map form takes max_unhealthy, a count or a share of each wave; selector: and a pause of 0 are accepted', () => {
    assert.deepEqual(rolloutOf(`rollout:
  max_unhealthy: "10%"
  waves:
    - {hosts: "selector:role=canary", pause: 0}
    - {hosts: "100%"}
`), { maxUnhealthy: { percent: 10 }, waves: [{ hosts: { selector: 'role=canary' } }, { hosts: { percent: 100 } }] });
    assert.deepEqual(rolloutOf('rollout: {max_unhealthy: 1, waves: [{hosts: 2}]}\n')?.maxUnhealthy, { count: 1 });
    assert.equal(rolloutOf(''), undefined);
  });

  test('every problem at its line, with what Ansible or Nomad call it', () => {
    assert.deepEqual(problemsOf(`rollout:
  serial: [1]
  max_unhealthy: lots
  waves:
    - {hosts: 0}
    - {hosts: 150%, pause: soon}
    - {hosts: canary}
    - {hosts: [http://z:7701], name: canary}
    - {name: canary, hosts: 1, wait: 5s}
`), [
      ['rollout.serial', 5, 'unknown field (did you mean waves?); known: waves, max_unhealthy'],
      ['rollout.max_unhealthy', 6, 'hosts of a wave that may fail before the release halts: a count (0, 1…) or a share of the wave ("10%")'],
      ['rollout.waves[0].hosts', 8, 'a number of hosts, 1 or more'],
      ['rollout.waves[1].hosts', 9, 'a share of the hosts from "1%" to "100%"'],
      ['rollout.waves[1].pause', 9, 'a duration up to 24h such as 30s, 5m or 1h (a plain number is seconds), or manual (until "ferry release continue")'],
      ['rollout.waves[2].hosts', 10, 'a number of hosts (1), a share ("25%"), labels the hosts have (role=canary: KEY=VALUE or KEY!=VALUE, joined by commas (e.g. env=prod,role!=db)) or a list of host ids and URLs'],
      ['rollout.waves[3].hosts[0]', 11, `a host id (as the host proves it, e.g. edge-1) or a receiver URL one of the services targets (no service targets http://z:7701; its targets are ${TARGETS.join(', ')})`],
      ['rollout.waves[4].wait', 12, 'unknown field (did you mean pause?); known: name, hosts, pause'],
    ]);
    assert.deepEqual(problemsOf('rollout: [{name: canary, hosts: 1}, {name: canary, hosts: 1}]\n'), [['rollout[1].name', 4, 'another wave is named "canary"']]);
    assert.deepEqual(problemsOf('rollout: {waves: []}\n'), [['rollout.waves', 4, 'at least one wave']]);
    assert.deepEqual(problemsOf('rollout: canary\n'), [['rollout', 4, 'a list of waves ({hosts, pause?, name?}), or {waves: [...], max_unhealthy}']]);
    assert.deepEqual(problemsOf('serial: 1\n'), [['serial', 4, 'unknown field (did you mean rollout?); known: version, id, name, phases, rollout, services']]);
  });

  test('max_unhealthy of a wave: a count as written, a share rounded down', () => {
    assert.equal(allowedUnhealthy({ count: 1 }, 10), 1);
    assert.equal(allowedUnhealthy({ percent: 10 }, 1), 0);
    assert.equal(allowedUnhealthy({ percent: 25 }, 10), 2);
  });
});

describe('waves of a release', () => {
  const hosts = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'].map((key) => ({ key, url: `http://${key}:7701` }));
  const credentials = { keyId: 'ops', privateKey: generateKeyPairSync('ed25519').privateKey };
  const waves = (rollout: Rollout | undefined): Promise<Array<[string, string[]]>> =>
    planWaves(rollout, hosts, { credentials }).then((list) => list.map((w) => [w.name, w.hosts]));

  test('without a rollout, one wave of every host', async () => {
    assert.deepEqual(await waves(undefined), [['wave-1', hosts.map((h) => h.key)]]);
  });

  test('a canary, then a quarter of all the hosts (rounded up), then named ones; the rest form a last wave', async () => {
    assert.deepEqual(await waves({
      maxUnhealthy: { count: 0 },
      waves: [{ name: 'canary', hosts: { count: 1 }, pause: 'manual' }, { hosts: { percent: 20 } }, { hosts: { names: ['h', 'http://g:7701', 'a'] } }],
    }), [['canary', ['a']], ['wave-2', ['b', 'c']], ['wave-3', ['g', 'h']], ['wave-4', ['d', 'e', 'f']]]);
  });

  test('a wave that finds no host left is left out; a count larger than what is left takes the rest', async () => {
    assert.deepEqual(await waves({ maxUnhealthy: { count: 0 }, waves: [{ hosts: { count: 100 } }, { hosts: { count: 1 } }] }), [['wave-1', hosts.map((h) => h.key)]]);
  });

  test('labels are the registry\'s: without one, a wave by label is a configuration error', async () => {
    await assert.rejects(waves({ maxUnhealthy: { count: 0 }, waves: [{ hosts: { selector: 'role=canary' } }] }), { code: 'FERRY_ERR_CONFIG' });
  });
});
