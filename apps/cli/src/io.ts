import type { Writable } from 'node:stream';
import type { Env } from '@ferry/config';
import { printable } from './terminal.ts';

/** Where a command reads its environment and writes its output; tests pass their own. */
export interface Io {
  env: Env;
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean; columns?: number };
}

export const processIo: Io = { env: process.env, stdout: process.stdout, stderr: process.stderr };

/**
 * Writes one line of output. Whatever it holds, no control sequence reaches the terminal
 * (terminal.ts printable): much of what the CLI prints comes from receivers, the registry and
 * containers. Line breaks inside `text` are kept; a JSON text stays the same JSON value.
 */
export function line(out: Writable, text = ''): void {
  out.write(`${printable(text)}\n`);
}
