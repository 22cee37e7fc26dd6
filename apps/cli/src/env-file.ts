import { readFileSync, statSync } from 'node:fs';
import { FerryError } from '@ferry/protocol';

/** An env file larger than this is not an env file (the manifest would refuse it anyway). */
export const MAX_ENV_FILE_BYTES = 1024 ** 2;

/**
 * The entries of `--env-file` files, in order, read as `docker run --env-file` reads them: one
 * `KEY=VALUE` per line, the value taken as written (no quotes removed, no `$` expanded, trailing
 * spaces kept); `KEY` alone passes that variable on from the environment; blank lines and lines
 * starting with `#` are skipped, as is leading whitespace and a UTF-8 byte order mark. Returned as
 * `-e` takes them, so that the `-e` flags, which come after, win. Errors give the file and line,
 * never a value.
 */
export function readEnvFiles(paths: readonly string[] | undefined): string[] {
  return (paths ?? []).flatMap((path) => parseEnvFile(path, readText(path)));
}

export function parseEnvFile(path: string, text: string): string[] {
  const entries: string[] = [];
  text.replace(/^\uFEFF/, '').split('\n').forEach((raw, index) => {
    const line = raw.replace(/\r$/, '').trimStart();
    if (line === '' || line.startsWith('#')) return;
    const eq = line.indexOf('=');
    const name = (eq < 0 ? line : line.slice(0, eq)).replace(/^[ \t]+/, '');
    const where = `--env-file ${path} line ${index + 1}`;
    if (name === '') throw usage(`${where}: no variable name before "="`);
    // The text before "=" may be a value written by mistake ("export A=1", a pasted secret): not shown.
    if (/[ \t]/.test(name)) throw usage(`${where}: a variable name has no spaces (write KEY=VALUE, without "export")`);
    if (name === '__proto__') throw usage(`${where}: __proto__ is not allowed as a name`);
    entries.push(eq < 0 ? name : `${name}${line.slice(eq)}`);
  });
  return entries;
}

function readText(path: string): string {
  let bytes: Buffer;
  try {
    if (statSync(path).size > MAX_ENV_FILE_BYTES) throw usage(`--env-file ${path}: larger than ${MAX_ENV_FILE_BYTES} bytes; not an env file`);
    bytes = readFileSync(path);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw usage(`--env-file ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw usage(`--env-file ${path}: not UTF-8 text`);
  }
}

function usage(message: string): FerryError {
  return new FerryError('FERRY_ERR_USAGE', { message });
}
