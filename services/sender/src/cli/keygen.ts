import { generateSecret, isValidKeyId } from '@ferry/auth';
import { FerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';

/** `ferry keygen`: what it does and takes is its help text, in help.ts. */
export function keygenCommand(args: string[], io: Io): number {
  const { values } = parse(args, { id: { type: 'string' }, json: { type: 'boolean' } });
  const keyId = values.id ?? `key-${new Date().toISOString().slice(0, 10)}`;
  if (!isValidKeyId(keyId)) throw new FerryError('FERRY_ERR_USAGE', { message: '--id: letters, digits, ".", "_" and "-", at most 64' });
  const secret = generateSecret();
  if (values.json) {
    line(io.stdout, JSON.stringify({ keyId, secret }));
  } else {
    line(io.stdout, `# receiver (add to its comma-separated list to rotate):`);
    line(io.stdout, `FERRY_KEYS=${keyId}:${secret}`);
    line(io.stdout, `# sender:`);
    line(io.stdout, `FERRY_KEY_ID=${keyId}`);
    line(io.stdout, `FERRY_KEY=${secret}`);
  }
  return 0;
}
