import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Endpoint, Site } from './link.ts';
import { waitForHttp } from './net.ts';
import { exited, type Processes } from './proc.ts';

const REGISTRY = '/usr/bin/docker-registry';

export interface LocalRegistry {
  port: number;
  /** Where it keeps blobs and manifests. */
  storage: string;
  stop(): Promise<void>;
}

/**
 * Debian's docker-registry (distribution 2.x) on the target side of `site`, at `endpoint`, with
 * filesystem storage in `dir`. 127.0.0.0/8 registries are insecure-allowed by dockerd by default,
 * so plain HTTP works for push and pull without touching any daemon's configuration (the engines
 * reach one behind a link through a forwarder on 127.0.0.1).
 */
export async function startRegistry(dir: string, procs: Processes, storage: string, site: Site, endpoint: Endpoint): Promise<LocalRegistry> {
  await mkdir(storage, { recursive: true });
  const { port, bind, reach } = endpoint;
  const config = join(dir, 'config.yml');
  await writeFile(config, [
    'version: 0.1',
    'log:', '  level: error', '  accesslog:', '    disabled: true',
    'storage:', '  filesystem:', `    rootdirectory: ${storage}`, '  delete:', '    enabled: true',
    'http:', `  addr: ${bind}:${port}`, '',
  ].join('\n'));
  const child = procs.spawn(...site.wrap(REGISTRY, ['serve', config]));
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
  const up = await Promise.race([
    waitForHttp(`http://${reach}:${port}/v2/`, 50, 20_000),
    exited(child).then((code) => { throw new Error(`docker-registry exited with ${code}: ${stderr}`); }),
  ]);
  if (!up) throw new Error(`docker-registry does not answer on ${reach}:${port}: ${stderr}`);
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
