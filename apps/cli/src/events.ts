import { z } from 'zod';
import { loadConfig } from '@ferry/config';
import { readEvents, redactNatsUrl, type FerryEvent } from '@ferry/events';
import { FerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { oneLine } from './terminal.ts';

const schema = z.object({ FERRY_NATS_URL: z.string({ error: 'required: nats://host:port of the event stream' }) });

/** `ferry events`: what it does and takes is its help text, in help.ts. */
export async function eventsCommand(args: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const { values } = parse(args, {
    deployment: { type: 'string' }, service: { type: 'string' }, host: { type: 'string' },
    follow: { type: 'boolean' }, json: { type: 'boolean' },
  });
  const { FERRY_NATS_URL: url } = loadConfig(schema, io.env);
  const follow = values.follow ?? false;
  // Following ends on Ctrl-C or SIGTERM: the read stops, the connection closes, the exit code is 0.
  const interrupt = follow && !signal ? new AbortController() : undefined;
  const stop = (): void => interrupt?.abort();
  if (interrupt) {
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  }
  const abort = signal ?? interrupt?.signal;
  let count = 0;
  try {
    for await (const event of readEvents({
      url, follow,
      ...(values.deployment ? { deploymentId: values.deployment } : {}),
      ...(values.service ? { service: values.service } : {}),
      ...(values.host ? { host: values.host } : {}),
      ...(abort ? { signal: abort } : {}),
    })) {
      count++;
      line(io.stdout, values.json ? JSON.stringify(event) : oneLine(describe(event)));
    }
  } catch (err) {
    if (interrupt?.signal.aborted) return 0;
    throw err instanceof FerryError ? err : new FerryError('FERRY_ERR_EVENTS_UNAVAILABLE', { message: `Cannot read events from ${redactNatsUrl(url)}: ${(err as Error).message}`, cause: err });
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
  }
  if (!follow && !values.json && count === 0) line(io.stderr, 'no events matched');
  return 0;
}

function describe(event: FerryEvent): string {
  const data = event.data as unknown as Record<string, unknown>;
  const extra = ['reason', 'code', 'durationMs', 'bytes', 'attempts']
    .filter((key) => data[key] !== undefined)
    .map((key) => `${key}=${typeof data[key] === 'string' ? JSON.stringify(data[key]) : String(data[key])}`)
    .join(' ');
  const host = typeof data.host === 'string' ? data.host : '?';
  return `${event.time}  ${event.type.replace(/^ferry\./, '').padEnd(21)} ${host}/${event.subject}  ${event.deploymentid}${extra ? `  ${extra}` : ''}`;
}
