import { readFile } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { resolve } from 'node:path';
import {
  HOST_KEY_FILE, fingerprint, generateKeyPair, isValidKeyId, parsePrivateKey, privateKeyPem, publicKeyText,
} from '@ferry/auth';
import { FerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';

/**
 * `ferry key new --id ID [--out FILE]` makes an Ed25519 key pair: the private key goes to a file
 * only its owner can read (never to the terminal), the public key and fingerprint are printed for
 * trust files and grants. `ferry key show FILE` prints a key file's public half.
 */
export async function keyCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'new') return await newKey(rest, io);
  if (sub === 'show') return await showKey(rest, io);
  throw new FerryError('FERRY_ERR_USAGE', { message: `"ferry key ${sub ?? ''}": expected "key new" or "key show"` });
}

async function newKey(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { id: { type: 'string' }, out: { type: 'string', short: 'o' }, json: { type: 'boolean' } });
  const keyId = values.id;
  if (keyId === undefined || !isValidKeyId(keyId)) throw new FerryError('FERRY_ERR_USAGE', { message: '--id ID is required: letters, digits, ".", "_" and "-", at most 128' });
  const file = resolve(values.out ?? `${keyId}.key`);
  const { privateKey } = generateKeyPair();
  let handle;
  try {
    // wx: an existing key is never overwritten; 0600: only its owner reads it.
    handle = await open(file, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FerryError('FERRY_ERR_USAGE', { message: `${file}: ${code === 'EEXIST' ? 'exists already; choose another --out' : `cannot be created (${code ?? 'error'})`}`, cause: err });
  }
  try {
    await handle.writeFile(privateKeyPem(privateKey));
    await handle.sync();
  } finally {
    await handle.close();
  }
  print(io, { keyId, file, publicKey: publicKeyText(privateKey), fingerprint: fingerprint(privateKey) }, values.json === true);
  if (values.json !== true) {
    line(io.stdout);
    line(io.stdout, '# trust it directly on a receiver (or sign it a grant with "ferry grant issue"):');
    line(io.stdout, `ferry trust add --id ${keyId} --public-key ${publicKeyText(privateKey)} --role deploy`);
    line(io.stdout, '# sign with it:');
    line(io.stdout, `FERRY_KEY_ID=${keyId} FERRY_KEY_FILE=${file}`);
  }
  return 0;
}

async function showKey(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, { id: { type: 'string' }, 'data-dir': { type: 'string' }, json: { type: 'boolean' } }, 1);
  const dataDir = values['data-dir'];
  const file = positionals[0] ?? (dataDir === undefined ? undefined : resolve(dataDir, HOST_KEY_FILE));
  if (file === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry key show FILE, or --data-dir DIR for a receiver\'s host key' });
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `${file}: cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
  }
  const key = parsePrivateKey(text, file);
  print(io, { ...(values.id === undefined ? {} : { keyId: values.id }), file, publicKey: publicKeyText(key), fingerprint: fingerprint(key) }, values.json === true);
  return 0;
}

function print(io: Io, facts: Record<string, string>, json: boolean): void {
  if (json) {
    line(io.stdout, JSON.stringify(facts));
    return;
  }
  const names: Record<string, string> = { keyId: 'key id', file: 'private key', publicKey: 'public key', fingerprint: 'fingerprint' };
  for (const [key, value] of Object.entries(facts)) line(io.stdout, `${(names[key] ?? key).padEnd(12)}${value}`);
}
