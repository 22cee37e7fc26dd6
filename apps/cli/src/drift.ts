import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { driftRows, registryFrom, table } from './registry.ts';

/** `ferry drift`: what it does and takes is its help text, in help.ts. */
export async function driftCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { json: { type: 'boolean' } });
  const drift = (await registryFrom(io, 'drift').drift()).filter((s) => s.drift !== null);
  if (values.json) {
    line(io.stdout, JSON.stringify({ ok: drift.length === 0, drift }));
  } else if (drift.length === 0) {
    line(io.stdout, '✔ no drift: every service runs what was deployed');
  } else {
    line(io.stdout, `✖ ${drift.length} service${drift.length === 1 ? '' : 's'} drifted`);
    line(io.stdout, table(driftRows(drift)));
  }
  return drift.length === 0 ? 0 : 1;
}
