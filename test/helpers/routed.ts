import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { connect as connectUnix } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ImageStore } from '@ferry/docker';
import { FerryError, type DeploymentResult, type ManifestInput } from '@ferry/protocol';
import { buildPackage, inspectImage, uploadOneShot } from '@ferry/sender';
import { capture } from './ferry.ts';
import type { TestKey } from './keys.ts';

/**
 * What the tests of routed services share: a FROM-scratch busybox httpd whose answers name its
 * version, requests through the host's proxy by host name, HAProxy's own view of its servers, and
 * `hey` as the load.
 */

export interface RoutedVersionOptions {
  /** Without it, `/healthz` answers 404 and the check fails. Default true. */
  healthy?: boolean;
  /** Every n-th request of `/cgi-bin/app` answers 500 (a counter in the container's /tmp). */
  failEvery?: number;
}

/**
 * busybox httpd on 8080: `/` and `/cgi-bin/app` name the version, `/healthz` is ok, and
 * `/cgi-bin/slow` answers after 5 s. It stops at SIGTERM (a trap in its shell: httpd as PID 1 would
 * ignore it and every switch would wait out the engine's stop timeout). Answers the reference.
 */
export async function buildRoutedVersion(dockerHost: string, repo: string, variant: string, options: RoutedVersionOptions = {}): Promise<string> {
  const context = await mkdtemp(join(tmpdir(), 'ferry-routed-img-'));
  try {
    await copyFile(process.env.FERRY_BUSYBOX ?? '/bin/busybox', join(context, 'busybox'));
    await mkdir(join(context, 'www', 'cgi-bin'), { recursive: true });
    await mkdir(join(context, 'tmp'));
    await writeFile(join(context, 'www', 'index.html'), `${variant}\n`);
    if (options.healthy ?? true) await writeFile(join(context, 'www', 'healthz'), 'ok\n');
    const cgi = (name: string, body: string): Promise<void> => writeFile(join(context, 'www', 'cgi-bin', name), `#!/bin/busybox sh\n${body}`, { mode: 0o755 });
    await cgi('slow', `/bin/busybox sleep 5\necho "Content-Type: text/plain"\necho\necho "${variant} slow"\n`);
    const every = options.failEvery;
    await cgi('app', every === undefined
      ? `echo "Content-Type: text/plain"\necho\necho "${variant}"\n`
      : [
        'n=$(/bin/busybox cat /tmp/n 2>/dev/null || echo 0)', 'n=$((n + 1))', 'echo $n > /tmp/n',
        `if [ $((n % ${every})) -eq 0 ]; then echo "Status: 500 Internal Server Error"; fi`,
        'echo "Content-Type: text/plain"', 'echo', `echo "${variant}"`, '',
      ].join('\n'));
    await chmod(join(context, 'tmp'), 0o1777);
    await writeFile(join(context, 'Dockerfile'), [
      'FROM scratch', 'COPY busybox /bin/busybox', 'COPY www /www', 'COPY tmp /tmp',
      'ENTRYPOINT ["/bin/busybox", "sh", "-c", "trap \'exit 0\' TERM INT; /bin/busybox httpd -f -p 8080 -h /www & wait"]', '',
    ].join('\n'));
    const ref = `${repo}:${variant}`;
    const built = await capture('docker', ['build', '-q', '-t', ref, context], { ...process.env, DOCKER_HOST: dockerHost, DOCKER_BUILDKIT: '0' });
    if (built.code !== 0) throw new Error(`docker build failed: ${built.stderr}`);
    return ref;
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

/** One GET through the proxy on its own connection, with `host` as the Host header. */
export function getVia(port: number, host: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { host }, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: body.trim() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** One command on HAProxy's admin socket. */
export function haproxyCommand(socket: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const c = connectUnix(socket, () => c.end(`${command}\n`));
    c.setEncoding('utf8').on('data', (d: string) => { out += d; });
    c.on('end', () => resolve(out));
    c.on('error', reject);
  });
}

export interface ServerRow { total: number; current: number; status: string; weight: number; fivexx: number }

/**
 * HAProxy's upstream servers now (named by container id), from its `show stat` rows. Servers taken
 * out of their route wait in maintenance before they are deleted: they are left out.
 */
export async function haproxyServers(socket: string): Promise<Map<string, ServerRow>> {
  const text = await haproxyCommand(socket, 'show stat');
  const [header, ...rows] = text.split('\n');
  const cols = (header ?? '').replace(/^# /, '').split(',');
  const at = (name: string): number => cols.indexOf(name);
  const out = new Map<string, ServerRow>();
  for (const line of rows) {
    const f = line.split(',');
    const name = f[at('svname')] ?? '';
    if (!/^[0-9a-f]{12,64}$/.test(name) || f[at('status')] === 'MAINT') continue;
    out.set(name, { total: Number(f[at('stot')]), current: Number(f[at('scur')]), status: f[at('status')] ?? '', weight: Number(f[at('weight')]), fivexx: Number(f[at('hrsp_5xx')]) });
  }
  return out;
}

export interface Load { ok: number; other: Record<string, number>; errors: number; total: number; output: string }

/**
 * `hey` through the proxy at `rate` requests a second in all (10 workers, connections kept alive,
 * as clients keep them) until `stop()` (SIGINT: hey stops and prints its report); `-z` only bounds
 * a run left behind.
 */
export function heyLoad(port: number, host: string, options: { path?: string; rate?: number; maxSeconds?: number } = {}): { stop: () => Promise<Load>; running: () => boolean; kill: () => void } {
  const workers = 10;
  const perWorker = Math.max(1, Math.round((options.rate ?? 200) / workers));
  const child = spawn('hey', ['-z', `${options.maxSeconds ?? 300}s`, '-q', String(perWorker), '-c', String(workers), '-host', host, `http://127.0.0.1:${port}${options.path ?? '/'}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const done = new Promise<number | null>((resolve) => child.once('close', resolve));
  return {
    running: () => child.exitCode === null && child.signalCode === null,
    stop: async () => {
      child.kill('SIGINT');
      const code = await done;
      assert.equal(code, 0, stderr);
      return parseHey(stdout);
    },
    // A run that fails half-way leaves no hey behind.
    kill: () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); },
  };
}

/** hey's report: answers by status and the error distribution. */
export function parseHey(stdout: string): Load {
  const codes = [...stdout.matchAll(/\[(\d{3})\]\s+(\d+) responses/g)].map((m) => [m[1] ?? '', Number(m[2])] as const);
  const errorBlock = stdout.split('Error distribution:')[1] ?? '';
  const errors = [...errorBlock.matchAll(/\[(\d+)\]\s/g)].reduce((sum, m) => sum + Number(m[1]), 0);
  const ok = codes.filter(([c]) => c.startsWith('2')).reduce((sum, [, n]) => sum + n, 0);
  const other = Object.fromEntries(codes.filter(([c]) => !c.startsWith('2')));
  return { ok, other, errors, total: ok + Object.values(other).reduce((a, b) => a + b, 0) + errors, output: stdout };
}

/** The signal a child process died of, once it exited. */
export function exited(child: ChildProcess): Promise<NodeJS.Signals | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.signalCode);
  return new Promise((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
}

export interface RoutedDeploy {
  /** The build engine the image is read from. */
  images: ImageStore;
  url: string;
  key: TestKey;
  /** The receiver's host id. */
  audience: string;
  ref: string;
  /** The service spec: name and route at least; network bridge and an http check of /healthz through the route's port unless given. */
  service: Partial<ManifestInput['service']> & { name: string; route: ManifestInput['service']['route'] };
}

export interface RoutedOutcome {
  deploymentId: string;
  result?: DeploymentResult;
  /** The receiver's typed refusal (its deployment, when it had one, in `details.deployment`). */
  error?: FerryError;
  /** No answer: the receiver died under the request. */
  lost?: boolean;
}

/** The check every routed test service has: /healthz through its published port, quick to pass or fail. */
export const ROUTED_HEALTH = { type: 'http', url: 'http://localhost:8080/healthz', intervalMs: 200, timeoutMs: 1000, retries: 10, startPeriodMs: 0 } as const;

/** One deployment of a routed service, the package uncompressed and sent in one request. */
export async function deployRouted(input: RoutedDeploy): Promise<RoutedOutcome> {
  const facts = await inspectImage(input.images, input.ref);
  const pkg = await buildPackage(input.images, facts, 'none');
  const deploymentId = randomUUID();
  const manifest: ManifestInput = {
    schema: 'ferry.manifest/v1', deploymentId, createdAt: new Date().toISOString(),
    image: { ref: facts.ref, id: facts.id, diffIds: facts.diffIds },
    package: { format: 'docker-archive', compression: pkg.compression, size: pkg.size, digest: pkg.digest },
    service: { network: 'bridge', env: {}, health: ROUTED_HEALTH, ...input.service },
  };
  try {
    const outcome = await uploadOneShot({ url: input.url, credentials: input.key, audience: input.audience, manifestJson: JSON.stringify(manifest), packagePath: pkg.path, packageSize: pkg.size });
    return { result: outcome.result, deploymentId };
  } catch (err) {
    return err instanceof FerryError ? { error: err, deploymentId } : { lost: true, deploymentId };
  } finally {
    await pkg.remove();
  }
}
