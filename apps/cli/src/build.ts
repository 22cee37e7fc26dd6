import { ImageBuilder, ImageStore, createDockerClient } from '@ferry/docker';
import { FerryError } from '@ferry/protocol';
import { buildImage, type BuildRequest } from '@ferry/sender';
import { parse, parseInteger } from './args.ts';
import { line, type Io } from './io.ts';
import { formatBytes, formatMs } from './progress.ts';

/** The options `ferry build` and `ferry push --build` share. */
export const BUILD_OPTIONS = {
  file: { type: 'string', short: 'f' },
  'build-arg': { type: 'string', multiple: true },
  'max-image-size': { type: 'string' },
} as const;

/** `ferry build`: what it does and takes is its help text, in help.ts. */
export async function buildCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { ...BUILD_OPTIONS, tag: { type: 'string', short: 't' }, json: { type: 'boolean' } }, 1);
  const context = positionals[0];
  if (!context) throw new FerryError('FERRY_ERR_USAGE', { message: 'CONTEXT is required (e.g. ferry build . -t myapp:1.2)' });
  if (!values.tag) throw new FerryError('FERRY_ERR_USAGE', { message: '-t NAME[:TAG] is required' });
  const request = buildRequestFrom(context, values.tag, values);
  const docker = createDockerClient(dockerHostFrom(io.env.DOCKER_HOST));
  const result = await buildImage(request, {
    builder: new ImageBuilder(docker), images: new ImageStore(docker),
    // Under --json the build log goes to stderr as JSON lines, so stdout stays one result.
    onLog: (text: string) => line(io.stderr, values.json ? JSON.stringify({ log: text }) : text),
  });
  if (values.json) line(io.stdout, JSON.stringify({ ok: true, ...result }));
  else line(io.stdout, `✔ built ${result.image} ${result.imageId} (${formatBytes(result.bytes)}, ${formatMs(result.durationMs)})`);
  return 0;
}

/** Turns the shared build options into a request. */
export function buildRequestFrom(context: string, tag: string, values: { file?: string; 'build-arg'?: string[]; 'max-image-size'?: string }): BuildRequest {
  const maxImageSize = parseInteger('max-image-size', values['max-image-size'], 1, Number.MAX_SAFE_INTEGER);
  return {
    context, tag,
    ...(values.file ? { dockerfile: values.file } : {}),
    ...(values['build-arg'] ? { buildArgs: parseBuildArgs(values['build-arg']) } : {}),
    ...(maxImageSize !== undefined ? { maxImageSize } : {}),
  };
}

function parseBuildArgs(pairs: string[]): Record<string, string> {
  const args: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new FerryError('FERRY_ERR_USAGE', { message: `--build-arg ${pair.split('=')[0]}: expected KEY=VALUE` });
    args[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return args;
}

/** `ferry build` needs no signing key, so it reads DOCKER_HOST alone rather than the sender's config. */
function dockerHostFrom(value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^(unix|tcp):\/\/.+/.test(value)) throw new FerryError('FERRY_ERR_CONFIG', { message: 'DOCKER_HOST: unix:///path/to/docker.sock or tcp://host:port' });
  return value;
}
