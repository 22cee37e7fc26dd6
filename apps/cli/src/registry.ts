import { RegistryClient, type ServiceState } from '@ferry/auth';
import { FerryError } from '@ferry/protocol';
import { loadSenderConfig } from '@ferry/sender';
import { line, type Io } from './io.ts';
import { oneLine } from './terminal.ts';

/** The registry named by FERRY_REGISTRY_URL, signed with FERRY_KEY_ID / FERRY_KEY. */
export function registryFrom(io: Io, command: string, otherwise = ''): RegistryClient {
  const config = loadSenderConfig(io.env);
  if (!config.registryUrl) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `"ferry ${command}" asks the registry: set FERRY_REGISTRY_URL (e.g. http://registry:7702)${otherwise}` });
  }
  return new RegistryClient(config.registryUrl, config.credentials);
}

/** Left-aligned columns, two spaces apart; the first row is the header. Each cell is kept on one line. */
export function table(given: string[][]): string {
  const rows = given.map((row) => row.map(oneLine));
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0))) ?? [];
  return rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

/** `sha256:0123456789ab…` → `0123456789ab`, as docker shows ids. */
export function shortId(id: unknown): string {
  return typeof id === 'string' ? id.replace(/^sha256:/, '').slice(0, 12) : '-';
}

/** A drift reason's value, short enough for a table cell. */
export function shown(value: unknown): string {
  if (value === undefined || value === null) return '-';
  if (typeof value === 'string') return /^sha256:[0-9a-f]{64}$/.test(value) ? shortId(value) : value;
  return JSON.stringify(value);
}

/** How long ago an ISO time was, as "4s ago", "3m ago", "2h ago", "5d ago". */
export function ago(iso: string, now = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (!Number.isFinite(seconds)) return '-';
  if (seconds < 120) return `${seconds}s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 172_800) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86_400)}d ago`;
}

/** One line per drift reason of each drifted service. */
export function driftRows(states: ServiceState[]): string[][] {
  const rows = [['HOST', 'SERVICE', 'FIELD', 'DESIRED', 'ACTUAL', 'SINCE']];
  for (const s of states) {
    for (const r of s.drift?.reasons ?? []) rows.push([s.host, s.service, r.field, shown(r.desired), shown(r.actual), s.drift?.since ?? '-']);
  }
  return rows;
}

/**
 * `ferry status SERVICE` without `--to`: the service on every host the registry knows it on,
 * desired (what was deployed) against actual (what the heartbeat says runs), and any drift.
 */
export async function registryStatus(service: string, json: boolean, io: Io): Promise<number> {
  const states = await registryFrom(io, 'status SERVICE', ', or name a receiver with --to URL').services({ service });
  if (states.length === 0) {
    throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `The registry knows no host running or meant to run ${service}`, details: { service } });
  }
  if (json) {
    line(io.stdout, JSON.stringify({ services: states }));
    return 0;
  }
  const rows = [['HOST', 'DESIRED', 'ACTUAL', 'STATE', 'DEPLOYMENT', 'DRIFT']];
  for (const s of [...states].sort((a, b) => a.host.localeCompare(b.host))) {
    const desired = s.desired ? `${s.desired.image ?? '?'} (${shortId(s.desired.imageId)})` : '-';
    const actual = s.actual ? `${s.actual.image ?? '?'} (${shortId(s.actual.imageId)})` : '-';
    const drift = s.drift ? s.drift.reasons.map((r) => r.field).join(',') : 'none';
    rows.push([s.host, desired, actual, s.actual?.state ?? 'missing', s.desired?.deploymentId ?? s.actual?.deploymentId ?? '-', drift]);
  }
  line(io.stdout, `${service} on ${states.length} host${states.length === 1 ? '' : 's'}`);
  line(io.stdout, table(rows));
  return 0;
}
