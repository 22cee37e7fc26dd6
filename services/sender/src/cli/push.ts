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
  --health URL             HTTP health check probed by the receiver, e.g. http://127.0.0.1:8080/healthz
  --health-retries N       probes before the deployment fails and rolls back (default 30)
  --health-interval MS     pause between probes (default 1000)
  --env KEY=VALUE          environment variable for the container; repeat for more
  --network host|bridge|none   container network (default bridge)
  --compression zstd|gzip|none (default zstd)
  --json                   print one JSON result instead of text

Environment: FERRY_KEY_ID and FERRY_KEY (the signing key), DOCKER_HOST (build engine),
FERRY_NATS_URL (optional: publish the sender's events).`;

export async function pushCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    to: { type: 'string' }, name: { type: 'string' }, health: { type: 'string' },
    'health-retries': { type: 'string' }, 'health-interval': { type: 'string' },
    env: { type: 'string', multiple: true }, network: { type: 'string' }, compression: { type: 'string' },
    json: { type: 'boolean' },
  }, 1);
  const image = positionals[0];
  if (!image) throw new FerryError('FERRY_ERR_USAGE', { message: 'IMAGE is required (e.g. ferry push myapp:1.2 --to http://host:7701 --name web)' });
  if (!values.to) throw new FerryError('FERRY_ERR_USAGE', { message: '--to URL is required' });
  if (!values.name) throw new FerryError('FERRY_ERR_USAGE', { message: '--name SERVICE is required' });
  const compression = (values.compression ?? 'zstd') as Compression;
  if (!COMPRESSIONS.includes(compression)) throw new FerryError('FERRY_ERR_USAGE', { message: `--compression must be one of ${COMPRESSIONS.join(', ')}` });
  const network = values.network ?? 'bridge';
  if (network !== 'host' && network !== 'bridge' && network !== 'none') throw new FerryError('FERRY_ERR_USAGE', { message: '--network must be host, bridge or none' });
  const health = healthFrom(values.health, values['health-retries'], values['health-interval']);
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

function healthFrom(url: string | undefined, retries: string | undefined, interval: string | undefined): HealthCheck | undefined {
  if (url === undefined) {
    if (retries !== undefined || interval !== undefined) throw new FerryError('FERRY_ERR_USAGE', { message: '--health-retries and --health-interval need --health URL' });
    return undefined;
  }
  const parsed = HealthCheckSchema.safeParse({
    type: 'http', url,
    ...(retries !== undefined ? { retries: parseInteger('health-retries', retries, 1, 1000) } : {}),
    ...(interval !== undefined ? { intervalMs: parseInteger('health-interval', interval, 50, 60_000) } : {}),
  });
  if (!parsed.success) throw new FerryError('FERRY_ERR_USAGE', { message: `--health ${url}: expected an http:// or https:// URL as seen from the target host` });
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
