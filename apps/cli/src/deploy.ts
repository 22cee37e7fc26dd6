import { hostname } from 'node:os';
import { RegistryClient } from '@ferry/auth';
import { ImageBuilder, ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, type EventSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { loadSenderConfig, runDeployment, type ServiceOutcome, loadDeploymentFile, type DeploymentDocument, desiredRecorder, DEFAULT_PARALLEL, DEFAULT_BACKOFF } from '@ferry/sender';
import { envFromFlags, parse, parseInteger } from './args.ts';
import { failureLines, fromOutcome } from './failure.ts';
import { line, type Io } from './io.ts';
import { formatMs } from './progress.ts';
import { oneLine } from './terminal.ts';

/** `ferry deploy`: what it does and takes is its help text, in help.ts. */
export async function deployCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, {
    file: { type: 'string', short: 'f' }, only: { type: 'string', multiple: true },
    parallel: { type: 'string' }, retries: { type: 'string' }, json: { type: 'boolean' },
    env: { type: 'string', short: 'e', multiple: true }, 'env-file': { type: 'string', multiple: true },
  });
  const json = values.json === true;
  const parallel = parseInteger('parallel', values.parallel, 1, 100) ?? DEFAULT_PARALLEL;
  const attempts = parseInteger('retries', values.retries, 1, 100) ?? DEFAULT_BACKOFF.attempts;
  const only = (values.only ?? []).flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean);
  const env = envFromFlags(values, io.env);
  const document = withEnv(await loadDeploymentFile(values.file ?? 'ferry.yaml', io.env), env);
  const config = loadSenderConfig(io.env);

  const logger = createLogger({ level: 'warn', name: 'ferry', destination: io.stderr });
  const events: EventSink = config.natsUrl
    ? await JetStreamPublisher.connect({ url: config.natsUrl, logger, name: 'ferry-sender' })
    : new NullSink({ logger });
  const docker = createDockerClient(config.dockerHost);
  const warn = (text: string): void => line(io.stderr, text);
  const shown = new Map<string, string>();
  try {
    const outcome = await runDeployment(document, {
      images: new ImageStore(docker), builder: new ImageBuilder(docker), events,
      credentials: config.credentials, source: `ferry://sender/${hostname()}`, senderHost: hostname(),
      registryUrl: config.registryUrl,
      ...(config.registryUrl ? { desired: desiredRecorder(new RegistryClient(config.registryUrl, config.credentials), warn) } : {}),
      onRetry: (url, attempt, delayMs, err) => {
        if (!json) warn(`  retrying ${url} (attempt ${attempt + 1}) in ${formatMs(delayMs)}: ${err instanceof Error ? err.message : String(err)}`);
      },
      ...(json ? {} : { onBuildLog: (service: string, text: string) => warn(`  [${service}] ${text}`) }),
      onUpdate: (service) => {
        // Called again for every finished target: each state is told once.
        if (shown.get(service.service) === service.state) return;
        shown.set(service.service, service.state);
        if (service.state !== 'succeeded' && service.state !== 'failed') {
          if (!json) warn(`${service.service}: ${service.state}…`);
          return;
        }
        if (json) line(io.stdout, JSON.stringify(service));
        else printService(io, service);
      },
    }, { only, parallel, attempts });
    const failed = outcome.services.filter((s) => !s.ok).map((s) => s.service);
    if (json) line(io.stdout, JSON.stringify({ ok: outcome.ok, runId: outcome.runId, services: outcome.services.length, failed }));
    else line(io.stdout, outcome.ok ? `✔ deployed ${outcome.services.length} service${outcome.services.length === 1 ? '' : 's'}` : `✖ failed: ${failed.join(', ')}`);
    return outcome.ok ? 0 : 1;
  } finally {
    await events.close();
  }
}

/** `-e` and `--env-file` reach every service's container, over the file's own values. */
function withEnv(document: DeploymentDocument, env: Record<string, string>): DeploymentDocument {
  if (Object.keys(env).length === 0) return document;
  const services = Object.fromEntries(Object.entries(document.services).map(([name, entry]) => [name, { ...entry, env: { ...entry.env, ...env } }]));
  return { ...document, services };
}

function printService(io: Io, s: ServiceOutcome): void {
  const done = s.targets.filter((t) => t.ok).length;
  line(io.stdout, oneLine(`${s.ok ? '✔' : '✖'} ${s.service}: ${s.image} on ${done}/${s.targets.length} targets${s.imageId ? ` (${s.imageId.slice(0, 19)})` : ''}`));
  if (s.error) line(io.stdout, oneLine(`  failed: ${s.error.message} [${s.error.code}]`));
  for (const t of s.targets) {
    line(io.stdout, oneLine(`  ${t.ok ? '✔' : '✖'} ${t.host ?? t.url}  ${t.state}${t.error ? `  ${t.error.code}` : ''}  (${t.url}${t.deploymentId ? `, deployment ${t.deploymentId}` : ''})`));
  }
  // Each failed target's report, as `ferry push` and `ferry status ID` show it.
  for (const t of s.targets.filter((target) => !target.ok && target.error)) {
    for (const text of failureLines(fromOutcome(s.service, t))) line(io.stdout, text);
  }
}
