import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort, waitForHttp } from './net.ts';
import { exited, type Processes } from './proc.ts';

const REGISTRY = '/usr/bin/docker-registry';

export interface LocalRegistry {
  port: number;
  /** Where it keeps blobs and manifests. */
  storage: string;
  stop(): Promise<void>;
}

/**
 * Debian's docker-registry (distribution 2.x) on a random loopback port with filesystem storage
 * in `dir`. 127.0.0.0/8 registries are insecure-allowed by dockerd by default, so plain HTTP works
 * for push and pull without touching any daemon's configuration.
 */
export async function startRegistry(dir: string, procs: Processes, storage = join(dir, 'storage')): Promise<LocalRegistry> {
  await mkdir(storage, { recursive: true });
  const port = await freePort();
  const config = join(dir, 'config.yml');
  await writeFile(config, [
    'version: 0.1',
    'log:', '  level: error', '  accesslog:', '    disabled: true',
    'storage:', '  filesystem:', `    rootdirectory: ${storage}`, '  delete:', '    enabled: true',
    'http:', `  addr: 127.0.0.1:${port}`, '',
  ].join('\n'));
  const child = procs.spawn(REGISTRY, ['serve', config]);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
  const up = await Promise.race([
    waitForHttp(`http://127.0.0.1:${port}/v2/`, 50, 20_000),
    exited(child).then((code) => { throw new Error(`docker-registry exited with ${code}: ${stderr}`); }),
  ]);
  if (!up) throw new Error(`docker-registry does not answer on 127.0.0.1:${port}: ${stderr}`);
  return {
    port,
    storage,
    stop: async () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        const gone = exited(child);
        process.kill(-child.pid, 'SIGTERM');
        await gone;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
