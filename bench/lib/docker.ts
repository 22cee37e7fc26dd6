import { run, runAllowingFailure, type Processes } from './proc.ts';

/** The docker CLI against one engine; every call is a tracked child process. */
export class Engine {
  readonly host: string;
  readonly #procs: Processes;

  constructor(host: string, procs: Processes) {
    this.host = host;
    this.#procs = procs;
  }

  async docker(args: string[]): Promise<string> {
    return (await run(this.#procs, 'docker', ['-H', this.host, ...args])).stdout.trim();
  }

  async has(image: string): Promise<boolean> {
    return (await runAllowingFailure(this.#procs, 'docker', ['-H', this.host, 'image', 'inspect', '--format', '{{.Id}}', image])).code === 0;
  }

  /**
   * Removes an image by id with every container started from it, so its layers leave the engine
   * (a dangling-image prune on a shared engine could take images that are not the bench's with it).
   */
  async removeImage(id: string): Promise<void> {
    if (!await this.has(id)) return;
    const containers = (await this.docker(['ps', '-aq', '--filter', `ancestor=${id}`])).split('\n').filter(Boolean);
    if (containers.length > 0) await this.docker(['rm', '-f', '-v', ...containers]);
    await runAllowingFailure(this.#procs, 'docker', ['-H', this.host, 'rmi', '-f', id]);
    if (await this.has(id)) throw new Error(`${id} is still on ${this.host} after docker rmi -f`);
  }

  /** Removes a tag but never the image behind it (used on the build engine). */
  async untag(ref: string): Promise<void> {
    await runAllowingFailure(this.#procs, 'docker', ['-H', this.host, 'rmi', '--no-prune', ref]);
  }

  async removeContainer(name: string): Promise<void> {
    await runAllowingFailure(this.#procs, 'docker', ['-H', this.host, 'rm', '-f', '-v', name]);
  }

  async serverVersion(): Promise<string> {
    return this.docker(['version', '--format', '{{.Server.Version}}']);
  }

  async storageDriver(): Promise<string> {
    return this.docker(['info', '--format', '{{.Driver}}']);
  }
}
