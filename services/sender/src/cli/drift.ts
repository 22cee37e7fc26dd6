import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { driftRows, registryFrom, table } from './registry.ts';

export const DRIFT_HELP = `Usage: ferry drift [--json]

Lists the services whose running container differs from what was last deployed to that host, as
the registry sees it from the receivers' heartbeats: another image, another configuration, a
stopped container (state) or none at all (missing). Exits 1 when anything drifted and 0 when
nothing did, so a script or a CI step can gate on it.

Options:
  --json   print {"ok": BOOLEAN, "drift": [...]} (the registry's service states)

Environment: FERRY_REGISTRY_URL (required), FERRY_KEY_ID and FERRY_KEY (the signing key).`;

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
