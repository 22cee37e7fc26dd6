import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeRecordFile } from '@ferry/durable';
import { FerryError, RouteSchema, type Route } from '@ferry/protocol';
import { slotName } from './config.ts';
import { checkRoute, checkService, checkUpstream } from './names.ts';
import type { ProxyRoute, Upstream } from './types.ts';

/**
 * The route table: which service has which route, in which slot, with which upstreams. It is the
 * truth HAProxy is reconciled to, since HAProxy forgets everything set at run time when it restarts.
 */
export interface TableEntry extends ProxyRoute {
  slot: number;
}

const UpstreamSchema = z.object({ name: z.string(), address: z.string(), weight: z.number() });
const TableSchema = z.object({
  version: z.literal(1),
  routes: z.array(z.object({ service: z.string(), route: RouteSchema, slot: z.int().min(0), upstreams: z.array(UpstreamSchema) })),
});

const TABLE_ID = 'routes';

export async function loadTable(dir: string): Promise<TableEntry[]> {
  let text: string;
  try {
    text = await readFile(join(dir, `${TABLE_ID}.json`), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new FerryError('FERRY_ERR_INTERNAL', { message: 'The proxy route table cannot be read', cause: err });
  }
  const parsed = TableSchema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new FerryError('FERRY_ERR_INTERNAL', { message: `The proxy route table ${join(dir, 'routes.json')} is not valid` });
  // Checked as any input: the file is the receiver's own, but what it holds becomes runtime commands.
  for (const e of parsed.data.routes) {
    checkService(e.service);
    checkRoute(e.route);
    e.upstreams.forEach(checkUpstream);
  }
  return parsed.data.routes;
}

export async function saveTable(dir: string, entries: TableEntry[]): Promise<void> {
  await writeRecordFile(dir, TABLE_ID, { version: 1, routes: entries });
}

/** The map key a route is matched by: `host/path` in the host map, or `path` in the path map. */
export function routeKey(route: Route): { map: 'host' | 'path'; key: string } {
  if (route.host !== undefined) return { map: 'host', key: `${route.host}${route.path ?? '/'}` };
  return { map: 'path', key: route.path! };
}

/** The slot a service gets: its own, else the lowest free one; throws ROUTE_TAKEN / ROUTES_FULL. */
export function assignSlot(entries: TableEntry[], service: string, route: Route, slots: number): number {
  const { map, key } = routeKey(route);
  const holder = entries.find((e) => e.service !== service && routeKey(e.route).map === map && routeKey(e.route).key === key);
  if (holder) {
    throw new FerryError('FERRY_ERR_ROUTE_TAKEN', { details: { service, route: key, heldBy: holder.service } });
  }
  const own = entries.find((e) => e.service === service);
  if (own && own.slot < slots) return own.slot;
  const used = new Set(entries.filter((e) => e.service !== service).map((e) => e.slot));
  for (let i = 0; i < slots; i++) if (!used.has(i)) return i;
  throw new FerryError('FERRY_ERR_ROUTES_FULL', { details: { slots } });
}

/** The map files' entries, longest key first (HAProxy's map_beg answers its first match). */
export function mapEntries(entries: TableEntry[]): { host: [string, string][]; path: [string, string][]; tls: [string, string][] } {
  const out = { host: [] as [string, string][], path: [] as [string, string][], tls: [] as [string, string][] };
  for (const e of entries) {
    const { map, key } = routeKey(e.route);
    out[map].push([key, slotName(e.slot)]);
    if (e.route.tls && e.route.host !== undefined && !out.tls.some(([h]) => h === e.route.host)) out.tls.push([e.route.host, '1']);
  }
  const order = (a: [string, string], b: [string, string]) => b[0].length - a[0].length || a[0].localeCompare(b[0]);
  out.host.sort(order);
  out.path.sort(order);
  out.tls.sort(order);
  return out;
}

export function renderMap(entries: [string, string][]): string {
  return entries.map(([k, v]) => `${k} ${v}\n`).join('');
}

export function cloneEntry(e: TableEntry): TableEntry {
  return { service: e.service, route: { ...e.route }, slot: e.slot, upstreams: e.upstreams.map((u): Upstream => ({ ...u })) };
}
