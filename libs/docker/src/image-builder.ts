import { spawn } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { FerryError } from '@ferry/protocol';
import type { DockerEngine } from './engine.ts';
import { toFerryError } from './errors.ts';
import { readProgress } from './progress.ts';

export interface BuildOptions {
  /** The build context: a directory on this machine, sent to the engine as a tar stream. */
  context: string;
  /** Path of the Dockerfile inside the context; the engine's default is `Dockerfile`. */
  dockerfile?: string;
  /** `name[:tag]` the built image is tagged with. */
  tag: string;
  buildArgs?: Record<string, string>;
  signal?: AbortSignal;
}

/** Receives the build log one line at a time, as the engine writes it. */
export type BuildLogSink = (line: string) => void;

/** GNU tar's stderr can be long; the error carries its end, where the reason is. */
const MAX_TAR_STDERR = 4000;
const SUCCESSFULLY_BUILT = /^Successfully built ([0-9a-f]{12,64})$/;

/**
 * Builds images on one engine from a local directory. The context is archived by the system
 * `tar` and piped into the engine's build endpoint, so its size never reaches this process's
 * memory. `.dockerignore` is honoured for plain patterns (`*`, `?`, `[…]` within one path
 * segment; a listed directory excludes everything under it); `!` exceptions and `**` are refused
 * with FERRY_ERR_BUILD_FAILED rather than silently sending what the user meant to leave out.
 */
export class ImageBuilder {
  readonly #docker: DockerEngine;

  constructor(docker: DockerEngine) {
    this.#docker = docker;
  }

  /**
   * Runs the build and resolves with the image id (`sha256:…`). The engine reports a failed step
   * in-band with HTTP 200, so every line of its answer is parsed: an error line, an error answer,
   * an unreadable context or an abort rejects with FERRY_ERR_BUILD_FAILED carrying the engine's
   * words; an unreachable engine with FERRY_ERR_DOCKER_UNAVAILABLE.
   */
  async build(options: BuildOptions, onLog: BuildLogSink = () => {}): Promise<string> {
    const excludes = await contextExcludes(options.context);
    const controller = new AbortController();
    const onAbort = (): void => controller.abort(options.signal?.reason);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) onAbort();

    const tar = spawn('tar', [
      '-C', options.context, '--anchored', '--wildcards', '--no-wildcards-match-slash',
      ...excludes.map((pattern) => `--exclude=./${pattern}`), '-cf', '-', '.',
    ], { stdio: ['ignore', 'pipe', 'pipe'], signal: controller.signal });
    let tarStderr = '';
    tar.stderr.setEncoding('utf8').on('data', (chunk: string) => { tarStderr = (tarStderr + chunk).slice(-MAX_TAR_STDERR); });
    const tarExit = new Promise<number | string>((resolve) => {
      tar.once('error', (err) => resolve(err.message));
      tar.once('close', (code, signal) => resolve(code ?? signal ?? 'killed'));
    });
    const tarFailed = async (): Promise<FerryError | undefined> => {
      const exit = await tarExit;
      if (exit === 0 || controller.signal.aborted) return undefined;
      return new FerryError('FERRY_ERR_BUILD_FAILED', {
        message: `The build context ${options.context} could not be read: ${tarStderr.trim() || `tar exited with ${exit}`}`,
        details: { context: options.context },
      });
    };

    try {
      controller.signal.throwIfAborted();
      let response: Readable;
      try {
        response = await this.#docker.stream({ method: 'POST', path: '/build', body: tar.stdout, signal: controller.signal, query: {
          t: options.tag,
          // The classic builder answers this endpoint in the JSON lines parsed below.
          version: '1',
          ...(options.dockerfile ? { dockerfile: options.dockerfile } : {}),
          ...(options.buildArgs && Object.keys(options.buildArgs).length > 0 ? { buildargs: options.buildArgs } : {}),
        } });
      } catch (err) {
        throw (await tarFailed()) ?? toFerryError(err, 'FERRY_ERR_BUILD_FAILED', `build ${options.tag}`);
      }
      const reported = await readBuildLog(response, onLog);
      // A context cut short by tar can still look like a build to the engine.
      const unreadable = await tarFailed();
      if (unreadable) throw unreadable;
      return await this.#fullId(reported, options.tag);
    } catch (err) {
      if (options.signal?.aborted) throw new FerryError('FERRY_ERR_BUILD_FAILED', { message: `The build of ${options.tag} was aborted`, cause: options.signal.reason });
      throw err;
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      if (tar.exitCode === null) tar.kill();
      tar.stdout.destroy();
    }
  }

  /** The classic builder's last line names a short id; the image's inspect has the full one. */
  async #fullId(reported: string, tag: string): Promise<string> {
    if (reported.startsWith('sha256:')) return reported;
    try {
      return (await this.#docker.inspectImage(reported)).Id;
    } catch (err) {
      throw toFerryError(err, 'FERRY_ERR_BUILD_FAILED', `inspect the image just built as ${tag}`);
    }
  }
}

/** Reads the engine's answer to its end; resolves with the image id it reported. */
async function readBuildLog(response: Readable, onLog: BuildLogSink): Promise<string> {
  let auxId: string | undefined;
  let builtId: string | undefined;
  const errors: string[] = [];
  for await (const event of readProgress(response)) {
    if (event.type === 'error') {
      errors.push(event.error.trim());
      onLog(event.error.trim());
      continue;
    }
    if (event.type === 'invalid') {
      onLog(event.line);
      continue;
    }
    const aux = event.message.aux as { ID?: unknown } | undefined;
    if (aux && typeof aux.ID === 'string') auxId = aux.ID;
    const text = event.message.stream ?? event.message.status ?? '';
    for (const raw of text.split('\n')) {
      const line = raw.trimEnd();
      if (line === '') continue;
      builtId = SUCCESSFULLY_BUILT.exec(line)?.[1] ?? builtId;
      onLog(line);
    }
  }
  if (errors.length > 0) throw new FerryError('FERRY_ERR_BUILD_FAILED', { message: `The build failed: ${errors.join('; ')}` });
  const id = auxId ?? builtId;
  if (!id) throw new FerryError('FERRY_ERR_BUILD_FAILED', { message: 'The engine finished the build without naming an image' });
  return id;
}

/** The `.dockerignore` patterns as tar exclusions, relative to the context root. */
async function contextExcludes(context: string): Promise<string[]> {
  const info = await stat(context).catch(() => undefined);
  if (!info?.isDirectory()) {
    throw new FerryError('FERRY_ERR_BUILD_FAILED', { message: `The build context ${context} is not a directory`, details: { context } });
  }
  let text: string;
  try {
    text = await readFile(join(context, '.dockerignore'), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new FerryError('FERRY_ERR_BUILD_FAILED', { message: `${join(context, '.dockerignore')} cannot be read: ${(err as Error).message}`, cause: err });
  }
  const patterns: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('!') || line.includes('**')) {
      throw new FerryError('FERRY_ERR_BUILD_FAILED', {
        message: `.dockerignore line "${line}": exceptions (!) and ** are not supported by ferry build; list plain patterns`,
        details: { context },
      });
    }
    const pattern = posix.normalize(line.replace(/^\/+/, ''));
    if (pattern === '.' || pattern.startsWith('../')) continue;
    patterns.push(pattern.replace(/\/$/, ''));
  }
  return patterns;
}
