import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { capture, freePort, terminate } from './ferry.ts';

/** A client key the private sshd accepts, with what to pass to ssh (or deploy/bootstrap.sh) to use it. */
export interface SshLogin {
  identity: string;
  /** `-i`, `-p` and the options that make ssh trust this throwaway server without asking. */
  args: string[];
}

/**
 * An sshd of the test's own on a random loopback port, for the current user: generated host and
 * client keys, its own authorized_keys, nothing read from /etc/ssh. `login(env)` adds a client key
 * whose sessions get extra environment (authorized_keys `environment=`), e.g. another PATH.
 */
export class PrivateSshd {
  readonly dir: string;
  readonly port: number;
  #child: ChildProcess | undefined;
  #log = '';

  private constructor(dir: string, port: number) {
    this.dir = dir;
    this.port = port;
  }

  static async start(): Promise<PrivateSshd> {
    const dir = await mkdtemp('/tmp/fs-');
    const server = new PrivateSshd(dir, await freePort());
    await keygen(join(dir, 'host_key'));
    await writeFile(join(dir, 'authorized_keys'), '', { mode: 0o600 });
    await writeFile(join(dir, 'sshd_config'), [
      `Port ${server.port}`, 'ListenAddress 127.0.0.1', `HostKey ${join(dir, 'host_key')}`, `PidFile ${join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`, 'StrictModes no', 'UsePAM no', 'PasswordAuthentication no',
      'KbdInteractiveAuthentication no', 'PermitRootLogin prohibit-password', 'PermitUserEnvironment yes', 'LogLevel ERROR', '',
    ].join('\n'));
    // sshd refuses to start without its privilege separation directory.
    await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
    const child = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] });
    server.#child = child;
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { server.#log = (server.#log + chunk).slice(-4000); });
    for (;;) {
      if (child.exitCode !== null) {
        await server.stop();
        throw new Error(`private sshd exited with ${child.exitCode}: ${server.#log}`);
      }
      if (await accepts(server.port)) return server;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** A new client key for this server; `env` is set in each of its sessions. */
  async login(env: Record<string, string> = {}): Promise<SshLogin> {
    const identity = join(this.dir, `id_${Math.random().toString(36).slice(2, 8)}`);
    const pub = await keygen(identity);
    const options = Object.entries(env).map(([name, value]) => `environment="${name}=${value}"`).join(',');
    await writeFile(join(this.dir, 'authorized_keys'), `${options ? `${options} ` : ''}${pub}\n`, { flag: 'a' });
    return {
      identity,
      args: ['-p', String(this.port), '-i', identity, '-o', 'StrictHostKeyChecking=no', '-o', `UserKnownHostsFile=${join(this.dir, 'known_hosts')}`, '-o', 'LogLevel=ERROR'],
    };
  }

  async stop(): Promise<void> {
    await terminate(this.#child);
    await rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

async function keygen(file: string): Promise<string> {
  const result = await capture('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ferry-test', '-f', file]);
  if (result.code !== 0) throw new Error(`ssh-keygen failed: ${result.stderr}`);
  return (await readFile(`${file}.pub`, 'utf8')).trim();
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}
