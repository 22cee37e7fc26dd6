import { hostname } from 'node:os';
import { RegistryClient } from '@ferry/auth';
import { JetStreamPublisher, NullSink, type EventSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { FerryError, RELEASE_ID_PATTERN } from '@ferry/protocol';
import { DEFAULT_BACKOFF, ReceiverClient, backToRelease, loadDeploymentFile, loadSenderConfig, type ServiceReturn } from '@ferry/sender';
import { parse, parseInteger } from './args.ts';
import { fileProject } from './deploy.ts';
import { line, type Io } from './io.ts';
import { formatMs } from './progress.ts';
import { oneLine } from './terminal.ts';

/** `ferry rollback`: what it does and takes is its help text, in help.ts. */
export async function rollbackCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    to: { type: 'string', multiple: true }, json: { type: 'boolean' }, 'to-release': { type: 'string' },
    service: { type: 'string', multiple: true }, file: { type: 'string', short: 'f' }, parallel: { type: 'string' }, retries: { type: 'string' },
  }, 1);
  if (values['to-release'] !== undefined) return await toReleaseCommand(values, positionals[0], io);
  for (const flag of ['service', 'file', 'parallel', 'retries'] as const) {
    if (values[flag] !== undefined) throw new FerryError('FERRY_ERR_USAGE', { message: `--${flag} goes with --to-release ID` });
  }
  const service = positionals[0];
  if (!service) throw new FerryError('FERRY_ERR_USAGE', { message: 'SERVICE is required (e.g. ferry rollback web --to http://host:7701), or --to-release ID' });
  const to = values.to ?? [];
  if (to.length !== 1 || to[0] === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: to.length === 0 ? '--to URL is required' : 'one --to URL (several hosts: --to-release ID)' });
  const client = new ReceiverClient({ url: to[0], credentials: loadSenderConfig(io.env).credentials });
  const result = await client.rollback(service);
  if (values.json) {
    line(io.stdout, JSON.stringify({ ok: true, ...result }));
  } else {
    line(io.stdout, oneLine(`✔ ${result.service} runs ${result.image} again on ${result.host}`));
    line(io.stdout, `  rollback    ${result.deploymentId} (${result.state}, ${formatMs(result.timings.total)})`);
    line(io.stdout, `  image       ${result.imageId}`);
    if (result.containerId) line(io.stdout, `  container   ${result.containerId.slice(0, 12)}`);
  }
  return 0;
}

interface ToReleaseFlags {
  to?: string[] | undefined;
  json?: boolean | undefined;
  'to-release'?: string | undefined;
  service?: string[] | undefined;
  file?: string | undefined;
  parallel?: string | undefined;
  retries?: string | undefined;
}

/**
 * `ferry rollback --to-release ID`: the hosts named by --to, or every target of the deployment
 * file, return to a release they retain, the last phase first.
 */
async function toReleaseCommand(values: ToReleaseFlags, positional: string | undefined, io: Io): Promise<number> {
  const releaseId = values['to-release'] ?? '';
  if (!RELEASE_ID_PATTERN.test(releaseId)) throw new FerryError('FERRY_ERR_USAGE', { message: `--to-release ${releaseId}: a release id, rel-YYYYMMDDTHHMMSSZ-<8 hex> (see "ferry releases")` });
  const named = [...(positional ? [positional] : []), ...(values.service ?? []).flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean)];
  const services = named.length > 0 ? named : undefined;
  if (values.to !== undefined && values.file !== undefined) throw new FerryError('FERRY_ERR_USAGE', { message: '--to or -f, not both: the hosts are the ones named, or the targets of the file' });
  let targets = values.to ?? [];
  let project: string | undefined;
  if (targets.length === 0) {
    // Only the targets are read: `${VAR}` in env values stays as written, nothing needs to be set.
    const document = await loadDeploymentFile(values.file ?? 'ferry.yaml');
    project = fileProject(document, values.file ?? 'ferry.yaml');
    const entries = Object.entries(document.services).filter(([name]) => services === undefined || services.includes(name));
    targets = [...new Set(entries.flatMap(([, entry]) => entry.targets))];
    if (targets.length === 0) throw new FerryError('FERRY_ERR_USAGE', { message: `no service ${services?.join(', ') ?? ''} in ${values.file ?? 'ferry.yaml'}` });
  }
  const config = loadSenderConfig(io.env);
  const json = values.json === true;
  const parallel = parseInteger('parallel', values.parallel, 1, 100);
  const attempts = parseInteger('retries', values.retries, 1, 100) ?? DEFAULT_BACKOFF.attempts;
  // The releases left are told on the bus as a release run tells its own rollback.
  const logger = createLogger({ level: 'warn', name: 'ferry', destination: io.stderr });
  const sink: EventSink = config.natsUrl
    ? await JetStreamPublisher.connect({ url: config.natsUrl, logger, name: 'ferry-sender' })
    : new NullSink({ logger });
  const registry = config.registryUrl ? new RegistryClient(config.registryUrl, config.credentials) : undefined;
  // A release's project is the one it was made in, as the registry recorded it; else the file's.
  const projectOf = async (id: string): Promise<string | undefined> => {
    const recorded = await registry?.release(id).then((r) => r.project, () => undefined);
    return recorded || project;
  };
  try {
    return report(io, json, releaseId, await backToRelease({ releaseId, targets, services, parallel, attempts }, {
      credentials: config.credentials, registryUrl: config.registryUrl,
      events: { sink, source: `ferry://sender/${hostname()}`, projectOf },
      onWarning: (text) => line(io.stderr, oneLine(`warning: ${text}`)),
      ...(json ? {} : {
        onPlanned: (plan) => {
          for (const p of plan.problems) line(io.stdout, oneLine(`✖ ${p.host ?? p.url}: ${p.error.message} [${p.error.code}]`));
          if (plan.hosts.length > 0) line(io.stdout, oneLine(`rolling back to release ${releaseId} on ${plan.hosts.join(', ')}, last phase first…`));
        },
        onDone: (r: ServiceReturn) => line(io.stdout, oneLine(r.ok
          ? `  ↩ ${r.service} on ${r.host}: runs release ${releaseId} again (${r.imageId.slice(0, 19)})`
          : `  ✖ ${r.service} on ${r.host}: ${r.error?.message ?? 'failed'}${r.error ? ` [${r.error.code}]` : ''}`)),
      }),
    }));
  } finally {
    await sink.close();
  }
}

/** How the return to a release went: one line, or the result as JSON; the exit code. */
function report(io: Io, json: boolean, releaseId: string, result: Awaited<ReturnType<typeof backToRelease>>): number {
  if (json) {
    line(io.stdout, JSON.stringify(result));
  } else {
    const back = result.results.filter((r) => r.ok);
    const failed = result.results.length - back.length;
    const summary = `${back.length} service${back.length === 1 ? '' : 's'} on ${new Set(back.map((r) => r.host)).size} host${new Set(back.map((r) => r.host)).size === 1 ? '' : 's'} run release ${releaseId} again`;
    line(io.stdout, oneLine(result.ok ? `✔ ${summary}` : `✖ ${summary}; ${failed} failed, ${result.problems.length} host${result.problems.length === 1 ? '' : 's'} not returned`));
  }
  return result.ok ? 0 : 1;
}
