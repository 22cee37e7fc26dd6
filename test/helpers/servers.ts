/**
 * Private nats-server and redis-server instances for fault tests: each on a loopback port of its
 * own, stoppable and restartable on the same port and data directory, so a client sees "the same
 * server went away and came back". The shared stack's servers are never touched.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ferry.ts';

const NATS_SERVER = process.env.FERRY_NATS_SERVER_BIN ?? '/usr/sbin/nats-server';
const REDIS_SERVER = process.env.FERRY_REDIS_SERVER_BIN ?? 'redis-server';

abstract class PrivateServer {
  readonly port: number;
  readonly dir: string;
  #child: ChildProcess | undefined;

  protected constructor(port: number, dir: string) {
    this.port = port;
    this.dir = dir;
  }

  protected abstract command(): { bin: string; args: string[]; ready: string; stream: 'stdout' | 'stderr' };

  get running(): boolean {
    return this.#child !== undefined;
  }

  async start(): Promise<void> {
    const { bin, args, ready, stream } = this.command();
    const child = spawn(bin, args, { stdio: ['ignore', stream === 'stdout' ? 'pipe' : 'ignore', stream === 'stderr' ? 'pipe' : 'ignore'] });
    this.#child = child;
    let log = '';
    await new Promise<void>((resolve, reject) => {
      child[stream]?.on('data', (chunk: Buffer) => {
        log += chunk.toString();
        if (log.includes(ready)) resolve();
      });
      child.once('exit', (code) => reject(new Error(`${bin} exited (${code}) before it was ready:\n${log}`)));
      child.once('error', reject);
    });
  }

  async stop(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    await exited;
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** nats-server with JetStream, its store in a temporary directory. */
export class NatsServer extends PrivateServer {
  static async create(): Promise<NatsServer> {
    return new NatsServer(await freePort(), mkdtempSync(join(tmpdir(), 'fx-nats-')));
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  protected command(): { bin: string; args: string[]; ready: string; stream: 'stderr' } {
    return { bin: NATS_SERVER, args: ['-js', '-a', '127.0.0.1', '-p', String(this.port), '-sd', this.dir], ready: 'Server is ready', stream: 'stderr' };
  }
}

/** redis-server without persistence, bound to loopback. */
export class RedisServer extends PrivateServer {
  static async create(): Promise<RedisServer> {
    return new RedisServer(await freePort(), mkdtempSync(join(tmpdir(), 'fx-redis-')));
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  protected command(): { bin: string; args: string[]; ready: string; stream: 'stdout' } {
    return {
      bin: REDIS_SERVER,
      args: ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no'],
      ready: 'Ready to accept connections', stream: 'stdout',
    };
  }
}
