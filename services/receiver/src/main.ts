import { access, constants, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { MemoryNonceStore, RequestVerifier } from '@ferry/auth';
import type { Env } from '@ferry/config';
import { ContainerRunner, ImageStore, createDockerClient } from '@ferry/docker';
import { JetStreamPublisher, NullSink, type EventSink } from '@ferry/events';
import { listen, type ListeningServer } from '@ferry/http';
import { createLogger, type Logger } from '@ferry/log';
import { FerryError } from '@ferry/protocol';
import { createApp } from './app.ts';
import { loadReceiverConfig, type ReceiverConfig } from './config.ts';
import { Deployer } from './deploy/engine.ts';

export const VERSION = '0.1.0';

/** Larger packages belong to the resumable protocol; the one-shot upload refuses them. */
const MAX_ONE_SHOT_BYTES = 8 * 1024 ** 3;

export interface RunningReceiver {
  url: string;
  config: Readonly<ReceiverConfig>;
  close(): Promise<void>;
}

/** Starts a receiver from the environment; the caller decides how long it lives. */
export async function startReceiver(env: Env = process.env, logger?: Logger): Promise<RunningReceiver> {
  const config = loadReceiverConfig(env);
  const log = logger ?? createLogger({ level: config.logLevel, name: 'ferry-receiver' });
  const spoolDir = join(config.dataDir, 'ingest');
  await ensureWritableDir(spoolDir);

  const docker = createDockerClient(config.dockerHost);
  const events: EventSink = config.natsUrl
    ? await JetStreamPublisher.connect({ url: config.natsUrl, logger: log, name: `ferry-receiver-${config.hostId}` })
    : new NullSink({ logger: log });
  const deployer = new Deployer({
    images: new ImageStore(docker), containers: new ContainerRunner(docker), events, hostId: config.hostId, logger: log,
  });
  const verifier = new RequestVerifier({ keys: config.keys, nonces: new MemoryNonceStore() });
  const app = createApp({
    logger: log, verifier, deployer, hostId: config.hostId, version: VERSION, spoolDir, maxPackageBytes: MAX_ONE_SHOT_BYTES,
  });
  let server: ListeningServer;
  try {
    server = await listen(app, config.listen.host, config.listen.port);
  } catch (err) {
    await events.close();
    throw new FerryError('FERRY_ERR_CONFIG', { message: `Cannot listen on ${config.listen.host}:${config.listen.port}: ${(err as Error).message}`, cause: err });
  }
  log.info({ url: server.url, host: config.hostId, keyIds: config.keys.ids, nats: config.natsUrl ?? null, dataDir: config.dataDir }, 'receiver listening');

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    // Each step's failure is logged and the next still runs, so shutdown never stops half-way.
    closing ??= (async () => {
      await server.close().catch((err: unknown) => log.error({ err }, 'closing HTTP failed'));
      await events.close().catch((err: unknown) => log.error({ err }, 'closing events failed'));
      log.info('receiver stopped');
    })();
    return closing;
  };
  return { url: server.url, config, close };
}

/** `ferry receiver`: runs in the foreground until SIGINT or SIGTERM. */
export async function runReceiver(env: Env = process.env): Promise<void> {
  const receiver = await startReceiver(env);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void receiver.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

async function ensureWritableDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await access(dir, constants.W_OK);
  } catch (err) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `FERRY_DATA_DIR: cannot write to ${dir} (${(err as NodeJS.ErrnoException).code ?? 'error'}); set FERRY_DATA_DIR to a writable directory`, cause: err });
  }
}
