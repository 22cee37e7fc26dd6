import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type Dockerode from 'dockerode';
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

/** The stack's two engines, as Docker clients and as Ferry's image stores. */
export function engines(s: Stack = stack()): { build: Dockerode; target: Dockerode; buildImages: ImageStore; targetImages: ImageStore } {
  const build = createDockerClient(s.buildDockerHost);
  const target = createDockerClient(s.targetDockerHost);
  return { build, target, buildImages: new ImageStore(build), targetImages: new ImageStore(target) };
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
