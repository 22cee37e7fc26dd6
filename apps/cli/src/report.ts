import { FerryError } from '@ferry/protocol';
import { failureLines, failureNext, fromError } from './failure.ts';
import { line, type Io } from './io.ts';
import { UNREACHABLE } from './next.ts';

export { nextStep } from './next.ts';

/** Prints an error the way the user asked for output, and maps it to an exit code. */
export function report(io: Io, err: unknown, json: boolean, command?: string): number {
  const error = err instanceof FerryError ? err : new FerryError('FERRY_ERR_INTERNAL', { message: (err as Error).message ?? String(err), cause: err });
  if (json) {
    line(io.stdout, JSON.stringify({ ok: false, ...error.toJSON(), next: failureNext(error.code, fromError(error).failure, command) }));
  } else {
    // A failed deployment's report, or the error alone: what the receiver recorded, when it did.
    for (const text of failureLines(fromError(error), command)) line(io.stderr, text);
    if (error.code === 'FERRY_ERR_INTERNAL' && error.cause instanceof Error) line(io.stderr, `  cause: ${error.cause.message}`);
  }
  if (error.code === 'FERRY_ERR_USAGE' || error.code === 'FERRY_ERR_CONFIG' || error.code === 'FERRY_ERR_BAD_DEPLOYMENT_FILE' || error.code === 'FERRY_ERR_BAD_INVENTORY') return 2;
  if (UNREACHABLE.has(error.code)) return 3;
  return 1;
}
