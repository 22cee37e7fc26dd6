import { FerryError, checkSelectorInput, parseHostLabels } from '@ferry/protocol';
import { line, type Io } from './io.ts';
import { parseDurationFlag, parse as parseOptions } from './args.ts';
import { ago, registryFrom, table } from './registry.ts';

/** `ferry hosts`: what it does and takes is its help text, in help.ts. */
export async function hostsCommand(args: string[], io: Io): Promise<number> {
  if (args[0] === 'join-token') return await joinToken(args.slice(1), io);
  const { values } = parseOptions(args, { selector: { type: 'string' }, status: { type: 'string' }, json: { type: 'boolean' } });
  if (values.selector !== undefined) checkSelectorInput('--selector', values.selector);
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

/**
 * `ferry hosts join-token ID`: a one-time token the host's receiver enrolls its own key with
 * (FERRY_JOIN_TOKEN, or bootstrap.sh --join-token). Printed once; the registry keeps its hash.
 */
async function joinToken(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parseOptions(args, {
    labels: { type: 'string' }, ttl: { type: 'string' }, replace: { type: 'boolean' }, json: { type: 'boolean' },
  }, 1);
  const host = positionals[0];
  if (host === undefined) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry hosts join-token: name the host id, e.g. "ferry hosts join-token web-1"' });
  const labels = values.labels === undefined ? undefined : labelsOption(values.labels);
  const ttlMs = parseDurationFlag('ttl', values.ttl, 's', 60_000, 7 * 24 * 3_600_000);
  const ttlSeconds = ttlMs === undefined ? undefined : Math.ceil(ttlMs / 1000);
  const answer = await registryFrom(io, 'hosts join-token').joinToken({
    host, ...(labels ? { labels } : {}), ...(ttlSeconds !== undefined ? { ttlSeconds } : {}), ...(values.replace ? { replace: true } : {}),
  });
  if (values.json) {
    line(io.stdout, JSON.stringify(answer));
    return 0;
  }
  line(io.stdout, answer.token);
  line(io.stderr, `One-time token for host ${answer.host}, until ${answer.expiresAt}: give it to that host's receiver as FERRY_JOIN_TOKEN (or bootstrap.sh --join-token). It is not shown again.`);
  return 0;
}

function labelsOption(text: string): Record<string, string> {
  try {
    return parseHostLabels(text, '--labels');
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `${(err as Error).message} (e.g. --labels env=prod,role=web)` });
  }
}
