import { FerryError } from '@ferry/protocol';
import type { UpstreamCounters } from './types.ts';

/** HAProxy's tabular answers, read by their header's column names (their positions move between versions). */

function table(text: string, split: (line: string) => string[], headerAt: (lines: string[]) => number): Record<string, string>[] {
  const lines = text.split('\n').map((l) => l.trimEnd()).filter((l) => l !== '');
  const h = headerAt(lines);
  if (h < 0) throw new FerryError('FERRY_ERR_PROXY_COMMAND', { message: `The proxy answered without a table header: ${text.slice(0, 200)}` });
  const names = split(lines[h].replace(/^#\s*/, ''));
  return lines.slice(h + 1).filter((l) => !l.startsWith('#')).map((line) => {
    const cells = split(line);
    return Object.fromEntries(names.map((n, i) => [n, cells[i] ?? '']));
  });
}

/** `show stat`: one row per frontend, backend and server. */
export function parseShowStat(text: string): Record<string, string>[] {
  return table(text, (l) => l.split(','), (lines) => lines.findIndex((l) => l.startsWith('# pxname')));
}

export interface ServerState {
  backend: string;
  name: string;
  ip: string;
  port: number;
  weight: number;
  /** SRV_ADMF_* bits: 0x01 forced maintenance, 0x08 forced drain. */
  admin: number;
}

/** `show servers state <backend>`: a version line, then a space-separated table. */
export function parseServersState(text: string): ServerState[] {
  return table(text, (l) => l.split(' '), (lines) => lines.findIndex((l) => l.startsWith('# be_id'))).map((r) => ({
    backend: r['be_name'] ?? '',
    name: r['srv_name'] ?? '',
    ip: r['srv_addr'] ?? '',
    port: Number(r['srv_port']),
    weight: Number(r['srv_uweight']),
    admin: Number(r['srv_admin_state']),
  }));
}

export const ADMIN_MAINT = 0x01;
export const ADMIN_DRAIN = 0x08;

const n = (v: string | undefined): number => (v === undefined || v === '' ? 0 : Number(v) || 0);

/** One server row of `show stat` as the contract counts it. */
export function toCounters(row: Record<string, string>): UpstreamCounters {
  return {
    name: row['svname'] ?? '',
    responses: {
      '1xx': n(row['hrsp_1xx']), '2xx': n(row['hrsp_2xx']), '3xx': n(row['hrsp_3xx']),
      '4xx': n(row['hrsp_4xx']), '5xx': n(row['hrsp_5xx']), other: n(row['hrsp_other']),
    },
    errors: n(row['econ']) + n(row['eresp']),
    current: n(row['scur']),
    total: n(row['stot']),
  };
}
