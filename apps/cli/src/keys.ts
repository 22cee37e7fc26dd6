import { open, readFile, rm, stat } from 'node:fs/promises';
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
  } catch (err) {
    // Half a key file would be taken for a key at the next "key new" (EEXIST) or by a signer.
    await handle.close().catch(() => undefined);
    await rm(file, { force: true });
    throw new FerryError('FERRY_ERR_USAGE', { message: `${file}: cannot be written (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
  }
  await handle.close();
  const publicKey = publicKeyText(privateKey);
  print(io, { keyId, file, publicKey, fingerprint: fingerprint(privateKey) }, values.json === true);
  if (values.json !== true) {
    line(io.stdout);
    line(io.stdout, '# on a receiver, registry or sender service, trust it directly (an admin key: --role admin):');
    line(io.stdout, `ferry trust add --id ${keyId} --public-key ${publicKey} --role deploy`);
    line(io.stdout, '# or have an admin key sign it a grant, which its holder sends along (FERRY_GRANT_FILE):');
    line(io.stdout, `ferry grant issue --id ${keyId} --public-key ${publicKey} --role deploy --service 'web-*' --not-after 90d --out ${keyId}.grant.json`);
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
  if (text.includes('-----BEGIN PUBLIC KEY-----')) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `${file} holds a public key; "key show" reads a private key file (a public key is trusted as it is: "ferry trust add --public-key ${file}")` });
  }
  const key = parsePrivateKey(text, file);
  await warnIfShared(io, file);
  print(io, { ...(values.id === undefined ? {} : { keyId: values.id }), file, publicKey: publicKeyText(key), fingerprint: fingerprint(key) }, values.json === true);
  return 0;
}

/**
 * A private key file that other users can read is no secret any more: said on stderr, where it is
 * seen without spoiling the output a script reads.
 */
export async function warnIfShared(io: Io, file: string): Promise<void> {
  const mode = await stat(file).then((s) => s.mode & 0o777, () => undefined);
  if (mode !== undefined && (mode & 0o077) !== 0) {
    line(io.stderr, `warning: ${file} can be read by other users (mode ${mode.toString(8).padStart(4, '0')}): chmod 600 ${file}, and replace the key if others had it`);
  }
}

function print(io: Io, facts: Record<string, string>, json: boolean): void {
  if (json) {
    line(io.stdout, JSON.stringify(facts));
    return;
  }
  const names: Record<string, string> = { keyId: 'key id', file: 'private key', publicKey: 'public key', fingerprint: 'fingerprint' };
  for (const [key, value] of Object.entries(facts)) line(io.stdout, `${(names[key] ?? key).padEnd(12)}${value}`);
}
