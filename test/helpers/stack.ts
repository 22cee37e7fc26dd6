import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Dockerode from 'dockerode';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { natsConnectTarget } from '@ferry/events';
import { connect, type ConnectionOptions, type NatsConnection } from 'nats';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * Where the local stack (deploy/local-stack.sh) put the real parts the integration and e2e tests
 * talk to. test/run.sh starts the stack and exports these; a test run by hand reads stack.env.
 */
export interface Stack {
  buildDockerHost: string;
  targetDockerHost: string;
  /** As NATS's publisher user: what receivers, senders and `ferry push` are given. */
  natsUrl: string;
  /** As NATS's reader user: reads the stream and subscribes to events, publishes nothing. */
  natsReaderUrl: string;
  /** As NATS's registry user: a publisher that also keeps a durable consumer. */
  natsRegistryUrl: string;
  /** As NATS's admin user: everything, for tests that reach behind Ferry's back. */
  natsAdminUrl: string;
  redisUrl: string;
}

export function stack(): Stack {
  let fromFile: Record<string, string> | undefined;
  const pick = (name: string): string => {
    const value = process.env[name] ?? (fromFile ??= readStackEnv())[name];
    if (!value) throw new Error(`${name} is not set: start the stack with "bash deploy/local-stack.sh up" or run "npm test"`);
    return value;
  };
  return {
    buildDockerHost: pick('FERRY_BUILD_DOCKER_HOST'),
    targetDockerHost: pick('FERRY_TARGET_DOCKER_HOST'),
    natsUrl: pick('FERRY_NATS_URL'),
    natsReaderUrl: pick('FERRY_NATS_READER_URL'),
    natsRegistryUrl: pick('FERRY_NATS_REGISTRY_URL'),
    natsAdminUrl: pick('FERRY_NATS_ADMIN_URL'),
    redisUrl: pick('FERRY_REDIS_URL'),
  };
}

/**
 * A nats.js connection to `url` with the credentials its userinfo carries (nats.js reads none from
 * a URL); works as well for the private, unauthenticated servers of helpers/servers.ts.
 */
export function natsConnect(url: string, options: Partial<ConnectionOptions> = {}): Promise<NatsConnection> {
  return connect({ ...natsConnectTarget(url), ...options });
}

/**
 * The stack's two engines: dockerode clients for looking at them independently of Ferry's own
 * client, and Ferry's image stores over that client.
 */
export function engines(s: Stack = stack()): { build: Dockerode; target: Dockerode; buildImages: ImageStore; targetImages: ImageStore } {
  return {
    build: dockerodeFor(s.buildDockerHost),
    target: dockerodeFor(s.targetDockerHost),
    buildImages: new ImageStore(createDockerClient(s.buildDockerHost)),
    targetImages: new ImageStore(createDockerClient(s.targetDockerHost)),
  };
}

/**
 * A dockerode client for a `unix:///path` or `tcp://host[:port]` engine address: tests check what
 * Ferry did through a client that is not Ferry's.
 */
export function dockerodeFor(dockerHost: string): Dockerode {
  if (dockerHost.startsWith('unix://')) return new Dockerode({ socketPath: dockerHost.slice('unix://'.length) });
  const url = new URL(dockerHost);
  return new Dockerode({ host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port: url.port ? Number(url.port) : 2375, protocol: 'http' });
}

/**
 * stack.env, for a test run by hand (test/run.sh exports its values). Read through the same check
 * the scripts use (deploy/lib/safe-dir.sh): the state dir must be ours alone and the file plain
 * KEY=VALUE lines, or nothing in it is used.
 */
function readStackEnv(): Record<string, string> {
  const file = join(process.env.FERRY_STACK_DIR ?? '/tmp/ferry-stack', 'stack.env');
  if (!existsSync(file)) return {};
  let lines: string;
  try {
    lines = execFileSync('bash', ['-c', '. deploy/lib/safe-dir.sh && ferry_env_lines "$1"', 'stack', file], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    throw new Error(`${file} is not safe to read: ${String((err as { stderr?: unknown }).stderr ?? err).trim()}`, { cause: err });
  }
  const values: Record<string, string> = {};
  for (const line of lines.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0) values[line.slice(0, at)] = line.slice(at + 1);
  }
  return values;
}
