import { FERRY_VERSION, FerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { oneLine } from './terminal.ts';

/** `ferry version` (and `ferry --version`): what it does and takes is its help text, in help.ts. */
export async function versionCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { to: { type: 'string' }, 'host-key': { type: 'string' }, json: { type: 'boolean' } });
  const own = { ferry: FERRY_VERSION, node: process.version };
  if (values.to === undefined) {
    if (values['host-key'] !== undefined) throw new FerryError('FERRY_ERR_USAGE', { message: '--host-key goes with --to URL' });
    line(io.stdout, values.json ? JSON.stringify(own) : `ferry ${own.ferry}\nnode  ${own.node}`);
    return 0;
  }
  // The sender library (HTTP clients, schemas) loads only when a receiver is asked.
  const { ReceiverClient } = await import('@ferry/sender');
  const hostKey = values['host-key'];
  const identity = await new ReceiverClient({ url: values.to, ...(hostKey === undefined ? {} : { hostKey }) }).identity();
  const receiver = { url: values.to, host: identity.host, version: identity.version, hostKey: identity.fingerprint };
  if (values.json) {
    line(io.stdout, JSON.stringify({ ...own, receiver }));
  } else {
    line(io.stdout, `ferry     ${own.ferry} (node ${own.node})`);
    line(io.stdout, oneLine(`receiver  ${receiver.version} on ${receiver.host} (${receiver.url}, host key ${receiver.hostKey})`));
  }
  return 0;
}
