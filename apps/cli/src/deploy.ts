import { hostname } from 'node:os';
import { basename, dirname, resolve } from 'node:path';
import { RegistryClient } from '@ferry/auth';
import { ImageBuilder, ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, type EventSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import type { ReleaseRecord } from '@ferry/protocol';
import { loadSenderConfig, runDeployment, type ReleaseStep, type ServiceOutcome, loadDeploymentFile, type DeploymentDocument, desiredRecorder, DEFAULT_PARALLEL, DEFAULT_BACKOFF } from '@ferry/sender';
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
    'no-rollback': { type: 'boolean' },
  });
  const json = values.json === true;
  const parallel = parseInteger('parallel', values.parallel, 1, 100) ?? DEFAULT_PARALLEL;
  const attempts = parseInteger('retries', values.retries, 1, 100) ?? DEFAULT_BACKOFF.attempts;
  const only = (values.only ?? []).flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean);
  const env = envFromFlags(values, io.env);
  const file = values.file ?? 'ferry.yaml';
  const document = withEnv(await loadDeploymentFile(file, io.env), env);
  // A file without `name` files its releases under its directory's name, as Compose does.
  const project = document.name ?? projectName(basename(dirname(resolve(file))));
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
        if (service.state === 'pending' || service.state === 'building' || service.state === 'delivering') {
          if (!json) warn(`${service.service}: ${service.state}…`);
          return;
        }
        if (json) line(io.stdout, JSON.stringify(service));
        else if (service.state === 'succeeded' || service.state === 'failed') printService(io, service);
      },
      ...(json ? {} : { onRelease: (step: ReleaseStep) => printStep(io, step) }),
      onWarning: (text) => warn(`warning: ${text}`),
    }, { only, parallel, attempts, project, rollback: values['no-rollback'] !== true });
    const failed = outcome.services.filter((s) => !s.ok).map((s) => s.service);
    const release = outcome.release;
    if (json) {
      line(io.stdout, JSON.stringify({ ok: outcome.ok, runId: outcome.runId, releaseId: release?.id, services: outcome.services.length, failed, release }));
    } else {
      if (release) printOutcomes(io, release);
      if (outcome.ok) line(io.stdout, `✔ deployed ${outcome.services.length} service${outcome.services.length === 1 ? '' : 's'} (release ${release?.id ?? outcome.runId})`);
      else line(io.stdout, oneLine(`✖ ${release?.error ? `${release.error.message} [${release.error.code}]` : `failed: ${failed.join(', ')}`}; release ${release?.state ?? 'failed'}`));
    }
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

/** A directory name as a project name: what `name:` would accept, or `default`. */
function projectName(directory: string): string {
  const name = directory.toLowerCase().replace(/[^a-z0-9_-]/g, '-').replace(/^[-_]+/, '').slice(0, 63);
  return name === '' ? 'default' : name;
}

/** The release's steps as they happen: its plan, each phase, the rollback. */
function printStep(io: Io, step: ReleaseStep): void {
  switch (step.kind) {
    case 'planned': {
      const r = step.record;
      const order = r.phases.map((name, i) => `${name} [${r.services.filter((s) => s.phase === i).map((s) => s.name).join(', ')}]`).join(' → ');
      line(io.stdout, oneLine(`release ${r.id} (${r.project}): ${order}`));
      break;
    }
    case 'phase':
      if (step.state === 'started') line(io.stderr, oneLine(`phase ${step.name}: ${step.services.join(', ')}…`));
      else if (step.state === 'completed') line(io.stdout, oneLine(`✔ phase ${step.name}: ${step.services.join(', ')} deployed on every host`));
      else if (step.state === 'failed') line(io.stdout, oneLine(`✖ phase ${step.name} failed: the release halts`));
      else line(io.stdout, oneLine(`- phase ${step.name} skipped: ${step.services.join(', ')} neither built nor deployed`));
      break;
    case 'rollback-started':
      line(io.stdout, oneLine(`rolling the release back${step.to ? ` to ${step.to}` : ''} on ${step.hosts.join(', ')}, last phase first…`));
      break;
    case 'rolled-back':
      line(io.stdout, oneLine(step.ok
        ? `  ↩ ${step.service} on ${step.host}: rolled back`
        : `  ✖ ${step.service} on ${step.host}: not rolled back: ${step.error?.message ?? 'unknown error'}${step.error ? ` [${step.error.code}]` : ''}`));
      break;
    case 'finished':
      break;
  }
}

/** Per host per service, how the release went: one row per host, one column per service. */
function printOutcomes(io: Io, release: ReleaseRecord): void {
  const services = release.services.map((s) => s.name);
  const hosts = Object.keys(release.outcomes);
  if (hosts.length === 0) return;
  const cells = [['host', ...services], ...hosts.map((host) => [host, ...services.map((s) => release.outcomes[host]?.[s] ?? '')])];
  const widths = (cells[0] ?? []).map((_, i) => Math.max(...cells.map((row) => (row[i] ?? '').length)));
  line(io.stdout, oneLine(`release ${release.id}: ${release.state}`));
  for (const row of cells) line(io.stdout, oneLine(`  ${row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd()}`));
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
