/**
 * A release's budget arithmetic (services/sender/src/release/budget.ts): per host, what each
 * service asks replaces what that service commits now, the rest stays, and the sum is held to
 * the host's memory and CPU budgets; a service without limits counts as 0. A paused release going
 * on asks the hosts of its waves still to go again, and does not go on over a budget.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FerryError, type CapacityReport } from '@ferry/protocol';
import { parseDeploymentText, planRelease } from '@ferry/sender';
import { askOf, formatBytes, hostsOverBudget, overcommit, refuseToGoOnOverBudget, type HostBudget } from '../../services/sender/src/release/budget.ts';
import type { HostServices } from '../../services/sender/src/release/previous.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function host(budget: { memoryBytes: number; cpus: number }, running: Array<[string, number, number]>): HostBudget {
  const services = running.map(([service, memoryBytes, cpus]) => ({ service, memoryBytes, cpus }));
  return {
    budget,
    committed: { memoryBytes: services.reduce((n, s) => n + s.memoryBytes, 0), cpus: services.reduce((n, s) => n + s.cpus, 0), services },
  };
}

describe('release budgets', () => {
  it('reads a spec\'s limits, a missing one as 0', () => {
    assert.deepEqual(askOf('web', { memory: '2g', cpus: 1.5 }), { service: 'web', memoryBytes: 2 * GiB, cpus: 1.5 });
    assert.deepEqual(askOf('web', { memory: '512m' }), { service: 'web', memoryBytes: 512 * MiB, cpus: 0 });
    assert.deepEqual(askOf('web', {}), { service: 'web', memoryBytes: 0, cpus: 0 });
  });

  it('refuses what exceeds the budget with the host and the numbers', () => {
    const asked = [askOf('web', { memory: '2g' }), askOf('api', { memory: '1536m' })];
    assert.equal(
      overcommit('host-b', asked, host({ memoryBytes: 4 * GiB, cpus: 8 }, [['db', GiB, 0]])),
      'host-b: memory 3.5 GiB asked (web 2 GiB, api 1.5 GiB) + 1 GiB running > budget 4 GiB',
    );
  });

  it('counts a service the release deploys once: its new limits replace what it runs now', () => {
    const asked = [askOf('web', { memory: '3g' })];
    assert.equal(overcommit('h', asked, host({ memoryBytes: 4 * GiB, cpus: 2 }, [['web', 3 * GiB, 0], ['db', GiB, 0]])), undefined, 'exactly the budget fits');
    assert.match(overcommit('h', asked, host({ memoryBytes: 4 * GiB, cpus: 2 }, [['web', 0, 0], ['db', GiB + 1, 0]])) ?? '', /^h: memory 3 GiB asked \(web 3 GiB\) \+ 1 GiB running > budget 4 GiB$/);
  });

  it('holds CPUs to their budget too, exactly (0.1 + 0.2 is 0.3)', () => {
    const asked = [askOf('a', { cpus: 0.1 }), askOf('b', { cpus: 0.2 })];
    assert.equal(overcommit('h', asked, host({ memoryBytes: GiB, cpus: 1 }, [['c', 0, 0.7]])), undefined);
    assert.equal(
      overcommit('h', asked, host({ memoryBytes: GiB, cpus: 1 }, [['c', 0, 0.75]])),
      'h: cpus 0.3 asked (a 0.1, b 0.2) + 0.75 running > budget 1',
    );
  });

  it('names memory and CPUs both when both are over', () => {
    const message = overcommit('h', [askOf('web', { memory: '128m', cpus: 2 })], host({ memoryBytes: 64 * MiB, cpus: 1 }, []));
    assert.equal(message, 'h: memory 128 MiB asked (web 128 MiB) + 0 B running > budget 64 MiB; cpus 2 asked (web 2) + 0 running > budget 1');
  });

  it('asks nothing of services without limits, even on a host already over its budget', () => {
    assert.equal(overcommit('h', [askOf('web', {})], host({ memoryBytes: GiB, cpus: 1 }, [['db', 2 * GiB, 4]])), undefined);
  });

  it('writes bytes in binary units, one decimal at most', () => {
    assert.deepEqual([0, 1023, 1024, 1536 * MiB, 64 * MiB, 7498697932].map(formatBytes), ['0 B', '1023 B', '1 KiB', '1.5 GiB', '64 MiB', '7 GiB']);
  });
});

describe('the budget again when a paused release goes on', () => {
  const parsed = parseDeploymentText(`version: 1
name: shop
services:
  db: {image: db:1, targets: [http://a:7701, http://b:7701, http://c:7701], memory: 1g}
  web: {image: web:1, targets: [http://a:7701, http://b:7701, http://c:7701], memory: 512m, cpus: 1, depends_on: [db]}
`, { baseDir: '/srv/shop' });
  assert.ok(parsed.ok);
  const plan = planRelease(parsed.document, { id: 'rel-20261207T180000Z-0123abcd' });
  const hostsToGo: HostServices[] = ['host-b', 'host-c'].map((host) => ({ url: `http://${host.slice(-1)}:7701`, host, services: ['db', 'web'] }));
  /** Capacity reports as the receivers answer them now; a host missing here answers nothing (an older receiver). */
  const reader = (now: Record<string, HostBudget>, asked: string[] = []) => (h: HostServices): Promise<CapacityReport | undefined> => {
    asked.push(h.host);
    return Promise.resolve(now[h.host] as CapacityReport | undefined);
  };

  it('refuses with FERRY_ERR_OVER_BUDGET naming the host and the numbers, and what it deploys there', async () => {
    const asked: string[] = [];
    const now = {
      // Room for the release when it paused; another service now takes most of host-c.
      'host-b': host({ memoryBytes: 4 * GiB, cpus: 4 }, [['db', GiB, 0], ['web', 512 * MiB, 1]]),
      'host-c': host({ memoryBytes: 4 * GiB, cpus: 4 }, [['db', GiB, 0], ['cache', 3 * GiB, 0]]),
    };
    const err = await refuseToGoOnOverBudget(plan, hostsToGo, reader(now, asked), undefined, 2, 'rest').then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof FerryError);
    assert.equal(err.code, 'FERRY_ERR_OVER_BUDGET');
    assert.equal(err.message, `Release ${plan.id} does not go on with wave rest, nothing sent, it stays paused: host-c: memory 1.5 GiB asked (db 1 GiB, web 512 MiB) + 3 GiB running > budget 4 GiB`);
    assert.deepEqual(err.details, { releaseId: plan.id, hosts: ['host-c'], failed: ['db', 'web'] });
    assert.deepEqual(asked.sort(), ['host-b', 'host-c'], 'only the hosts of the waves still to go are asked');
  });

  it('goes on when every host of the waves to go still has room, and warns of one that cannot say', async () => {
    const warnings: string[] = [];
    const now = { 'host-b': host({ memoryBytes: 2 * GiB, cpus: 1 }, [['web', 2 * GiB, 1]]) };
    await refuseToGoOnOverBudget(plan, hostsToGo, reader(now), (w) => warnings.push(w), 2, 'rest');
    assert.deepEqual(warnings, ['host-c: the receiver does not report its capacity (an older version); its budget is not checked']);
  });

  it('names every host over, sorted, with a budget lowered below what runs', async () => {
    const now = {
      'host-c': host({ memoryBytes: GiB, cpus: 4 }, []),
      'host-b': host({ memoryBytes: 4 * GiB, cpus: 0.5 }, []),
    };
    const over = await hostsOverBudget(plan, hostsToGo, reader(now), undefined, 2);
    assert.deepEqual(over.map((o) => o.message), [
      'host-b: cpus 1 asked (web 1) + 0 running > budget 0.5',
      'host-c: memory 1.5 GiB asked (db 1 GiB, web 512 MiB) + 0 B running > budget 1 GiB',
    ]);
  });

  it('a reader that fails is a warning, not a refusal; anything but a FerryError is a bug and thrown', async () => {
    const warnings: string[] = [];
    const unreachable = (): Promise<CapacityReport | undefined> => Promise.reject(new FerryError('FERRY_ERR_RECEIVER_UNREACHABLE', { message: 'connect ECONNREFUSED' }));
    assert.deepEqual(await hostsOverBudget(plan, hostsToGo, unreachable, (w) => warnings.push(w), 2), []);
    assert.equal(warnings.length, 2);
    await assert.rejects(hostsOverBudget(plan, hostsToGo, () => Promise.reject(new TypeError('bug')), undefined, 2), TypeError);
  });
});
