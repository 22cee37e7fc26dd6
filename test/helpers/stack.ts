import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Dockerode from 'dockerode';
import { ImageStore, createDockerClient } from '@ferry/docker';

/**
 * Where the local stack (deploy/local-stack.sh) put the real parts the integration and e2e tests
 * talk to. test/run.sh starts the stack and exports these; a test run by hand reads stack.env.
 */
export interface Stack {
  buildDockerHost: string;
  targetDockerHost: string;
  natsUrl: string;
  redisUrl: string;
}

export function stack(): Stack {
  const fromFile = readStackEnv();
  const pick = (name: string): string => {
    const value = process.env[name] ?? fromFile[name];
    if (!value) throw new Error(`${name} is not set: start the stack with "bash deploy/local-stack.sh up" or run "npm test"`);
    return value;
  };
  return {
    buildDockerHost: pick('FERRY_BUILD_DOCKER_HOST'),
    targetDockerHost: pick('FERRY_TARGET_DOCKER_HOST'),
    natsUrl: pick('FERRY_NATS_URL'),
    redisUrl: pick('FERRY_REDIS_URL'),
  };
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

function readStackEnv(): Record<string, string> {
  const file = join(process.env.FERRY_STACK_DIR ?? '/tmp/ferry-stack', 'stack.env');
  if (!existsSync(file)) return {};
  const values: Record<string, string> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const match = /^(?:export\s+)?([A-Z_][A-Z0-9_]*)=["']?(.*?)["']?$/.exec(line.trim());
    if (match?.[1] && match[2] !== undefined) values[match[1]] = match[2];
  }
  return values;
}
