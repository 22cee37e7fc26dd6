import { readFileSync } from 'node:fs';
import { chmod, mkdir, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '@ferry/protocol';
import type { ClientCredentials } from './client.ts';
import { GRANT_TYPE, GrantPayloadSchema } from './grants.ts';
import { hostKeyId } from './identity.ts';
import { generateKeyPair, isValidKeyId, parsePrivateKey, privateKeyPem, publicKeyText, type SigningKey } from './keys.ts';
import { documentHeader, parseDocument } from './signed.ts';

/** Where a client's key and grant come from: FERRY_KEY_ID, FERRY_KEY_FILE or FERRY_KEY, FERRY_GRANT_FILE or FERRY_GRANT. */
export interface CredentialSources {
  keyId: string;
  keyFile?: string | undefined;
  /** The PEM itself (a CI secret variable). */
  key?: string | undefined;
  grantFile?: string | undefined;
  /** The grant's JSON, or its base64url. */
  grant?: string | undefined;
}

/**
 * Reads a client's signing key and grant. A grant that names another key id, or another public
 * key, is refused here rather than by every receiver. Problems never quote the key.
 */
export function loadCredentials(sources: CredentialSources): ClientCredentials {
  if (!isValidKeyId(sources.keyId)) throw new FerryError('FERRY_ERR_CONFIG', { message: 'FERRY_KEY_ID: letters, digits, ".", "_" and "-", at most 128' });
  const pem = sources.key ?? (sources.keyFile === undefined ? undefined : readText(sources.keyFile, 'FERRY_KEY_FILE'));
  if (pem === undefined) throw new FerryError('FERRY_ERR_CONFIG', { message: 'FERRY_KEY_FILE (or FERRY_KEY) is required: the private key to sign with ("ferry key new")' });
  const privateKey = parsePrivateKey(pem, sources.key === undefined ? `FERRY_KEY_FILE ${sources.keyFile ?? ''}` : 'FERRY_KEY');
  const grantText = sources.grant ?? (sources.grantFile === undefined ? undefined : readText(sources.grantFile, 'FERRY_GRANT_FILE'));
  if (grantText === undefined) return { keyId: sources.keyId, privateKey };
  const doc = parseDocument(grantText, GRANT_TYPE);
  const payload = GrantPayloadSchema.safeParse(JSON.parse(Buffer.from(doc.payload, 'base64').toString('utf8')));
  if (!payload.success) throw new FerryError('FERRY_ERR_CONFIG', { message: 'FERRY_GRANT: not a grant' });
  if (payload.data.keyId !== sources.keyId) throw new FerryError('FERRY_ERR_CONFIG', { message: `FERRY_GRANT is for key id ${payload.data.keyId}, not FERRY_KEY_ID` });
  if (payload.data.publicKey !== publicKeyText(privateKey)) throw new FerryError('FERRY_ERR_CONFIG', { message: 'FERRY_GRANT is for another public key than FERRY_KEY_FILE\'s' });
  return { keyId: sources.keyId, privateKey, grant: documentHeader(doc) };
}

function readText(file: string, name: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `${name}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
  }
}

export const HOST_KEY_FILE = 'host.key';

/**
 * A receiver's own key pair, made at its first start and kept 0600 in its data directory. It signs
 * the receiver's identity, its registry calls and its events; it lets nobody deploy anywhere.
 */
export async function loadOrCreateHostKey(dataDir: string, hostId: string): Promise<SigningKey> {
  const file = join(dataDir, HOST_KEY_FILE);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  try {
    const handle = await open(file, 'wx', 0o600);
    try {
      await handle.writeFile(privateKeyPem(generateKeyPair().privateKey));
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new FerryError('FERRY_ERR_CONFIG', { message: `Cannot create the host key ${file}`, cause: err });
  }
  // A key file others can read is no secret: it is made private again before it is used.
  await chmod(file, 0o600);
  return { keyId: hostKeyId(hostId), privateKey: parsePrivateKey(await readFile(file, 'utf8'), file) };
}
