import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '@ferry/protocol';

/**
 * A certificate as HAProxy takes it: PEM blocks (the chain, then the private key), nothing else.
 * The text goes to HAProxy as a runtime payload, so it is rebuilt from its checked lines: no blank
 * line (it would end the payload), no stray text, no encrypted key.
 */
export function normalizePem(pem: string): string {
  if (typeof pem !== 'string' || pem.length > 1024 * 1024) throw badPem('not PEM text of at most 1 MiB');
  const lines = pem.replace(/\r/g, '').split('\n').map((l) => l.trim()).filter((l) => l !== '');
  let open: string | undefined;
  const kinds: string[] = [];
  for (const line of lines) {
    const begin = /^-----BEGIN ([A-Z0-9 ]{1,40})-----$/.exec(line);
    const end = /^-----END ([A-Z0-9 ]{1,40})-----$/.exec(line);
    if (begin) {
      if (open !== undefined) throw badPem('a PEM block starts inside another');
      open = begin[1]!;
    } else if (end) {
      if (end[1] !== open) throw badPem('a PEM block ends without its start');
      kinds.push(open);
      open = undefined;
    } else if (open === undefined || !/^[A-Za-z0-9+/=]{1,80}$/.test(line)) {
      throw badPem('only base64 lines inside BEGIN/END blocks');
    }
  }
  if (open !== undefined) throw badPem('a PEM block is not ended');
  if (!kinds.includes('CERTIFICATE')) throw badPem('no CERTIFICATE block');
  if (!kinds.some((k) => /^(?:RSA |EC )?PRIVATE KEY$/.test(k))) throw badPem('no unencrypted PRIVATE KEY block');
  return `${lines.join('\n')}\n`;
}

function badPem(why: string): FerryError {
  return new FerryError('FERRY_ERR_BAD_REQUEST', { message: `Not a certificate the proxy can serve: ${why}` });
}

/**
 * A self-signed certificate for the HTTPS listener's default (HAProxy needs one to bind TLS; it is
 * served only to clients asking for a host that has no certificate).
 */
export async function selfSignedPem(dir: string): Promise<string> {
  const key = join(dir, 'default.key.tmp');
  const cert = join(dir, 'default.crt.tmp');
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
        '-keyout', key, '-out', cert, '-subj', '/CN=ferry-default', '-days', '3650'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('error', (cause) => reject(new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: 'openssl could not be run to make the default certificate', cause })));
      child.on('close', (code) => {
        if (code === 0) resolve();
        else reject(new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: `openssl failed to make the default certificate: ${err.trim().slice(-300)}` }));
      });
    });
    return (await readFile(cert, 'utf8')) + (await readFile(key, 'utf8'));
  } finally {
    await rm(key, { force: true });
    await rm(cert, { force: true });
  }
}
