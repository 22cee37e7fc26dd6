/**
 * A release's budget arithmetic (services/sender/src/release/budget.ts): per host, what each
 * service asks replaces what that service commits now, the rest stays, and the sum is held to
 * the host's memory and CPU budgets; a service without limits counts as 0.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { askOf, formatBytes, overcommit, type HostBudget } from '../../services/sender/src/release/budget.ts';

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
