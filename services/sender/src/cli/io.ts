import type { Writable } from 'node:stream';
import type { Env } from '@ferry/config';

/** Where a command reads its environment and writes its output; tests pass their own. */
export interface Io {
  env: Env;
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean; columns?: number };
}

export const processIo: Io = { env: process.env, stdout: process.stdout, stderr: process.stderr };

export function line(out: Writable, text = ''): void {
  out.write(`${text}\n`);
}
