import { hostname } from 'node:os';
import type { WriteStream } from 'node:tty';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, type EventSink } from '@ferry/events';
import { createLogger } from '@ferry/log';
import { COMPRESSIONS, FerryError, HealthCheckSchema, type Compression, type HealthCheck } from '@ferry/protocol';
import { loadSenderConfig } from '../config.ts';
import { push, type PushResult } from '../push.ts';
import { parse, parseEnvPairs, parseInteger } from './args.ts';
import { line, type Io } from './io.ts';
import { ProgressBar, formatBytes, formatMs } from './progress.ts';

export const PUSH_HELP = `Usage: ferry push IMAGE --to URL --name SERVICE [options]

Packages IMAGE from the build engine (DOCKER_HOST), uploads it signed to the receiver at URL, and
deploys it there as the container SERVICE.

Options:
  --to URL                 receiver base URL, e.g. http://10.0.0.5:7701 (required)
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
  --json                   print one JSON result instead of text

Environment: FERRY_KEY_ID and FERRY_KEY (the signing key), DOCKER_HOST (build engine),
FERRY_NATS_URL (optional: publish the sender's events).`;

export async function pushCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    to: { type: 'string' }, name: { type: 'string' }, health: { type: 'string' },
    'health-retries': { type: 'string' }, 'health-interval': { type: 'string' },
    'health-timeout': { type: 'string' }, 'health-start-period': { type: 'string' },
    env: { type: 'string', multiple: true }, network: { type: 'string' }, compression: { type: 'string' },
    json: { type: 'boolean' }, 'resumable-threshold': { type: 'string' },
  }, 1);
  const image = positionals[0];
  if (!image) throw new FerryError('FERRY_ERR_USAGE', { message: 'IMAGE is required (e.g. ferry push myapp:1.2 --to http://host:7701 --name web)' });
  if (!values.to) throw new FerryError('FERRY_ERR_USAGE', { message: '--to URL is required' });
  if (!values.name) throw new FerryError('FERRY_ERR_USAGE', { message: '--name SERVICE is required' });
  const compression = (values.compression ?? 'zstd') as Compression;
  if (!COMPRESSIONS.includes(compression)) throw new FerryError('FERRY_ERR_USAGE', { message: `--compression must be one of ${COMPRESSIONS.join(', ')}` });
  const network = values.network ?? 'bridge';
  if (network !== 'host' && network !== 'bridge' && network !== 'none') throw new FerryError('FERRY_ERR_USAGE', { message: '--network must be host, bridge or none' });
  const health = healthFrom(values.health, {
    retries: values['health-retries'], interval: values['health-interval'],
    timeout: values['health-timeout'], startPeriod: values['health-start-period'],
  });
  const config = loadSenderConfig(io.env);

  const logger = createLogger({ level: 'warn', name: 'ferry', destination: io.stderr });
  const events: EventSink = config.natsUrl
    ? await JetStreamPublisher.connect({ url: config.natsUrl, logger, name: 'ferry-sender' })
    : new NullSink({ logger });
  const showProgress = !values.json && io.stderr.isTTY === true;
  let bar: ProgressBar | undefined;
  try {
    const result = await push({
      image, to: values.to, compression,
      resumableThreshold: parseInteger('resumable-threshold', values['resumable-threshold'], 1, Number.MAX_SAFE_INTEGER),
      service: { name: values.name, env: parseEnvPairs(values.env), network, ...(health ? { health } : {}) },
    }, {
      images: new ImageStore(createDockerClient(config.dockerHost)),
      events, credentials: config.credentials, source: `ferry://sender/${hostname()}`,
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
