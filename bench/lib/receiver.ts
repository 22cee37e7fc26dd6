import { createInterface } from 'node:readline';
import type { Site } from './link.ts';
import { exited, type Processes } from './proc.ts';

export interface BenchReceiver {
  /** What `ferry push --to` is given: the address the build side reaches it at. */
  url: string;
  pid: number | undefined;
  stop(): Promise<void>;
}

/**
 * `ferry receiver` on the target side of `site`: in a link's namespace it listens on the
 * namespace's address (or behind its delaying relay) and talks to its engine over the engine's
 * unix socket, which reaches across namespaces. Waits for its "receiver listening" line.
 */
export async function startReceiver(procs: Processes, site: Site, root: string, script: string, env: Record<string, string>): Promise<BenchReceiver> {
  const { port, bind, reach } = await site.expose();
  const base = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('FERRY_') && key !== 'DOCKER_HOST'));
  const child = procs.spawn(...site.wrap(process.execPath, [script, 'receiver']), {
    // No stability window (default 5 s after the health check passed): the other methods take
    // the first healthy answer as the end, so a window would add its length to every push.
    cwd: root, env: { ...base, FERRY_STABILITY_WINDOW_MS: '0', ...env, FERRY_LISTEN: `${bind}:${port}` }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let said = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { said = (said + chunk).slice(-4000); });
  const gone = exited(child);
  await new Promise<void>((resolve, reject) => {
    if (!child.stdout) {
      reject(new Error('ferry receiver without stdout'));
      return;
    }
    createInterface({ input: child.stdout }).on('line', (line) => {
      said = (said + line).slice(-4000);
      if (line.includes('"receiver listening"')) resolve();
    });
    void gone.then((code) => reject(new Error(`ferry receiver exited with ${code}: ${said}`)));
  });
  return {
    url: `http://${reach}:${port}`,
    pid: child.pid,
    stop: async () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(-child.pid, 'SIGTERM');
      await gone;
    },
  };
}
