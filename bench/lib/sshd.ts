import { existsSync, mkdirSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { loopback, type Site } from './link.ts';
import { exited, run, type Processes } from './proc.ts';

const SSHD = '/usr/sbin/sshd';

export interface PrivateSshd {
  port: number;
  /** Where the build side reaches it (127.0.0.1, or the address of a link's namespace). */
  host: string;
  /** `ssh` options that reach this sshd through `host`:`port` (e.g. a proxy in front) as the current user. */
  sshArgs(host: string, port: number): string[];
  /** The same options as one shell-quoted string, for a pipeline run by bash. */
  sshCommand(host: string, port: number): string;
  stop(): Promise<void>;
}

/**
 * A private sshd on the target side of `site` (a random loopback port, or a port in a link's
 * namespace, where the sessions it runs then are too): its own host key, one generated client key in its own
 * authorized_keys, for the current user only. Nothing in ~/.ssh or /etc/ssh is read or changed;
 * the client trusts the host key through its own known_hosts under a fixed alias.
 */
export async function startPrivateSshd(dir: string, procs: Processes, site: Site = loopback): Promise<PrivateSshd> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const hostKey = join(dir, 'host_ed25519');
  const clientKey = join(dir, 'client_ed25519');
  await run(procs, 'ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ferry-bench-host', '-f', hostKey]);
  await run(procs, 'ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ferry-bench-client', '-f', clientKey]);
  await writeFile(join(dir, 'authorized_keys'), await readFile(`${clientKey}.pub`), { mode: 0o600 });
  await writeFile(join(dir, 'known_hosts'), `ferry-bench ${(await readFile(`${hostKey}.pub`, 'utf8')).trim()}\n`);
  const { port, bind, reach } = await site.expose();
  const config = join(dir, 'sshd_config');
  await writeFile(config, [
    `Port ${port}`, `ListenAddress ${bind}`, `HostKey ${hostKey}`, `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
    `PidFile ${join(dir, 'sshd.pid')}`, 'UsePAM no', 'StrictModes no', 'PasswordAuthentication no',
    'KbdInteractiveAuthentication no', 'PubkeyAuthentication yes', 'PermitRootLogin prohibit-password',
    `AllowUsers ${userInfo().username}`, 'LogLevel ERROR', '',
  ].join('\n'));
  // sshd started by root insists on its privilege separation directory (normally made by systemd).
  if (process.getuid?.() === 0 && !existsSync('/run/sshd')) mkdirSync('/run/sshd', { mode: 0o755 });
  const child = procs.spawn(...site.wrap(SSHD, ['-D', '-e', '-f', config]));
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
  await Promise.race([
    site.waitListening(port, 'the private sshd'),
    exited(child).then((code) => { throw new Error(`sshd exited with ${code}: ${stderr}`); }),
  ]);
  const user = userInfo().username;
  const sshArgs = (host: string, via: number): string[] => [
    '-F', '/dev/null', '-p', String(via), '-i', clientKey, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes',
    '-o', 'HostKeyAlias=ferry-bench', '-o', `UserKnownHostsFile=${join(dir, 'known_hosts')}`,
    '-o', 'StrictHostKeyChecking=yes', '-o', 'LogLevel=ERROR', `${user}@${host}`,
  ];
  return {
    port,
    host: reach,
    sshArgs,
    sshCommand: (host, via) => ['ssh', ...sshArgs(host, via)].map(shellQuote).join(' '),
    stop: async () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        const gone = exited(child);
        process.kill(-child.pid, 'SIGTERM');
        await gone;
      }
    },
  };
}

/** Quotes a word for bash unless it is plainly safe. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}
