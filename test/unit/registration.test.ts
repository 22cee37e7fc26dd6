import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import type { ActualReport, HostRegistration, Registered } from '@ferry/auth';
import { createLogger } from '@ferry/log';
import { FerryError, LABELS } from '@ferry/protocol';
import { Registration, actualServices, advertisedUrl, settledServices } from '@ferry/receiver';

const SELF: HostRegistration = {
  id: 'web-1', url: 'http://10.0.0.5:7701', labels: { env: 'prod' }, capabilities: ['resumable'], version: '0.1.0',
  engine: { version: '27.0.0', storageDriver: 'overlay2', imageStore: 'legacy' },
};

async function until(probe: () => boolean): Promise<void> {
  while (!probe()) await sleep(10);
}

test('registration retries an unreachable registry, heartbeats, and registers again when forgotten', { timeout: 20_000 }, async () => {
  const calls: string[] = [];
  let registerFailures = 2;
  let forget = 1;
  const registry = {
    url: 'http://registry.test:7702',
    register: (host: HostRegistration): Promise<Registered> => {
      calls.push(`register ${host.id}`);
      if (registerFailures-- > 0) return Promise.reject(new FerryError('FERRY_ERR_REGISTRY_UNREACHABLE'));
      return Promise.resolve({ host: { ...host, status: 'online', registeredAt: '', lastSeenAt: '' }, heartbeatSeconds: 1, ttlSeconds: 3 });
    },
    heartbeat: (id: string, services?: ActualReport[]): Promise<void> => {
      calls.push(`heartbeat ${id} ${services?.length ?? 'none'}`);
      if (forget-- > 0) return Promise.reject(new FerryError('FERRY_ERR_HOST_UNKNOWN'));
      return Promise.resolve();
    },
    enroll: (): Promise<Registered> => Promise.reject(new Error('an enrolled host does not enroll')),
  };
  const registration = new Registration({
    registry, self: () => Promise.resolve(SELF), actual: () => Promise.resolve([{ service: 'web', state: 'running' }]),
    logger: createLogger({ level: 'silent' }), random: () => 0,
  });
  registration.start();
  try {
    await until(() => calls.filter((c) => c.startsWith('heartbeat')).length >= 2);
    assert.deepEqual(calls.slice(0, 6), [
      'register web-1', 'register web-1', 'register web-1', // two refusals, then in
      'heartbeat web-1 1', // forgotten: 404 FERRY_ERR_HOST_UNKNOWN
      'register web-1', 'heartbeat web-1 1',
    ]);
    assert.equal((await registration.check()).status, 'up');
  } finally {
    await registration.close();
  }
});

/** A registry that knows the host key once `enroll` took the token, and each token once. */
function enrollingRegistry(known = false): { calls: string[]; registry: ConstructorParameters<typeof Registration>[0]['registry'] } {
  const calls: string[] = [];
  const used = new Set<string>();
  const answer = (host: HostRegistration): Registered => ({ host: { ...host, hostKey: 'SHA256:k', status: 'online', registeredAt: '', lastSeenAt: '' }, heartbeatSeconds: 1, ttlSeconds: 3 });
  return {
    calls,
    registry: {
      url: 'http://registry.test:7702',
      register: (host) => {
        calls.push('register');
        return known ? Promise.resolve(answer(host)) : Promise.reject(new FerryError('FERRY_ERR_UNKNOWN_KEY'));
      },
      enroll: (token, host) => {
        calls.push(`enroll ${token}`);
        if (used.has(token)) return Promise.reject(new FerryError('FERRY_ERR_JOIN_TOKEN_INVALID'));
        used.add(token);
        known = true;
        return Promise.resolve(answer(host));
      },
      heartbeat: () => { calls.push('heartbeat'); return Promise.resolve(); },
    },
  };
}

test('a host the registry does not know enrolls once with its join token, then registers with its key alone', { timeout: 20_000 }, async () => {
  const { calls, registry } = enrollingRegistry();
  const registration = new Registration({
    registry, joinToken: 'token-0123456789abcdefghij', self: () => Promise.resolve(SELF), actual: () => Promise.resolve([]),
    logger: createLogger({ level: 'silent' }), random: () => 0,
  });
  registration.start();
  try {
    await until(() => calls.filter((c) => c === 'heartbeat').length >= 2);
    assert.deepEqual(calls.slice(0, 4), ['register', 'enroll token-0123456789abcdefghij', 'heartbeat', 'heartbeat']);
  } finally {
    await registration.close();
  }
});

test('an enrolled host restarted with its used token registers and never sends the token; without a token an unknown key says so', { timeout: 20_000 }, async () => {
  const enrolled = enrollingRegistry(true);
  const restarted = new Registration({
    registry: enrolled.registry, joinToken: 'used-token-0123456789abcdef', self: () => Promise.resolve(SELF), actual: () => Promise.resolve([]),
    logger: createLogger({ level: 'silent' }), random: () => 0,
  });
  restarted.start();
  try {
    await until(() => enrolled.calls.includes('heartbeat'));
    assert.deepEqual(enrolled.calls.slice(0, 2), ['register', 'heartbeat']);
  } finally {
    await restarted.close();
  }

  const stranger = enrollingRegistry();
  const untokened = new Registration({
    registry: stranger.registry, self: () => Promise.resolve(SELF), actual: () => Promise.resolve([]),
    logger: createLogger({ level: 'silent' }), random: () => 0,
  });
  untokened.start();
  try {
    await until(() => stranger.calls.length >= 1);
    await sleep(50);
    assert.ok(stranger.calls.every((c) => c === 'register'), 'nothing but registration attempts');
    const check = await untokened.check();
    assert.equal(check.status, 'down');
    assert.equal(check.reason, 'FERRY_ERR_UNKNOWN_KEY');
  } finally {
    await untokened.close();
  }
});

test('a heartbeat goes out without the list when the engine cannot be read', { timeout: 20_000 }, async () => {
  const beats: (ActualReport[] | undefined)[] = [];
  const registration = new Registration({
    registry: {
      url: 'http://registry.test:7702',
      register: (host) => Promise.resolve({ host: { ...host, status: 'online', registeredAt: '', lastSeenAt: '' }, heartbeatSeconds: 1, ttlSeconds: 3 }),
      heartbeat: (_id, services) => { beats.push(services); return Promise.resolve(); },
      enroll: () => Promise.reject(new Error('an enrolled host does not enroll')),
    },
    self: () => Promise.resolve(SELF), actual: () => Promise.reject(new FerryError('FERRY_ERR_DOCKER_UNAVAILABLE')),
    logger: createLogger({ level: 'silent' }),
  });
  registration.start();
  try {
    await until(() => beats.length >= 1);
    assert.deepEqual(beats[0], undefined);
  } finally {
    await registration.close();
  }
});

test('what runs is read from the container named after its service, its ferry labels and its restart count', async () => {
  const labels = (service: string): Record<string, string> => ({
    [LABELS.service]: service, [LABELS.configHash]: `sha256:${'c'.repeat(64)}`, [LABELS.deploymentId]: 'd-1', [LABELS.imageRef]: 'web:1',
  });
  const inspected: string[] = [];
  const reports = await actualServices({
    listContainers: () => Promise.resolve([
      { Id: 'c1', Names: ['/web'], Image: 'sha256:x', ImageID: `sha256:${'a'.repeat(64)}`, State: 'running', Labels: labels('web') },
      { Id: 'c0', Names: ['/web.ferry-previous'], ImageID: `sha256:${'b'.repeat(64)}`, State: 'exited', Labels: labels('web') },
      { Id: 'c2', Names: ['/db'], ImageID: `sha256:${'d'.repeat(64)}`, State: 'exited', Labels: { [LABELS.service]: 'db' } },
      { Id: 'c3', Names: ['/gone'], State: 'running', Labels: { [LABELS.service]: 'gone' } },
    ]),
    inspectContainer: (id: string) => {
      inspected.push(id);
      if (id === 'c3') return Promise.reject(Object.assign(new Error('No such container'), { statusCode: 404 }));
      return Promise.resolve({ RestartCount: id === 'c1' ? 4 : 0 });
    },
  });
  assert.deepEqual(reports, [
    { service: 'db', containerId: 'c2', state: 'exited', imageId: `sha256:${'d'.repeat(64)}`, restarts: 0 },
    { service: 'gone', containerId: 'c3', state: 'running' },
    { service: 'web', containerId: 'c1', state: 'running', image: 'web:1', imageId: `sha256:${'a'.repeat(64)}`, configHash: `sha256:${'c'.repeat(64)}`, deploymentId: 'd-1', restarts: 4 },
  ]);
  assert.deepEqual(inspected.sort(), ['c1', 'c2', 'c3'], 'one inspect per service container, none for the swap\'s');
});

test('the advertised URL replaces a wildcard listening address with the hostname', () => {
  assert.equal(advertisedUrl('http://127.0.0.1:7701'), 'http://127.0.0.1:7701');
  assert.doesNotMatch(advertisedUrl('http://0.0.0.0:7701'), /0\.0\.0\.0/);
  assert.doesNotMatch(advertisedUrl('https://[::]:7701'), /\[::\]/);
});

test('no list goes out while a deployment is under way, nor when one began during the read', async () => {
  const list: ActualReport[] = [{ service: 'web', state: 'running' }];
  let reads = 0;
  const read = (): Promise<ActualReport[]> => { reads += 1; return Promise.resolve(list); };
  assert.equal(await settledServices(read, () => true), undefined);
  assert.equal(reads, 0, 'the engine is not read mid-deployment');
  assert.deepEqual(await settledServices(read, () => false), list);
  let changing = false;
  const racing = (): Promise<ActualReport[]> => { changing = true; return Promise.resolve(list); };
  assert.equal(await settledServices(racing, () => changing), undefined);
});
