import { spawn } from 'node:child_process';

/**
 * `docker build` of a Dockerfile alone, with no context, on the engine at `dockerHost`: FROM an
 * image already there (the busybox test image), so nothing is pulled.
 */
export function buildFromDockerfile(dockerHost: string, tag: string, dockerfile: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('docker', ['-H', dockerHost, 'build', '-q', '-t', tag, '-'], {
      env: { ...process.env, DOCKER_BUILDKIT: '0' }, stdio: ['pipe', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`docker build ${tag} failed: ${stderr}`))));
    child.stdin.end(dockerfile);
  });
}
