import { spawn } from 'node:child_process';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '@ferry/protocol';
import type { ProxyPaths } from './config.ts';
import { RuntimeClient } from './runtime.ts';

/**
 * HAProxy's process: started as a daemon in master-worker mode (so it outlives the receiver and
 * keeps serving while the receiver restarts), found again by its pid file and its answering admin socket.
 */

function run(binary: string, args: string[], timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let output = '';
    child.stdout.on('data', (d: Buffer) => { output += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { output += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
  });
}

/** Starts HAProxy on the written configuration and waits until its admin socket answers. */
export async function startHaproxy(binary: string, paths: ProxyPaths, timeoutMs = 15_000): Promise<void> {
  let result;
  try {
    result = await run(binary, ['-W', '-D', '-f', paths.config, '-p', paths.pidFile, '-S', `${paths.masterSocket},mode,600`], timeoutMs);
  } catch (cause) {
    throw new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: `HAProxy (${binary}) could not be started`, cause });
  }
  if (result.code !== 0) {
    throw new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: `HAProxy exited with ${result.code} at start: ${result.output.trim().slice(-800)}` });
  }
  const client = new RuntimeClient(paths.adminSocket, 1_000);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await client.alive()) return;
    await sleep(50);
  }
  throw new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: 'HAProxy started but its admin socket did not answer' });
}

/** Checks a configuration with `haproxy -c` before it is started. */
export async function checkConfig(binary: string, path: string): Promise<void> {
  let result;
  try {
    result = await run(binary, ['-c', '-q', '-f', path], 15_000);
  } catch (cause) {
    throw new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: `HAProxy (${binary}) could not be run`, cause });
  }
  if (result.code !== 0) throw new FerryError('FERRY_ERR_CONFIG', { message: `HAProxy rejects the proxy configuration: ${result.output.trim().slice(-800)}` });
}

/**
 * The processes of this proxy's HAProxy: the pid file's, and any other whose command line names
 * this configuration file (a worker left behind by a master that was killed would still hold the
 * listening ports). Nothing else is ever signalled.
 */
export async function haproxyPids(paths: ProxyPaths): Promise<number[]> {
  const pids = new Set<number>();
  const ours = async (pid: number): Promise<boolean> => {
    try {
      const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
      const exe = await readlink(`/proc/${pid}/exe`).catch(() => '');
      const i = cmdline.indexOf('-f');
      return (/haproxy/.test(exe) || /haproxy/.test(cmdline[0] ?? '')) && i >= 0 && cmdline[i + 1] === paths.config;
    } catch {
      return false;
    }
  };
  const fromFile = Number((await readFile(paths.pidFile, 'utf8').catch(() => '')).trim().split('\n')[0]);
  if (Number.isInteger(fromFile) && fromFile > 1 && await ours(fromFile)) pids.add(fromFile);
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid !== process.pid && !pids.has(pid) && await ours(pid)) pids.add(pid);
  }
  return [...pids];
}

/** Kills this proxy's HAProxy processes (a dead or stuck one, before it is started again; or in tests). */
export async function killHaproxy(paths: ProxyPaths, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  const pids = await haproxyPids(paths);
  for (const pid of pids) {
    try { process.kill(pid, signal); } catch { /* gone already */ }
  }
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && (await haproxyPids(paths)).length > 0) await sleep(50);
}
