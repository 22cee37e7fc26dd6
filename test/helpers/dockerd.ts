import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createDockerClient } from '@ferry/docker';
import { capture, terminate } from './ferry.ts';

/**
 * A Docker engine of the test's own (socket under a short /tmp path, its own data root and
 * containerd namespace), so a test can have more target engines than the shared stack, or kill
 * one, without disturbing anyone. With `bridge`, the engine gets a Linux bridge of its own
 * (a random name and 10.x/24), so the "bridge" network exists and `-p` really publishes ports
 * (through docker-proxy, as --iptables=false leaves no NAT rules).
 */
export class PrivateDockerd {
  readonly dir: string;
  readonly host: string;
  readonly bridge: string | undefined;
  #child: ChildProcess | undefined;
  #log = '';

  private constructor(dir: string, bridge: string | undefined) {
    this.dir = dir;
    this.host = `unix://${dir}/d.sock`;
    this.bridge = bridge;
  }

  static async start(options: { bridge?: boolean } = {}): Promise<PrivateDockerd> {
    const dir = await mkdtemp('/tmp/fx-');
    const tag = randomBytes(3).toString('hex');
    const bridge = options.bridge ? `fxb${tag}` : undefined;
    if (bridge) {
      const subnet = `10.${randomInt(200, 250)}.${randomInt(0, 255)}`;
      // Its own address (locally administered): a bridge without one takes its lowest port's, which
      // changes as containers come and go and leaves their ARP entry for the gateway stale.
      const mac = `02:fe:${randomBytes(4).toString('hex').replace(/(..)(?!$)/g, '$1:')}`;
      for (const args of [['link', 'add', bridge, 'address', mac, 'type', 'bridge'], ['addr', 'add', `${subnet}.1/24`, 'dev', bridge], ['link', 'set', bridge, 'up']]) {
        const result = await capture('ip', args);
        if (result.code !== 0) throw new Error(`ip ${args.join(' ')}: ${result.stderr}`);
      }
    }
    const engine = new PrivateDockerd(dir, bridge);
    await writeFile(join(dir, 'empty.json'), '{}');
    const ns = `fx-${tag}`;
    // setpriv execs dockerd with a parent-death signal: a test runner killed before its `after`
    // hooks still takes its engines down with it.
    const child = spawn('setpriv', ['--pdeathsig', 'TERM', 'dockerd',
      '--storage-driver=overlay2', '--iptables=false', '--ip-masq=false', `--bridge=${bridge ?? 'none'}`,
      '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--host', engine.host,
      '--pidfile', join(dir, 'd.pid'), '--config-file', join(dir, 'empty.json'),
      '--containerd-namespace', ns, '--containerd-plugins-namespace', `${ns}-p`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    engine.#child = child;
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { engine.#log = (engine.#log + chunk).slice(-4000); });
    const client = createDockerClient(engine.host);
    for (;;) {
      if (child.exitCode !== null) {
        await engine.stop();
        throw new Error(`private dockerd exited with ${child.exitCode}: ${engine.#log}`);
      }
      if (await client.ping().then(() => true, () => false)) return engine;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Stops the engine (its containers with it) and removes its bridge and its files. */
  async stop(): Promise<void> {
    await terminate(this.#child);
    if (this.bridge) await capture('ip', ['link', 'del', this.bridge]);
    await rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
  }
}
