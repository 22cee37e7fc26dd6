import { parseLabels } from '@ferry/auth';
import { FerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';
import { ago, registryFrom, table } from './registry.ts';

/** `ferry hosts`: what it does and takes is its help text, in help.ts. */
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
