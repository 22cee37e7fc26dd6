import { homedir, hostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { RegistryClient } from '@ferry/auth';
import { ImageBuilder, ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, type EventSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { FerryError, RELEASE_ID_PATTERN, type ReleaseRecord } from '@ferry/protocol';
import {
  loadSenderConfig, runDeployment, continueDeployment, PausedReleases, REFUSED_TO_GO_ON, type DeployDeps, type DeploymentOutcome, type ReleaseStep, type ServiceOutcome,
  loadDeploymentFile, type DeploymentDocument, desiredRecorder, DEFAULT_PARALLEL, DEFAULT_BACKOFF,
} from '@ferry/sender';
import { envFromFlags, parse, parseInteger } from './args.ts';
import { failureLines, fromOutcome } from './failure.ts';
import { line, type Io } from './io.ts';
import { formatMs } from './progress.ts';
import { oneLine } from './terminal.ts';

const DEPLOY_FLAGS = {
  file: { type: 'string', short: 'f' }, parallel: { type: 'string' }, retries: { type: 'string' }, json: { type: 'boolean' },
  env: { type: 'string', short: 'e', multiple: true }, 'env-file': { type: 'string', multiple: true }, 'no-rollback': { type: 'boolean' },
} as const;

/** `ferry deploy`: what it does and takes is its help text, in help.ts. */
export async function deployCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { ...DEPLOY_FLAGS, only: { type: 'string', multiple: true } });
  const only = (values.only ?? []).flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean);
  const file = values.file ?? 'ferry.yaml';
  const document = withEnv(await loadDeploymentFile(file, io.env), envFromFlags(values, io.env));
  const project = fileProject(document, file);
  return await runAndReport(io, values, file, (deps, options) => runDeployment(document, deps, { ...options, only, project }));
}

/** `ferry release continue ID`: what it does and takes is its help text, in help.ts. */
export async function continueCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, DEPLOY_FLAGS, 1);
  const id = positionals[0];
  if (id === undefined || !RELEASE_ID_PATTERN.test(id)) {
    throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry release continue: name the paused release, rel-YYYYMMDDTHHMMSSZ-<8 hex> (ferry deploy printed it)' });
  }
  const file = values.file ?? 'ferry.yaml';
  const document = withEnv(await loadDeploymentFile(file, io.env), envFromFlags(values, io.env));
  const store = pausedStore(io);
  const paused = await store.take(id);
  let started = false;
  try {
    return await runAndReport(io, values, file, (deps, options) => {
      started = true;
      return continueDeployment(document, paused, deps, options);
    }, store);
  } catch (err) {
    // Refused before it went on (another file, a moved image tag, a host now over budget): it stays paused as it was.
    if (!started || (err instanceof FerryError && REFUSED_TO_GO_ON.has(err.code))) await store.giveBack(id).catch(() => undefined);
    throw err;
  }
}

/**
 * Where a release paused by `pause: manual` waits for `ferry release continue`: under
 * FERRY_DATA_DIR, else the user's state directory (XDG_STATE_HOME, ~/.local/state) — on the
 * machine that ran `ferry deploy`.
 */
function pausedStore(io: Io): PausedReleases {
  const base = io.env.FERRY_DATA_DIR || join(io.env.XDG_STATE_HOME || join(io.env.HOME || homedir(), '.local', 'state'), 'ferry');
  return new PausedReleases(join(base, 'paused-releases'));
}

interface RunFlags {
  file?: string | undefined;
  parallel?: string | undefined;
  retries?: string | undefined;
  json?: boolean | undefined;
  'no-rollback'?: boolean | undefined;
}

/** Runs a release (a new one, or a paused one going on) and prints its steps, its outcomes and how it ended. */
async function runAndReport(
  io: Io, values: RunFlags, file: string,
  start: (deps: DeployDeps, options: { parallel: number; attempts: number; rollback: boolean }) => Promise<DeploymentOutcome>,
  store: PausedReleases = pausedStore(io),
): Promise<number> {
  const json = values.json === true;
  const parallel = parseInteger('parallel', values.parallel, 1, 100) ?? DEFAULT_PARALLEL;
  const attempts = parseInteger('retries', values.retries, 1, 100) ?? DEFAULT_BACKOFF.attempts;
  const config = loadSenderConfig(io.env);

  const logger = createLogger({ level: 'warn', name: 'ferry', destination: io.stderr });
  const events: EventSink = config.natsUrl
    ? await JetStreamPublisher.connect({ url: config.natsUrl, logger, name: 'ferry-sender' })
    : new NullSink({ logger });
  const docker = createDockerClient(config.dockerHost);
  const warn = (text: string): void => line(io.stderr, text);
  const shown = new Map<string, string>();
  try {
    const outcome = await start({
      images: new ImageStore(docker), builder: new ImageBuilder(docker), events,
      credentials: config.credentials, source: `ferry://sender/${hostname()}`, senderHost: hostname(),
      registryUrl: config.registryUrl, paused: store,
      ...(config.registryUrl ? { desired: desiredRecorder(new RegistryClient(config.registryUrl, config.credentials), warn) } : {}),
      onRetry: (url, attempt, delayMs, err) => {
        if (!json) warn(`  retrying ${url} (attempt ${attempt + 1}) in ${formatMs(delayMs)}: ${err instanceof Error ? err.message : String(err)}`);
      },
      ...(json ? {} : { onBuildLog: (service: string, text: string) => warn(`  [${service}] ${text}`) }),
      onUpdate: (service) => {
        // Called again for every finished target: each state is told once.
        if (shown.get(service.service) === service.state) return;
        shown.set(service.service, service.state);
        if (service.state === 'pending') return;
        if (service.state === 'building' || service.state === 'delivering') {
          if (!json) warn(`${service.service}: ${service.state}…`);
          return;
        }
        if (json) line(io.stdout, JSON.stringify(service));
        else if (service.state === 'succeeded' || service.state === 'failed') printService(io, service);
      },
      ...(json ? {} : { onRelease: (step: ReleaseStep) => printStep(io, step) }),
      onWarning: (text) => warn(`warning: ${text}`),
    }, { parallel, attempts, rollback: values['no-rollback'] !== true });
    const failed = outcome.services.filter((s) => !s.ok).map((s) => s.service);
    const release = outcome.release;
    const paused = release?.state === 'paused';
    if (json) {
      line(io.stdout, JSON.stringify({ ok: outcome.ok, runId: outcome.runId, releaseId: release?.id, services: outcome.services.length, failed, ...(paused ? { paused: true } : {}), release }));
    } else {
      if (release) printOutcomes(io, release);
      if (paused) {
        line(io.stdout, oneLine(`⏸ release ${release.id} paused; go on with: ferry release continue ${release.id} -f ${file}`));
      } else if (outcome.ok) {
        line(io.stdout, `✔ deployed ${outcome.services.length} service${outcome.services.length === 1 ? '' : 's'} (release ${release?.id ?? outcome.runId})`);
      } else {
        line(io.stdout, oneLine(`✖ ${release?.error ? `${release.error.message} [${release.error.code}]` : `failed: ${failed.join(', ')}`}; release ${release?.state ?? 'failed'}`));
      }
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

/** The project a deployment file's releases are made in: its `name`, else its directory's name, as Compose does. */
export function fileProject(document: DeploymentDocument, file: string): string {
  return document.name ?? projectName(basename(dirname(resolve(file))));
}

/** A directory name as a project name: what `name:` would accept, or `default`. */
function projectName(directory: string): string {
  const name = directory.toLowerCase().replace(/[^a-z0-9_-]/g, '-').replace(/^[-_]+/, '').slice(0, 63);
  return name === '' ? 'default' : name;
}

/** The release's steps as they happen: its plan, each wave and phase, a pause, the rollback. */
function printStep(io: Io, step: ReleaseStep): void {
  switch (step.kind) {
    case 'planned': {
      const r = step.record;
      const order = r.phases.map((name, i) => `${name} [${r.services.filter((s) => s.phase === i).map((s) => s.name).join(', ')}]`).join(' → ');
      const resumed = step.resumed ? step.waves[step.resumed.wave] : undefined;
      line(io.stdout, oneLine(`release ${r.id} (${r.project}): ${order}${resumed ? `, going on with wave ${resumed.name}` : ''}`));
      if (step.waves.length > 1) line(io.stdout, oneLine(`  waves: ${step.waves.map((w) => `${w.name} [${w.hosts.join(', ')}]`).join(' → ')}`));
      break;
    }
    case 'wave': {
      const hosts = step.hosts.join(', ');
      const sick = step.unhealthy ?? [];
      if (step.state === 'started') line(io.stderr, oneLine(`wave ${step.name}: ${hosts}…`));
      else if (step.state === 'completed') {
        line(io.stdout, oneLine(sick.length === 0
          ? `✔ wave ${step.name}: every phase healthy on ${hosts}`
          : `✔ wave ${step.name}: ${step.hosts.length - sick.length}/${step.hosts.length} hosts healthy; ${sick.join(', ')} unhealthy, within max_unhealthy ${step.allowed ?? 0}`));
      } else if (step.state === 'failed') {
        line(io.stdout, oneLine(`✖ wave ${step.name}: ${sick.length > 0 ? `${sick.join(', ')} unhealthy (max_unhealthy ${step.allowed ?? 0})` : 'stopped'}: the release halts`));
      } else line(io.stdout, oneLine(`- wave ${step.name} skipped: ${hosts} untouched`));
      break;
    }
    case 'phase': {
      const where = step.wave ? ` of wave ${step.wave.name}` : '';
      if (step.state === 'started') line(io.stderr, oneLine(`phase ${step.name}${step.wave ? ` (wave ${step.wave.name})` : ''}: ${step.services.join(', ')}…`));
      else if (step.state === 'completed') line(io.stdout, oneLine(`✔ phase ${step.name}: ${step.services.join(', ')} deployed on every host${where}`));
      else if (step.state === 'failed') line(io.stdout, oneLine(`✖ phase ${step.name}${step.wave ? ` (wave ${step.wave.name})` : ''} failed: the release halts`));
      else line(io.stdout, oneLine(`- phase ${step.name} skipped${step.wave ? ` in wave ${step.wave.name}` : ''}: ${step.services.join(', ')} neither built nor deployed${where ? ' there' : ''}`));
      break;
    }
    case 'paused':
      line(io.stdout, oneLine(step.until
        ? `⏸ pausing before wave ${step.name} until ${step.until}…`
        : `⏸ paused before wave ${step.name}: the release waits for "ferry release continue"`));
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
    // A target its wave has not reached, or the release never got to, is no failure.
    line(io.stdout, oneLine(`  ${t.ok ? '✔' : t.state === 'PENDING' || t.state === 'SKIPPED' ? '-' : '✖'} ${t.host ?? t.url}  ${t.state}${t.error ? `  ${t.error.code}` : ''}  (${t.url}${t.deploymentId ? `, deployment ${t.deploymentId}` : ''})`));
  }
  // Each failed target's report, as `ferry push` and `ferry status ID` show it.
  for (const t of s.targets.filter((target) => !target.ok && target.error)) {
    for (const text of failureLines(fromOutcome(s.service, t))) line(io.stdout, text);
  }
}
