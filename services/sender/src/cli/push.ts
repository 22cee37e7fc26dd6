import { hostname } from 'node:os';
import type { WriteStream } from 'node:tty';
import { ImageBuilder, ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, type EventSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { COMPRESSIONS, FerryError, HealthCheckSchema, type Compression, type HealthCheck } from '@ferry/protocol';
import { loadSenderConfig } from '../config.ts';
import { buildBeforePush } from '../build.ts';
import { DEFAULT_PARALLEL, pushMany, type FanoutDeps, type FanoutRequest, type FanoutResult } from '../fanout.ts';
import { push, type PushResult } from '../push.ts';
import { DEFAULT_BACKOFF } from '../retry.ts';
import { BUILD_OPTIONS, buildRequestFrom } from './build.ts';
import { parse, parseEnvPairs, parseInteger } from './args.ts';
import { line, type Io } from './io.ts';
import { ProgressBar, formatBytes, formatMs } from './progress.ts';

export const PUSH_HELP = `Usage: ferry push IMAGE --to URL [--to URL …] --name SERVICE [options]

Packages IMAGE from the build engine (DOCKER_HOST), uploads it signed to the receiver at URL, and
deploys it there as the container SERVICE. With several --to, the package is built once and sent
to every receiver, each retried on its own; the exit code is 0 only if every target succeeded.

Options:
  --to URL                 receiver base URL, e.g. http://10.0.0.5:7701 (required; repeat for more)
  --parallel N             targets served at once (default 5)
  --retries N              attempts per target, with backoff, after a lost connection, a
                           restarting receiver or a 5xx (default 8; given alone, also makes a
                           single-target push use the retrying fan-out path)
  --name SERVICE           service (and container) name on the target (required)
  --health URL|tcp://HOST:PORT|cmd
                           health check run from the target host: an HTTP URL (2xx/3xx passes),
                           a TCP connect, or cmd = the image's own HEALTHCHECK, run by Docker
  --health-retries N       probes before the deployment fails and rolls back (default 30)
  --health-interval MS     pause between probes (default 1000)
  --health-timeout MS      limit of one probe (default 2000)
  --health-start-period MS wait before the first probe (default 0)
  --env KEY=VALUE          environment variable for the container; repeat for more
  --network host|bridge|none   container network (default bridge)
  --compression zstd|gzip|none (default zstd)
  --resumable-threshold BYTES  packages of at least BYTES go over the resumable upload, which
                           resumes after a cut connection (default 67108864 = 64 MiB)
  --build CONTEXT          first build the directory CONTEXT into IMAGE on the build engine
                           (events build.started / build.completed under the deployment id)
  -f, --file PATH          with --build: Dockerfile, relative to CONTEXT
  --build-arg KEY=VALUE    with --build: build-time variable; repeat for more
  --max-image-size BYTES   with --build: refuse a built image larger than BYTES (default 2 GiB)
  --json                   print one JSON result instead of text

Environment: FERRY_KEY_ID and FERRY_KEY (the signing key), DOCKER_HOST (build engine),
FERRY_NATS_URL (optional: publish the sender's events).`;

export async function pushCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    to: { type: 'string', multiple: true }, parallel: { type: 'string' }, retries: { type: 'string' }, name: { type: 'string' }, health: { type: 'string' },
    'health-retries': { type: 'string' }, 'health-interval': { type: 'string' },
    'health-timeout': { type: 'string' }, 'health-start-period': { type: 'string' },
    env: { type: 'string', multiple: true }, network: { type: 'string' }, compression: { type: 'string' },
    json: { type: 'boolean' }, 'resumable-threshold': { type: 'string' },
    build: { type: 'string' }, ...BUILD_OPTIONS,
  }, 1);
  const image = positionals[0];
  if (!image) throw new FerryError('FERRY_ERR_USAGE', { message: 'IMAGE is required (e.g. ferry push myapp:1.2 --to http://host:7701 --name web)' });
  if (!values.to?.length) throw new FerryError('FERRY_ERR_USAGE', { message: '--to URL is required' });
  if (!values.name) throw new FerryError('FERRY_ERR_USAGE', { message: '--name SERVICE is required' });
  const compression = (values.compression ?? 'zstd') as Compression;
  if (!COMPRESSIONS.includes(compression)) throw new FerryError('FERRY_ERR_USAGE', { message: `--compression must be one of ${COMPRESSIONS.join(', ')}` });
  const network = values.network ?? 'bridge';
  if (network !== 'host' && network !== 'bridge' && network !== 'none') throw new FerryError('FERRY_ERR_USAGE', { message: '--network must be host, bridge or none' });
  const health = healthFrom(values.health, {
    retries: values['health-retries'], interval: values['health-interval'],
    timeout: values['health-timeout'], startPeriod: values['health-start-period'],
  });
  if (!values.build && (values.file || values['build-arg'] || values['max-image-size'])) throw new FerryError('FERRY_ERR_USAGE', { message: '--file, --build-arg and --max-image-size need --build CONTEXT' });
  const buildRequest = values.build ? buildRequestFrom(values.build, image, values) : undefined;
  const config = loadSenderConfig(io.env);

  const logger = createLogger({ level: 'warn', name: 'ferry', destination: io.stderr });
  const events: EventSink = config.natsUrl
    ? await JetStreamPublisher.connect({ url: config.natsUrl, logger, name: 'ferry-sender' })
    : new NullSink({ logger });
  const showProgress = !values.json && io.stderr.isTTY === true;
  let bar: ProgressBar | undefined;
  const docker = createDockerClient(config.dockerHost);
  const source = `ferry://sender/${hostname()}`;
  const fanout = values.to.length > 1 || values.parallel !== undefined || values.retries !== undefined;
  if (fanout && buildRequest) throw new FerryError('FERRY_ERR_USAGE', { message: '--build works with one --to; build first, then push to several targets' });
  try {
    if (fanout) {
      return await fanoutCommand(io, {
        image, targets: values.to, compression, json: values.json === true,
        parallel: parseInteger('parallel', values.parallel, 1, 100) ?? DEFAULT_PARALLEL,
        attempts: parseInteger('retries', values.retries, 1, 100) ?? DEFAULT_BACKOFF.attempts,
        resumableThreshold: parseInteger('resumable-threshold', values['resumable-threshold'], 1, Number.MAX_SAFE_INTEGER),
        service: { name: values.name, env: parseEnvPairs(values.env), network, ...(health ? { health } : {}) },
      }, { images: new ImageStore(docker), events, credentials: config.credentials, source });
    }
    const result = await push({
      ...(buildRequest ? {
        prepare: buildBeforePush(buildRequest, {
          builder: new ImageBuilder(docker), images: new ImageStore(docker), events, source, service: values.name,
          ...(values.json ? {} : { onLog: (text: string) => line(io.stderr, text) }),
        }),
      } : {}),
      image, to: values.to[0] ?? '', compression,
      resumableThreshold: parseInteger('resumable-threshold', values['resumable-threshold'], 1, Number.MAX_SAFE_INTEGER),
      service: { name: values.name, env: parseEnvPairs(values.env), network, ...(health ? { health } : {}) },
    }, {
      images: new ImageStore(docker),
      events, credentials: config.credentials, source,
      onStage: (stage, { bytes }) => {
        if (!showProgress) return;
        if (stage === 'package') io.stderr.write(`packaging ${image} (${compression})…\n`);
        if (stage === 'transfer' && bytes !== undefined) bar = new ProgressBar(io.stderr as WriteStream, bytes, 'sending');
        if (stage === 'deploy') { bar?.finish(); bar = undefined; io.stderr.write('deploying…\n'); }
      },
      onProgress: (sent) => bar?.update(sent),
    });
    if (values.json) line(io.stdout, JSON.stringify({ ok: true, ...result }));
    else printSummary(io, result);
    return 0;
  } finally {
    if (bar) io.stderr.write('\n');
    await events.close();
  }
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
    ...(timing.interval !== undefined ? { intervalMs: parseInteger('health-interval', timing.interval, 50, 60_000) } : {}),
    ...(timing.timeout !== undefined ? { timeoutMs: parseInteger('health-timeout', timing.timeout, 50, 60_000) } : {}),
    ...(timing.startPeriod !== undefined ? { startPeriodMs: parseInteger('health-start-period', timing.startPeriod, 0, 600_000) } : {}),
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
  line(io.stdout, `✔ ${r.service} is running ${r.image} on ${r.host}`);
  line(io.stdout, `  deployment  ${r.deploymentId}`);
  line(io.stdout, `  image       ${r.imageId}`);
  line(io.stdout, `  bytes       ${formatBytes(r.bytes.image)} image → ${formatBytes(r.bytes.package)} ${r.compression} package, ${formatBytes(r.bytes.sent)} sent (${rate})`);
  line(io.stdout, `  sender      package ${formatMs(t.package)} · transfer ${formatMs(t.transfer)} · total ${formatMs(t.total)}`);
  line(io.stdout, `  receiver    receive ${formatMs(t.receiver.receive)} · load ${formatMs(t.receiver.load)} · start ${formatMs(t.receiver.deploy)} · health ${formatMs(t.receiver.health)} · total ${formatMs(t.receiver.total)}`);
}

interface FanoutArgs extends Omit<FanoutRequest, 'policy'> {
  json: boolean;
  attempts: number;
}

/** Several targets: one line per target, and exit 1 naming each failed host and why. */
async function fanoutCommand(io: Io, args: FanoutArgs, deps: FanoutDeps): Promise<number> {
  const { json, attempts, ...request } = args;
  const result = await pushMany({ ...request, policy: { ...DEFAULT_BACKOFF, attempts } }, {
    ...deps,
    onRetry: (url, attempt, delayMs, err) => {
      if (!json) line(io.stderr, `  retrying ${url} (attempt ${attempt + 1}) in ${formatMs(delayMs)}: ${err instanceof Error ? err.message : String(err)}`);
    },
  });
  if (json) line(io.stdout, JSON.stringify(result));
  else printFanoutSummary(io, result);
  return result.ok ? 0 : 1;
}

function printFanoutSummary(io: Io, r: FanoutResult): void {
  const failed = r.targets.filter((t) => !t.ok);
  line(io.stdout, `${failed.length === 0 ? '✔' : '✖'} ${r.service}: ${r.image} on ${r.targets.length - failed.length}/${r.targets.length} targets`);
  line(io.stdout, `  package     ${formatBytes(r.bytes.image)} image → ${formatBytes(r.bytes.package)} ${r.compression} package, built once in ${formatMs(r.timings.package)}`);
  for (const t of r.targets) {
    line(io.stdout, `  ${t.ok ? '✔' : '✖'} ${t.host ?? t.url}  ${t.state}  ${formatBytes(t.bytes.sent)} sent  ${formatMs(t.durationMs)}  ${t.error ? t.error.code : '-'}  (${t.url}, deployment ${t.deploymentId}, ${t.attempts} attempt${t.attempts === 1 ? '' : 's'})`);
  }
  for (const t of failed) line(io.stdout, `  failed: ${t.host ?? t.url} — ${t.error ? `${t.error.message} [${t.error.code}]` : `deployment ${t.state}`}`);
}
