import { FerryError } from '@ferry/protocol';
import { ReceiverClient, loadSenderConfig } from '@ferry/sender';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { formatMs } from './progress.ts';
import { oneLine } from './terminal.ts';

/** `ferry rollback`: what it does and takes is its help text, in help.ts. */
export async function rollbackCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { to: { type: 'string' }, json: { type: 'boolean' } }, 1);
  const service = positionals[0];
  if (!service) throw new FerryError('FERRY_ERR_USAGE', { message: 'SERVICE is required (e.g. ferry rollback web --to http://host:7701)' });
  if (!values.to) throw new FerryError('FERRY_ERR_USAGE', { message: '--to URL is required' });
  const client = new ReceiverClient({ url: values.to, credentials: loadSenderConfig(io.env).credentials });
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
