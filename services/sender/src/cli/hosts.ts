import { parseLabels } from '@ferry/auth';
import { FerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { ago, registryFrom, table } from './registry.ts';

export const HOSTS_HELP = `Usage: ferry hosts [--selector KEY=VALUE[,KEY=VALUE…]] [--status online|lost] [--json]

Lists the receivers registered with the registry: id, status (online, or lost when its heartbeats
stopped), the URL senders reach it at, its labels, its version and when it was last heard from.
--selector keeps the hosts carrying all those labels — the hosts "ferry push --to selector:…"
would deploy to, when online.

Options:
  --selector K=V[,K=V…]  only hosts with all these labels
  --status online|lost   only hosts in this state
  --json                 print {"hosts": [...]} as the registry answers it

Environment: FERRY_REGISTRY_URL (required), FERRY_KEY_ID and FERRY_KEY (the signing key).`;

export async function hostsCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { selector: { type: 'string' }, status: { type: 'string' }, json: { type: 'boolean' } });
  if (values.selector !== undefined && parseLabels(values.selector) === undefined) {
    throw new FerryError('FERRY_ERR_USAGE', { message: '--selector: expected KEY=VALUE[,KEY=VALUE…] (e.g. --selector env=prod,role=web)' });
  }
  const status = values.status;
  if (status !== undefined && status !== 'online' && status !== 'lost') throw new FerryError('FERRY_ERR_USAGE', { message: '--status must be online or lost' });
  const hosts = await registryFrom(io, 'hosts').hosts({
    ...(values.selector !== undefined ? { selector: values.selector } : {}), ...(status !== undefined ? { status } : {}),
  });
  if (values.json) {
    line(io.stdout, JSON.stringify({ hosts }));
    return 0;
  }
  if (hosts.length === 0) {
    line(io.stdout, values.selector || status ? 'No registered host matches.' : 'No host has registered yet (receivers register when FERRY_REGISTRY_URL is set on them).');
    return 0;
  }
  const rows = [['ID', 'STATUS', 'URL', 'LABELS', 'VERSION', 'LAST SEEN']];
  for (const h of [...hosts].sort((a, b) => a.id.localeCompare(b.id))) {
    const labels = Object.entries(h.labels).map(([k, v]) => `${k}=${v}`).join(',');
    rows.push([h.id, h.status, h.url, labels || '-', h.version, `${ago(h.lastSeenAt)} (${h.lastSeenAt})`]);
  }
  line(io.stdout, table(rows));
  return 0;
}
