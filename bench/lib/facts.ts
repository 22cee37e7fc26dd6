import { readFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release } from 'node:os';
import type { Engine } from './docker.ts';
import { runAllowingFailure, type Processes } from './proc.ts';

export interface MachineFacts {
  date: string;
  nproc: number;
  cpu: string;
  memory: string;
  kernel: string;
  node: string;
  dockerClient: string;
  buildEngine: string;
  targetEngine: string;
  tools: string;
  loadAtStart: string;
}

export async function machineFacts(procs: Processes, build: Engine, target: Engine): Promise<MachineFacts> {
  const memKb = Number(/MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  const first = async (command: string, args: string[]): Promise<string> => {
    const result = await runAllowingFailure(procs, command, args);
    return `${result.stdout}${result.stderr}`.trim().split('\n')[0] ?? '';
  };
  const engine = async (e: Engine): Promise<string> => `dockerd ${await e.serverVersion()}, storage driver ${await e.storageDriver()} (${e.host})`;
  return {
    date: new Date().toISOString(),
    nproc: availableParallelism(),
    cpu: cpus()[0]?.model ?? 'unknown',
    memory: `${(memKb / 1024 ** 2).toFixed(1)} GiB`,
    kernel: `Linux ${release()}`,
    node: process.version,
    dockerClient: await first('docker', ['version', '--format', '{{.Client.Version}}']),
    buildEngine: await engine(build),
    targetEngine: await engine(target),
    tools: [
      await first('gzip', ['--version']),
      await first('ssh', ['-V']),
      `docker-registry ${(await first('/usr/bin/docker-registry', ['--version'])).split(' ').at(-1) ?? ''}`,
    ].join('; '),
    loadAtStart: loadavg().map((n) => n.toFixed(2)).join(' '),
  };
}
