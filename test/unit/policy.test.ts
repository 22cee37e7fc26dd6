import assert from 'node:assert/strict';
import { linkSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FerryError, parseManifest, type Manifest, type ManifestInput } from '@ferry/protocol';
import {
  DEFAULT_POLICY, containerSpecFor, evaluate, globMatch, loadPolicy, loadReceiverConfig, repositoryOf, within, type Policy,
} from '@ferry/receiver';
import { checkBindSources, resolveBindSource } from '../../services/receiver/src/policy/index.ts';

const DIGEST = `blake3:${'a'.repeat(64)}`;
const ID = `sha256:${'b'.repeat(64)}`;

function manifest(service: Partial<ManifestInput['service']> = {}, ref = 'myapp:1.2'): Manifest {
  const parsed = parseManifest({
    schema: 'ferry.manifest/v1', deploymentId: '43cf4db9-2895-401d-8da7-5b03df634482', createdAt: '2026-01-01T00:00:00.000Z',
    image: { ref, id: ID, diffIds: [ID] },
    package: { format: 'docker-archive', compression: 'zstd', size: 1, digest: DIGEST },
    service: { name: 'web', ...service },
  });
  assert.ok(parsed.ok, parsed.ok ? '' : parsed.problems.join('; '));
  return parsed.manifest;
}

function problems(service: Record<string, unknown>): string[] {
  const parsed = parseManifest({
    schema: 'ferry.manifest/v1', deploymentId: '43cf4db9-2895-401d-8da7-5b03df634482', createdAt: '2026-01-01T00:00:00.000Z',
    image: { ref: 'myapp:1', id: ID, diffIds: [ID] },
    package: { format: 'docker-archive', compression: 'zstd', size: 1, digest: DIGEST },
    service: { name: 'web', ...service },
  });
  assert.equal(parsed.ok, false, 'the manifest should be refused');
  return parsed.ok ? [] : parsed.problems;
}

const rules = (policy: Policy, m: Manifest): string[] => evaluate(policy, m).map((v) => v.rule);
const policy = (overrides: Partial<Policy> = {}): Policy => ({ ...DEFAULT_POLICY, ...overrides });

describe('service spec schema', () => {
  it('takes what a docker run user writes', () => {
    const m = manifest({
      network: 'bridge', ports: ['8080:80', '127.0.0.1:5353:53/udp'], volumes: ['data:/var/lib/app', '/srv/app/conf:/etc/app:ro'],
      restart: 'on-failure', labels: { team: 'edge', 'com.example.tier': 'web' }, memory: '512m', cpus: 1.5,
      command: ['serve', '--port', '80'], entrypoint: ['/bin/app'], user: '1000:1000', capAdd: ['net_bind_service'],
      health: { type: 'tcp', host: '127.0.0.1', port: 80 },
    });
    assert.equal(m.service.health?.type, 'tcp');
    assert.equal(m.service.health.intervalMs, 1000);
  });

  it('refuses malformed fields, each with its path', () => {
    assert.ok(problems({ ports: ['80'] }).some((p) => p.startsWith('service.ports.0:')));
    assert.ok(problems({ network: 'host', ports: ['8080:80'] }).some((p) => p.startsWith('service.ports: ports are published only with the bridge')));
    assert.ok(problems({ volumes: ['/srv/../etc:/x'] }).some((p) => p.startsWith('service.volumes.0:')));
    assert.ok(problems({ volumes: ['/srv/app/:/x'] }).some((p) => p.startsWith('service.volumes.0:')));
    assert.ok(problems({ volumes: ['data:/'] }).some((p) => p.startsWith('service.volumes.0:')));
    assert.ok(problems({ labels: { 'ferry.service': 'other' } }).some((p) => p.includes('reserved')));
    assert.ok(problems({ memory: '1k' }).some((p) => p.startsWith('service.memory:')));
    assert.ok(problems({ restart: 'sometimes' }).some((p) => p.startsWith('service.restart:')));
    assert.ok(problems({ securityOpt: ['seccomp=/etc/profile.json'] }).some((p) => p.startsWith('service.securityOpt.0:')));
    assert.ok(problems({ pid: 'container:db' }).some((p) => p.startsWith('service.pid:')));
    assert.ok(problems({ health: { type: 'tcp', host: '127.0.0.1' } }).some((p) => p.startsWith('service.health.port:')));
    assert.ok(problems({ health: { type: 'exec', cmd: 'true' } }).some((p) => p.startsWith('service.health')));
    assert.ok(problems({ hostConfig: { Privileged: true } }).some((p) => p.includes('hostConfig')), 'unknown fields are refused');
  });
});

describe('policy evaluation', () => {
  it('lets the default policy run any image on the host network with nothing extra', () => {
    assert.deepEqual(rules(DEFAULT_POLICY, manifest({ network: 'host', volumes: ['data:/data'], securityOpt: ['no-new-privileges'] }, 'registry.local:5000/team/web:9')), []);
  });

  it('names each rule the default policy refuses', () => {
    const m = manifest({
      privileged: true, pid: 'host', ipc: 'host', capAdd: ['SYS_ADMIN', 'cap_net_admin'], devices: ['/dev/sda'],
      securityOpt: ['seccomp=unconfined', 'apparmor=unconfined'], volumes: ['/:/host', '/var/run/docker.sock:/var/run/docker.sock', '/etc:/etc2'],
    });
    assert.deepEqual(rules(DEFAULT_POLICY, m), [
      'privileged', 'pid:host', 'ipc:host',
      'bind-source:/', 'docker-socket:/var/run/docker.sock', 'bind-source:/etc',
      'cap_add:SYS_ADMIN', 'cap_add:NET_ADMIN', 'devices:/dev/sda',
      'security_opt:seccomp=unconfined', 'security_opt:apparmor=unconfined',
    ]);
    const first = evaluate(DEFAULT_POLICY, m)[0];
    assert.deepEqual(first, { rule: 'privileged', field: 'service.privileged', value: 'true' });
  });

  it('refuses a directory that holds the engine socket, even when bind sources allow it', () => {
    const p = policy({ bindSources: ['/var', '/run'], protectedSockets: ['/var/run/docker.sock', '/run/docker.sock', '/tmp/x/target.sock'] });
    assert.deepEqual(rules(p, manifest({ volumes: ['/var/run:/r', '/run:/r2', '/var/lib/app:/app'] })), ['docker-socket:/var/run', 'docker-socket:/run']);
    assert.deepEqual(rules(p, manifest({ volumes: ['/tmp/x:/x'] })), ['docker-socket:/tmp/x'], 'one rule per mount: the socket one first');
    assert.deepEqual(rules(policy({ ...p, dockerSocket: true }), manifest({ volumes: ['/var/run:/r'] })), []);
  });

  it('compares bind sources by whole path segments', () => {
    const p = policy({ bindSources: ['/srv/data'] });
    assert.deepEqual(rules(p, manifest({ volumes: ['/srv/data:/d', '/srv/data/sub:/s:ro'] })), []);
    assert.deepEqual(rules(p, manifest({ volumes: ['/srv/database:/d'] })), ['bind-source:/srv/database']);
    assert.ok(within('/a/b', '/'));
    assert.equal(within('/srv/data2', '/srv/data'), false);
  });

  it('needs rootBind for "/" even when "/" is a bind source', () => {
    assert.deepEqual(rules(policy({ bindSources: ['/'] }), manifest({ volumes: ['/:/host'] })), ['bind-source:/']);
    assert.deepEqual(rules(policy({ bindSources: ['/'], rootBind: true, dockerSocket: true }), manifest({ volumes: ['/:/host'] })), []);
  });

  it('grants capabilities by name, any spelling, and ALL only when ALL is allowed', () => {
    const p = policy({ capabilities: ['NET_ADMIN'] });
    assert.deepEqual(rules(p, manifest({ capAdd: ['net_admin', 'CAP_NET_ADMIN'] })), []);
    assert.deepEqual(rules(p, manifest({ capAdd: ['ALL'] })), ['cap_add:ALL']);
    assert.deepEqual(rules(policy({ capabilities: ['ALL'] }), manifest({ capAdd: ['SYS_ADMIN'] })), []);
  });

  it('matches image repositories with globs, tag ignored', () => {
    const p = policy({ images: ['registry.local:5000/team/*', 'myapp'] });
    assert.deepEqual(rules(p, manifest({}, 'myapp:1.2')), []);
    assert.deepEqual(rules(p, manifest({}, 'registry.local:5000/team/web:3')), []);
    assert.deepEqual(rules(p, manifest({}, 'registry.local:5000/team/web/admin:3')), ['image-repository:registry.local:5000/team/web/admin']);
    assert.deepEqual(rules(p, manifest({}, 'evil/app:1')), ['image-repository:evil/app']);
    assert.equal(repositoryOf('localhost:5000/app'), 'localhost:5000/app');
    assert.equal(globMatch('**', 'a/b/c'), true);
    assert.equal(globMatch('a.b/*', 'aXb/c'), false, 'dots are literal');
  });

  it('refuses the host network only when the policy says so', () => {
    assert.deepEqual(rules(policy({ hostNetwork: false }), manifest({ network: 'host' })), ['network:host']);
    assert.deepEqual(rules(policy({ hostNetwork: false }), manifest({ network: 'bridge' })), []);
  });

  it('allows each dangerous field once its switch is on', () => {
    const p = policy({
      privileged: true, hostPid: true, hostIpc: true, devices: ['/dev/fuse'], seccompUnconfined: true, apparmorUnconfined: true,
    });
    const m = manifest({ privileged: true, pid: 'host', ipc: 'host', devices: ['/dev/fuse'], securityOpt: ['seccomp=unconfined', 'apparmor=unconfined'] });
    assert.deepEqual(rules(p, m), []);
  });
});

describe('container spec', () => {
  it('is built from the allowlisted fields, ferry labels winning', () => {
    const m = manifest({
      network: 'bridge', ports: ['8080:80'], volumes: ['data:/data', '/srv/a:/a:ro'], labels: { team: 'edge' }, memory: '64m', cpus: 0.5,
      command: ['x'], user: 'app', capAdd: ['cap_net_admin'], restart: 'always', health: { type: 'cmd', intervalMs: 200 },
    });
    const spec = containerSpecFor(m, { 'ferry.service': 'web' }, policy({ bindSources: ['/srv'], capabilities: ['NET_ADMIN'] }));
    assert.deepEqual(spec.labels, { team: 'edge', 'ferry.service': 'web' });
    assert.deepEqual(spec.ports, [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }]);
    assert.deepEqual(spec.mounts, [
      { type: 'volume', source: 'data', target: '/data', readOnly: false },
      { type: 'bind', source: '/srv/a', target: '/a', readOnly: true },
    ]);
    assert.equal(spec.memoryBytes, 64 * 1024 * 1024);
    assert.deepEqual(spec.capAdd, ['NET_ADMIN']);
    assert.deepEqual(spec.healthcheck, { intervalMs: 200, timeoutMs: 2000, retries: 30, startPeriodMs: 0 });
    assert.equal(spec.privileged, undefined);
  });

  it('refuses, as the gate does, what the policy refuses', () => {
    assert.throws(() => containerSpecFor(manifest({ privileged: true }), {}), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.code, 'FERRY_ERR_POLICY_DENIED');
      assert.equal(err.status, 403);
      assert.equal(err.details?.rule, 'privileged');
      assert.match(err.message, /privileged/);
      return true;
    });
  });
});

describe('bind sources on the host', () => {
  // realpath: the walk refuses a link anywhere, so the base must be the real directory.
  const base = realpathSync(mkdtempSync(join(tmpdir(), 'ferry-binds-')));
  const at = (path: string): string => join(base, path);
  const engineSocket = at('run/engine.sock');
  let server: Server;
  const p = (): Policy => policy({ bindSources: [base, at('alias')], protectedSockets: [at('alias-run/engine.sock')] });

  before(async () => {
    mkdirSync(at('data/sub'), { recursive: true });
    mkdirSync(at('run'));
    server = createServer();
    await new Promise<void>((resolve) => server.listen(engineSocket, resolve));
    symlinkSync('/', at('data/root'));
    symlinkSync(engineSocket, at('data/engine.sock'));
    symlinkSync(at('data'), at('nested'));
    symlinkSync(at('data'), at('alias'));
    // The engine's socket as the operator names it, through a link of the operator's own.
    symlinkSync(at('run'), at('alias-run'));
    linkSync(engineSocket, at('data/hard.sock'));
  });
  after(async () => {
    await new Promise((resolve) => server.close(resolve));
    rmSync(base, { recursive: true, force: true });
  });

  it('returns a plain allowed directory as the path to mount', async () => {
    assert.deepEqual(await resolveBindSource(p(), at('data/sub')), { ok: true, path: at('data/sub') });
    assert.deepEqual(await resolveBindSource(p(), at('data')), { ok: true, path: at('data') });
  });

  it('refuses a link to / under an allowed source', async () => {
    assert.deepEqual(await resolveBindSource(p(), at('data/root')), { ok: false, rule: `bind-source-symlink:${at('data/root')}` });
  });

  it('refuses a link to the engine socket', async () => {
    assert.deepEqual(await resolveBindSource(p(), at('data/engine.sock')), { ok: false, rule: `bind-source-symlink:${at('data/engine.sock')}` });
  });

  it('refuses a path whose parent is a link, even to an allowed directory', async () => {
    assert.deepEqual(await resolveBindSource(p(), at('nested/sub')), { ok: false, rule: `bind-source-symlink:${at('nested/sub')}` });
    assert.deepEqual(await resolveBindSource(p(), at('alias/sub')), { ok: false, rule: `bind-source-symlink:${at('alias/sub')}` }, 'an allowed prefix that is a link too');
  });

  it('refuses the engine socket under another name, and a directory holding its real location', async () => {
    assert.deepEqual(await resolveBindSource(p(), at('data/hard.sock')), { ok: false, rule: `docker-socket:${at('data/hard.sock')}` });
    assert.deepEqual(await resolveBindSource(p(), at('run')), { ok: false, rule: `docker-socket:${at('run')}` });
    assert.deepEqual(await resolveBindSource(p(), base), { ok: false, rule: `docker-socket:${base}` });
    assert.deepEqual(await resolveBindSource({ ...p(), dockerSocket: true }, at('run')), { ok: true, path: at('run') });
  });

  it('holds the path found to the bind rules: / and sources outside the prefixes', async () => {
    assert.deepEqual(await resolveBindSource(policy({ bindSources: ['/'] }), '/'), { ok: false, rule: 'bind-source:/' });
    assert.deepEqual(await resolveBindSource(p(), '/etc'), { ok: false, rule: 'bind-source:/etc' });
  });

  it('throws FERRY_ERR_CONTAINER_FAILED for a source that does not exist', async () => {
    await assert.rejects(resolveBindSource(p(), at('data/missing/x')), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.code, 'FERRY_ERR_CONTAINER_FAILED');
      assert.match(err.message, /does not exist on this host/);
      return true;
    });
  });

  it('checks every bind of a container spec, leaving named volumes alone', async () => {
    const spec = containerSpecFor(manifest({ volumes: ['data:/data', `${at('data/sub')}:/a:ro`, `${at('data/root')}:/host`] }), {}, p());
    const checked = await checkBindSources(spec, p());
    assert.deepEqual(checked.spec.mounts, [
      { type: 'volume', source: 'data', target: '/data', readOnly: false },
      { type: 'bind', source: at('data/sub'), target: '/a', readOnly: true },
    ]);
    assert.deepEqual(checked.violations, [{ rule: `bind-source-symlink:${at('data/root')}`, field: 'service.volumes', value: at('data/root') }]);
  });
});

describe('loadPolicy', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-policy-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, body: string): string => {
    const path = join(dir, name);
    writeFileSync(path, body);
    return path;
  };

  it('defaults to any image, host network, nothing else', () => {
    const p = loadPolicy({});
    assert.deepEqual({ ...p, protectedSockets: [] }, { ...DEFAULT_POLICY, protectedSockets: [] });
  });

  it('reads the file, lets the environment lists replace its values, and protects the DOCKER_HOST socket', () => {
    const p = loadPolicy({
      file: file('ok.json', JSON.stringify({ images: ['team/*'], bindSources: ['/srv'], capabilities: ['cap_net_admin'], privileged: true })),
      images: 'other/*, more/**', hostNetwork: 'false', dockerHost: 'unix:///tmp/fs/target.sock',
    });
    assert.deepEqual(p.images, ['other/*', 'more/**']);
    assert.deepEqual(p.bindSources, ['/srv']);
    assert.deepEqual(p.capabilities, ['NET_ADMIN']);
    assert.equal(p.privileged, true);
    assert.equal(p.hostNetwork, false);
    assert.ok(p.protectedSockets.includes('/tmp/fs/target.sock'));
    assert.ok(Object.isFrozen(p));
  });

  it('lists every problem at once', () => {
    const path = file('bad.json', JSON.stringify({ images: ['ok/*'], bindSources: ['relative', '/a/../b'], privilegd: true, hostNetwork: 'yes' }));
    assert.throws(() => loadPolicy({ file: path, capabilities: 'NET ADMIN', hostNetwork: 'maybe' }), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.code, 'FERRY_ERR_CONFIG');
      assert.match(err.message, /^Invalid receiver policy:/);
      for (const expected of ['bindSources.0', 'bindSources.1', 'privilegd', 'hostNetwork', 'FERRY_POLICY_CAPABILITIES: "NET ADMIN"', 'FERRY_POLICY_HOST_NETWORK']) {
        assert.ok(err.message.includes(expected), `${expected} in ${err.message}`);
      }
      return true;
    });
    assert.throws(() => loadPolicy({ file: join(dir, 'missing.json') }), /cannot read .*ENOENT/);
    assert.throws(() => loadPolicy({ file: file('notjson.json', '{') }), /is not JSON/);
  });

  it('is part of the receiver config', () => {
    const config = loadReceiverConfig({ FERRY_POLICY_CAPABILITIES: 'NET_ADMIN' });
    assert.deepEqual(config.policy.capabilities, ['NET_ADMIN']);
    assert.throws(() => loadReceiverConfig({ FERRY_POLICY_FILE: 'relative.json' }), /FERRY_POLICY_FILE: an absolute path/);
  });
});
