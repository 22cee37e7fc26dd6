import { hostname } from 'node:os';
import { ImageBuilder, ImageStore, createDockerClient } from '@ferry/docker';
import { RegistryClient } from '@ferry/auth';
import { JetStreamPublisher, NullSink, type EventSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { type CompressionChoice, loadSenderConfig, buildBeforePush, DEFAULT_PARALLEL, pushMany, type FanoutDeps, type FanoutRequest, type FanoutResult, desiredRecorder, type CompressionDecision, push, type PushResult, DEFAULT_BACKOFF, isSelector, resolveTargets } from '@ferry/sender';
import { COMPRESSIONS, FerryError, HealthCheckSchema, type HealthCheck } from '@ferry/protocol';
import { BUILD_OPTIONS, buildRequestFrom } from './build.ts';
import { SERVICE_OPTIONS, parse, parseDurationFlag, parseInteger, serviceSpecFromFlags } from './args.ts';
import { line, type Io } from './io.ts';
import { oneLine } from './terminal.ts';
import { failureLines, fromTarget } from './failure.ts';
import { createProgress, formatBytes, formatMs, type Progress } from './progress.ts';
import { scavengePeriodically } from '@ferry/memory';

/** `ferry push`: what it does and takes is its help text, in help.ts. */
export async function pushCommand(argv: string[], io: Io): Promise<number> {
  // As with `docker run`, what follows "--" is the container's command, however it looks.
  const dash = argv.indexOf('--');
  const args = dash < 0 ? argv : argv.slice(0, dash);
  const { values, positionals } = parse(args, {
    to: { type: 'string', multiple: true }, 'host-key': { type: 'string' }, parallel: { type: 'string' }, retries: { type: 'string' }, name: { type: 'string' }, health: { type: 'string' },
    'health-retries': { type: 'string' }, 'health-interval': { type: 'string' },
    'health-timeout': { type: 'string' }, 'health-start-period': { type: 'string' },
    ...SERVICE_OPTIONS, compression: { type: 'string' },
    json: { type: 'boolean' }, 'resumable-threshold': { type: 'string' }, 'no-layer-negotiation': { type: 'boolean' },
    'no-stream': { type: 'boolean' }, 'no-layer-store': { type: 'boolean' },
    build: { type: 'string' }, ...BUILD_OPTIONS,
  }, 1);
  const image = positionals[0];
  if (!image) throw new FerryError('FERRY_ERR_USAGE', { message: 'IMAGE is required (e.g. ferry push myapp:1.2 --to http://host:7701 --name web)' });
  if (!values.to?.length) throw new FerryError('FERRY_ERR_USAGE', { message: '--to URL is required' });
  if (!values.name) throw new FerryError('FERRY_ERR_USAGE', { message: '--name SERVICE is required' });
  const compression = (values.compression ?? 'auto') as CompressionChoice;
  if (compression !== 'auto' && !COMPRESSIONS.includes(compression)) throw new FerryError('FERRY_ERR_USAGE', { message: `--compression must be auto or one of ${COMPRESSIONS.join(', ')}` });
  const health = healthFrom(values.health, {
    retries: values['health-retries'], interval: values['health-interval'],
    timeout: values['health-timeout'], startPeriod: values['health-start-period'],
  });
  const service = serviceSpecFromFlags(values.name, values, dash < 0 ? [] : argv.slice(dash + 1), health, io.env);
  if (!values.build && (values.file || values['build-arg'] || values['max-image-size'])) throw new FerryError('FERRY_ERR_USAGE', { message: '--file, --build-arg and --max-image-size need --build CONTEXT' });
  const interrupt = new AbortController();
  const buildRequest = values.build ? { ...buildRequestFrom(values.build, image, values), signal: interrupt.signal } : undefined;
  const config = loadSenderConfig(io.env);
  const hostKey = values['host-key'];
  if (hostKey !== undefined) {
    if (values.to.length !== 1 || isSelector(values.to[0] ?? '')) throw new FerryError('FERRY_ERR_USAGE', { message: '--host-key goes with one --to URL (a selector\'s hosts carry the keys the registry enrolled)' });
    if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(hostKey)) throw new FerryError('FERRY_ERR_USAGE', { message: `--host-key ${hostKey}: expected a key fingerprint, SHA256: and 43 base64 characters` });
  }
  const resolved = (await resolveTargets(values.to, { registryUrl: config.registryUrl, credentials: config.credentials }))
    .map((t) => (hostKey === undefined ? t : { ...t, hostKey }));
  const targets = resolved.map((t) => t.url);
  const desired = config.registryUrl ? desiredRecorder(new RegistryClient(config.registryUrl, config.credentials), (text) => line(io.stderr, text)) : undefined;

  const logger = createLogger({ level: 'warn', name: 'ferry', destination: io.stderr });
  const events: EventSink = config.natsUrl
    ? await JetStreamPublisher.connect({ url: config.natsUrl, logger, name: 'ferry-sender' })
    : new NullSink({ logger });
  const progress = createProgress(io.stderr, { json: values.json === true, targets, service: values.name });
  const docker = createDockerClient(config.dockerHost);
  const source = `ferry://sender/${hostname()}`;
  if (targets.length > 1 && buildRequest) throw new FerryError('FERRY_ERR_USAGE', { message: '--build works with one --to; build first, then push to several targets' });
  const attempts = parseInteger('retries', values.retries, 1, 100);
  const transfer = {
    image, compression, negotiateLayers: values['no-layer-negotiation'] !== true,
    ...(values['no-stream'] ? { stream: false } : {}),
    ...(values['no-layer-store'] ? { layerStore: false } : {}),
    resumableThreshold: parseInteger('resumable-threshold', values['resumable-threshold'], 1, Number.MAX_SAFE_INTEGER),
    service,
  };
  const deps = { images: new ImageStore(docker), events, credentials: config.credentials, source, ...(desired ? { desired } : {}) };
  // The one-target push: its own summary, and its failure thrown for the error report.
  const pushOne = async (): Promise<number | undefined> => {
    const result = await push({
      ...(buildRequest ? {
        prepare: buildBeforePush(buildRequest, {
          builder: new ImageBuilder(docker), images: new ImageStore(docker), events, source, service: service.name,
          onLog: (text: string) => line(io.stderr, values.json ? JSON.stringify({ progress: 'build', log: text }) : text),
        }),
      } : {}),
      ...transfer, to: targets[0] ?? '', hostKey: resolved[0]?.hostKey, signal: interrupt.signal,
      // One attempt at one target unless told otherwise: a failure is reported at once (a call a
      // lost connection or a restarting receiver cut short is still sent again within it).
      policy: { ...DEFAULT_BACKOFF, attempts: attempts ?? 1 },
    }, {
      ...deps,
      onStage: (stage, { bytes }) => {
        if (stage === 'package') progress.stage('package', { image, compression });
        if (stage === 'transfer') progress.stage('transfer', { bytes: bytes ?? 0 });
        if (stage === 'deploy') progress.deploying(targets[0] ?? '');
      },
      onProgress: (sent, total) => progress.sent(targets[0] ?? '', sent, total),
      onDeployState: (state, check) => progress.deployState(targets[0] ?? '', state, check),
      onRetry: (attempt, delayMs, err) => progress.retrying(targets[0] ?? '', attempt, delayMs, err instanceof Error ? err.message : String(err)),
    });
    if (interrupt.signal.aborted) return undefined;
    progress.done(targets[0] ?? '', result.deployment.state === 'COMPLETED', result.deployment.state);
    progress.close();
    if (values.json) line(io.stdout, JSON.stringify({ ok: true, ...result }));
    else printSummary(io, result);
    return 0;
  };
  const stopScavenging = scavengePeriodically();
  const stopOnSigint = onSigint(interrupt, progress);
  try {
    const outcome = await untilInterrupted(interrupt.signal, async () => {
      // One target or many, the push is the same (deliver.ts); only the summary differs.
      if (targets.length > 1) {
        return await fanoutCommand(io, progress, {
          ...transfer, targets: resolved, json: values.json === true, signal: interrupt.signal,
          parallel: parseInteger('parallel', values.parallel, 1, 100) ?? DEFAULT_PARALLEL,
          attempts: attempts ?? DEFAULT_BACKOFF.attempts,
        }, deps);
      }
      return await pushOne();
    });
    if (outcome !== undefined) return outcome;
    const left = progress.interrupted();
    if (values.json) line(io.stdout, JSON.stringify({ ok: false, interrupted: true, targets: left.map(({ text: _text, ...target }) => target) }));
    return INTERRUPTED_EXIT;
  } finally {
    stopOnSigint();
    stopScavenging();
    progress.close();
    await events.close();
  }
}

/** The exit code after Ctrl-C, as a shell reports a command SIGINT ended (128 + 2). */
const INTERRUPTED_EXIT = 130;

/**
 * After Ctrl-C, what is in flight gets this long to let go (a stream's DELETE to its receiver)
 * before the push reports where each target was left; the process exits a moment later whatever
 * still runs then (a package being spooled).
 */
const LET_GO_MS = 6000;

/**
 * Ctrl-C aborts the push through `interrupt` (uploads cut off, streams deleted, no further step).
 * A second one, or the push not letting go in time, ends the process at once, the display ended
 * first. Answers the function that removes the handler.
 */
function onSigint(interrupt: AbortController, progress: Progress): () => void {
  const handler = (): void => {
    if (interrupt.signal.aborted) {
      progress.close();
      process.exit(INTERRUPTED_EXIT);
    }
    interrupt.abort();
    setTimeout(() => process.exit(INTERRUPTED_EXIT), LET_GO_MS + 2000).unref();
  };
  process.on('SIGINT', handler);
  return () => process.off('SIGINT', handler);
}

/**
 * `work`'s exit code; undefined when the push was interrupted, once `work` let go or LET_GO_MS
 * passed. A failure after the interruption is the interruption's, not reported as the push's.
 */
async function untilInterrupted(signal: AbortSignal, work: () => Promise<number | undefined>): Promise<number | undefined> {
  const running = work();
  const aborted = new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  try {
    const code = await Promise.race([running, aborted.then(() => undefined)]);
    if (!signal.aborted) return code;
  } catch (err) {
    if (!signal.aborted) throw err;
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([running.catch(() => undefined), new Promise<void>((resolve) => { timer = setTimeout(resolve, LET_GO_MS); })]);
  clearTimeout(timer);
  return undefined;
}

interface HealthTimingArgs {
  retries: string | undefined;
  interval: string | undefined;
  timeout: string | undefined;
  startPeriod: string | undefined;
}

function healthFrom(target: string | undefined, timing: HealthTimingArgs): HealthCheck | undefined {
  if (target === undefined) {
    if (Object.values(timing).some((v) => v !== undefined)) throw new FerryError('FERRY_ERR_USAGE', { message: '--health-retries, --health-interval, --health-timeout and --health-start-period need --health' });
    return undefined;
  }
  const timings = {
    ...(timing.retries !== undefined ? { retries: parseInteger('health-retries', timing.retries, 1, 1000) } : {}),
    ...(timing.interval !== undefined ? { intervalMs: parseDurationFlag('health-interval', timing.interval, 'ms', 50, 60_000) } : {}),
    ...(timing.timeout !== undefined ? { timeoutMs: parseDurationFlag('health-timeout', timing.timeout, 'ms', 50, 60_000) } : {}),
    ...(timing.startPeriod !== undefined ? { startPeriodMs: parseDurationFlag('health-start-period', timing.startPeriod, 'ms', 0, 600_000) } : {}),
  };
  const tcp = /^tcp:\/\/(\[[0-9A-Fa-f:.]+\]|[^:/[\]]+):(\d{1,5})$/.exec(target);
  const candidate = target === 'cmd'
    ? { type: 'cmd', ...timings }
    : tcp
      ? { type: 'tcp', host: (tcp[1] ?? '').replace(/^\[|\]$/g, ''), port: Number(tcp[2]), ...timings }
      : { type: 'http', url: target, ...timings };
  const parsed = HealthCheckSchema.safeParse(candidate);
  if (!parsed.success) throw new FerryError('FERRY_ERR_USAGE', { message: `--health ${target}: expected an http(s):// URL, tcp://HOST:PORT (as seen from the target host) or cmd` });
  return parsed.data;
}

function printSummary(io: Io, r: PushResult): void {
  const t = r.timings;
  const rate = t.transfer > 0 ? `${formatBytes(r.bytes.sent / (t.transfer / 1000))}/s` : '-';
  line(io.stdout, oneLine(`✔ ${r.service} is running ${r.image} on ${r.host}`));
  line(io.stdout, `  deployment  ${r.deploymentId}`);
  line(io.stdout, `  image       ${r.imageId}`);
  line(io.stdout, `  bytes       ${formatBytes(r.bytes.image)} image → ${formatBytes(r.bytes.package)} ${r.compression} package, ${formatBytes(r.bytes.sent)} sent (${rate})`);
  line(io.stdout, oneLine(`  compression ${compressionText(r.compressionChoice)}`));
  line(io.stdout, `  layers      ${r.layers.omitted.length > 0 ? `${r.layers.present} of ${r.layers.total} already on the host, ${r.layers.omitted.length} left out of the package` : `all ${r.layers.total} sent`}${r.layers.fullAfterRefusal ? ' (the partial package was refused; sent whole)' : ''}`);
  line(io.stdout, `  sender      package ${formatMs(t.package)} (${r.exportedBy === 'layer-store' ? 'read from the layer store' : 'docker save'} ${formatMs(t.save)} · compress ${formatMs(t.compress)} · hash ${formatMs(t.hash)}, overlapping) · send ${formatMs(t.send)} · total ${formatMs(t.total)}`);
  line(io.stdout, `  receiver    receive ${formatMs(t.receiver.receive)} · load ${formatMs(t.receiver.load)} · start ${formatMs(t.receiver.deploy)} · health ${formatMs(t.receiver.health)} · total ${formatMs(t.receiver.total)}`);
}

function compressionText(c: CompressionDecision): string {
  return `${c.compression}${c.level === undefined ? '' : ` ${c.level}`}: ${c.reason}`;
}

interface FanoutArgs extends Omit<FanoutRequest, 'policy'> {
  json: boolean;
  attempts: number;
}

/** Several targets: one line per target, and exit 1 naming each failed host and why; undefined once interrupted. */
async function fanoutCommand(io: Io, progress: Progress, args: FanoutArgs, deps: FanoutDeps): Promise<number | undefined> {
  const { json, attempts, ...request } = args;
  const result = await pushMany({ ...request, policy: { ...DEFAULT_BACKOFF, attempts } }, {
    ...deps,
    onStage: (stage, { bytes }) => {
      if (stage === 'package') progress.stage('package', { image: request.image, compression: request.compression });
      else progress.stage('transfer', { bytes: bytes ?? 0 });
    },
    onProgress: (url, position, total) => progress.sent(url, position, total),
    onSent: (url) => progress.deploying(url),
    onDeployState: (url, state, check) => progress.deployState(url, state, check),
    onDone: (target) => {
      // Cut off by Ctrl-C: its line keeps where it was, for the report of the interruption.
      if (target.error?.code === 'FERRY_ERR_SENDER_INTERRUPTED') return;
      progress.done(target.url, target.ok, target.error ? `${target.state} ${target.error.code}` : target.state);
    },
    onRetry: (url, attempt, delayMs, err) => progress.retrying(url, attempt, delayMs, err instanceof Error ? err.message : String(err)),
  });
  if (request.signal?.aborted) return undefined;
  progress.close();
  if (json) line(io.stdout, JSON.stringify(result));
  else printFanoutSummary(io, result);
  return result.ok ? 0 : 1;
}

function printFanoutSummary(io: Io, r: FanoutResult): void {
  const failed = r.targets.filter((t) => !t.ok);
  line(io.stdout, `${failed.length === 0 ? '✔' : '✖'} ${r.service}: ${r.image} on ${r.targets.length - failed.length}/${r.targets.length} targets`);
  line(io.stdout, `  package     ${formatBytes(r.bytes.image)} image → ${formatBytes(r.bytes.package)} ${r.compression} package, image read ${r.reads.exports === 1 ? 'once' : `${r.reads.exports} times`} in ${formatMs(r.timings.package)}`);
  line(io.stdout, oneLine(`  compression ${compressionText(r.compressionChoice)}`));
  for (const t of r.targets) {
    line(io.stdout, oneLine(`  ${t.ok ? '✔' : '✖'} ${t.host ?? t.url}  ${t.state}  ${formatBytes(t.bytes.sent)} sent  ${formatMs(t.durationMs)}  ${t.error ? t.error.code : '-'}  (${t.url}, deployment ${t.deploymentId}, ${t.attempts} attempt${t.attempts === 1 ? '' : 's'})`));
  }
  // Each failed target's report, as `ferry status ID` shows it later.
  for (const t of failed) for (const text of failureLines(fromTarget(r.service, t))) line(io.stdout, text);
}
