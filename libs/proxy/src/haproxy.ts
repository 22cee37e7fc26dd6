import { chmod, mkdir, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError, type Route } from '@ferry/protocol';
import { normalizePem, selfSignedPem } from './certs.ts';
import { checkListen, checkLogTarget, proxyPaths, renderConfig, slotName, slotsOf, type ProxyPaths } from './config.ts';
import { writeFileAtomic } from '@ferry/durable';
import { checkDirPath, checkHost, checkRoute, checkService, checkUpstream, checkUpstreamName, parseAddress } from './names.ts';
import { checkConfig, haproxyPids, killHaproxy, startHaproxy } from './process.ts';
import { RuntimeClient } from './runtime.ts';
import { ADMIN_DRAIN, ADMIN_MAINT, parseServersState, parseShowStat, toCounters, type ServerState } from './stats.ts';
import { assignSlot, cloneEntry, loadTable, mapEntries, renderMap, saveTable, type TableEntry } from './table.ts';
import type { Proxy, ProxyRoute, ProxySettings, Upstream, UpstreamCounters } from './types.ts';

export const DEFAULT_SLOTS = 64;
export const MAX_SLOTS = 4096;
const DRAIN_POLL_MS = 100;
/**
 * How long a server taken out of a route stays in maintenance before it is deleted. HAProxy 2.6
 * frees a deleted server that a stream still lists (one waiting between two connection attempts to
 * it, counted in neither its current nor its queued sessions) and the stream's end then writes into
 * freed memory: the heap is corrupt and HAProxy aborts at a later allocation (seen under load when
 * stop-first took a stopped container's server out; fixed upstream only in 2.9). No stream lists a
 * server longer than its connection attempts take: 3 × (5 s connect timeout + 1 s between tries).
 */
export const RETIRE_MS = 30_000;

/** The proxy of one host: HAProxy driven through its admin socket, reconciled to the route table. */
export function createHaproxyProxy(settings: ProxySettings): Proxy {
  return new HaproxyProxy(settings);
}

class HaproxyProxy implements Proxy {
  private readonly paths: ProxyPaths;
  private readonly client: RuntimeClient;
  private readonly binary: string;
  private readonly slotsWanted: number;
  private entries: TableEntry[] | undefined;
  /** What the running HAProxy was started with (its config file), which may lag the settings. */
  private running = { slots: 0, https: false };
  private queue: Promise<unknown> = Promise.resolve();
  private readonly settings: ProxySettings;
  private readonly retireMs: number;
  /** Servers in maintenance waiting to be deleted (`backend/name` → since when, ms). */
  private readonly retired = new Map<string, number>();

  constructor(settings: ProxySettings) {
    this.settings = settings;
    checkDirPath(settings.dir);
    checkListen('the proxy HTTP listener', settings.http);
    if (settings.https !== undefined) checkListen('the proxy HTTPS listener', settings.https);
    if (settings.log !== undefined) checkLogTarget(settings.log);
    const slots = settings.slots ?? DEFAULT_SLOTS;
    if (!Number.isInteger(slots) || slots < 1 || slots > MAX_SLOTS) throw new FerryError('FERRY_ERR_CONFIG', { message: `Proxy slots: a whole number from 1 to ${MAX_SLOTS}` });
    this.slotsWanted = slots;
    this.paths = proxyPaths(settings.dir);
    // A unix socket's path is at most 107 bytes.
    if (Buffer.byteLength(this.paths.masterSocket) > 100) throw new FerryError('FERRY_ERR_CONFIG', { message: 'The proxy directory path is too long for its sockets (at most about 88 characters)' });
    this.client = new RuntimeClient(this.paths.adminSocket);
    this.binary = settings.binary ?? 'haproxy';
    this.retireMs = settings.retireMs ?? RETIRE_MS;
  }

  /** One change at a time: each reads the table, writes it, then makes HAProxy agree. */
  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private warn(message: string): void {
    this.settings.onWarning?.(message);
  }

  private async table(): Promise<TableEntry[]> {
    if (this.entries === undefined) {
      await mkdir(this.settings.dir, { recursive: true, mode: 0o700 });
      await chmod(this.settings.dir, 0o700);
      await mkdir(this.paths.certs, { recursive: true, mode: 0o700 });
      this.entries = await loadTable(this.settings.dir);
    }
    return this.entries;
  }

  private async save(entries: TableEntry[]): Promise<void> {
    await saveTable(this.settings.dir, entries);
    this.entries = entries;
  }

  start(): Promise<void> {
    return this.locked(async () => {
      await this.table();
      await this.ensureRunning();
      await this.reconcile();
      await this.sweepRetired();
      await this.installOperatorCertificates();
    });
  }

  check(): Promise<boolean> {
    return this.locked(async () => {
      try {
        await this.table();
        await this.ensureRunning();
        await this.reconcile();
        await this.sweepRetired();
        return true;
      } catch (err) {
        this.warn(`proxy check failed: ${(err as Error).message}`);
        return false;
      }
    });
  }

  /** Checked before anything is sent: a bad argument is a rejection, never a throw. */
  async setRoute(service: string, route: Route): Promise<void> {
    checkService(service);
    checkRoute(route);
    return this.locked(async () => {
      await this.ensureKnownSlots();
      const entries = (await this.table()).map(cloneEntry);
      const slot = assignSlot(entries, service, route, this.running.slots || this.slotsWanted);
      const own = entries.find((e) => e.service === service);
      const clean: Route = { port: route.port, ...(route.host !== undefined ? { host: route.host } : {}), ...(route.path !== undefined ? { path: route.path } : {}), ...(route.tls ? { tls: true } : {}) };
      if (own) {
        own.route = clean;
        own.slot = slot;
      } else {
        entries.push({ service, route: clean, slot, upstreams: [] });
      }
      await this.save(entries);
      await this.applyOrRevive(() => this.syncMaps());
    });
  }

  async setUpstream(service: string, upstream: Upstream): Promise<void> {
    checkService(service);
    checkUpstream(upstream);
    return this.locked(async () => {
      const entries = (await this.table()).map(cloneEntry);
      const entry = this.entryOf(entries, service);
      const wanted = { name: upstream.name, address: upstream.address, weight: upstream.weight };
      const i = entry.upstreams.findIndex((u) => u.name === upstream.name);
      if (i >= 0) entry.upstreams[i] = wanted; else entry.upstreams.push(wanted);
      await this.save(entries);
      await this.applyOrRevive(async () => {
        const states = await this.serverStates();
        await this.syncServer(slotName(entry.slot), wanted, states.find((s) => s.backend === slotName(entry.slot) && s.name === wanted.name));
      });
    });
  }

  async drain(service: string, name: string, timeoutMs: number, signal?: AbortSignal): Promise<number> {
    checkService(service);
    checkUpstreamName(name);
    const backend = await this.locked(async () => {
      const entries = (await this.table()).map(cloneEntry);
      const entry = this.entryOf(entries, service);
      const upstream = entry.upstreams.find((u) => u.name === name);
      if (!upstream) return undefined;
      // Weight 0 in the table: if HAProxy restarts while this drains, it comes back sent nothing new.
      upstream.weight = 0;
      await this.save(entries);
      const b = slotName(entry.slot);
      await this.applyOrRevive(async () => {
        await this.client.expect(['set', 'server', `${b}/${name}`, 'weight', '0'], 'empty');
        await this.client.expect(['set', 'server', `${b}/${name}`, 'state', 'drain'], 'empty');
      });
      return b;
    });
    if (backend === undefined) return 0;
    const deadline = Date.now() + Math.max(0, timeoutMs);
    let open = await this.sessions(backend, name);
    while (open > 0 && Date.now() < deadline) {
      signal?.throwIfAborted();
      await sleep(Math.min(DRAIN_POLL_MS, Math.max(1, deadline - Date.now())), undefined, signal ? { signal } : undefined);
      open = await this.sessions(backend, name);
    }
    await this.removeUpstream(service, name);
    return open;
  }

  async removeUpstream(service: string, name: string): Promise<void> {
    checkService(service);
    checkUpstreamName(name);
    return this.locked(async () => {
      const entries = (await this.table()).map(cloneEntry);
      const entry = entries.find((e) => e.service === service);
      if (!entry) return;
      entry.upstreams = entry.upstreams.filter((u) => u.name !== name);
      await this.save(entries);
      await this.applyOrRevive(async () => {
        const states = await this.serverStates();
        if (states.some((s) => s.backend === slotName(entry.slot) && s.name === name)) await this.deleteServer(slotName(entry.slot), name);
      });
    });
  }

  async counters(service: string): Promise<UpstreamCounters[]> {
    checkService(service);
    return this.locked(async () => {
      const entry = this.entryOf(await this.table(), service);
      const rows = await this.applyOrRevive(async () => parseShowStat(await this.client.send(['show', 'stat', slotName(entry.slot), '4', '-1'])));
      const names = new Set(entry.upstreams.map((u) => u.name));
      return rows.filter((r) => r['pxname'] === slotName(entry.slot) && names.has(r['svname'] ?? '')).map(toCounters);
    });
  }

  async removeRoute(service: string): Promise<void> {
    checkService(service);
    return this.locked(async () => {
      const entries = (await this.table()).map(cloneEntry);
      const entry = entries.find((e) => e.service === service);
      if (!entry) return;
      await this.save(entries.filter((e) => e !== entry));
      await this.applyOrRevive(async () => {
        await this.syncMaps();
        for (const s of (await this.serverStates()).filter((st) => st.backend === slotName(entry.slot))) await this.deleteServer(s.backend, s.name);
      });
    });
  }

  routes(): Promise<ProxyRoute[]> {
    return this.locked(async () => (await this.table()).map((e) => {
      const { slot: _slot, ...route } = cloneEntry(e);
      return route;
    }));
  }

  async setCertificate(host: string, pem: string): Promise<void> {
    checkHost(host);
    const text = normalizePem(pem);
    return this.locked(async () => {
      await this.table();
      await this.installCertificate(host, text);
    });
  }

  async close(): Promise<void> {
    // HAProxy is left running: it serves the routes while the receiver is away.
    await this.queue;
  }

  // ---- HAProxy's process

  /** Adopts the HAProxy that answers on the admin socket, or starts one (after killing any stuck remains). */
  private async ensureRunning(): Promise<void> {
    const rendered = renderConfig({ paths: this.paths, http: this.settings.http, https: this.settings.https, slots: this.slotsWanted, log: this.settings.log });
    if (await this.client.alive()) {
      const written = await readFile(this.paths.config, 'utf8').catch(() => '');
      this.running = { slots: slotsOf(written), https: written.includes(' ssl crt-list ') };
      if (written !== rendered) this.warn('the proxy settings changed while HAProxy runs: they apply when HAProxy is next started');
      return;
    }
    // Said, so that an operator can tell a HAProxy that died from one that stopped answering.
    const pids = await haproxyPids(this.paths);
    if (pids.length > 0) this.warn(`HAProxy (pid ${pids.join(', ')}) does not answer on its admin socket: it is killed and started again`);
    else if (this.entries !== undefined && this.running.slots > 0) this.warn('HAProxy is not running (it exited or was killed): it is started again');
    await killHaproxy(this.paths);
    const entries = await this.table();
    // Routes, servers and certificates come back from the table; the files make the routes serve from the first request.
    if (!await readFile(this.paths.defaultCert, 'utf8').catch(() => '')) await writeFileAtomic(this.paths.defaultCert, await selfSignedPem(this.settings.dir));
    await writeFileAtomic(this.paths.crtList, await this.crtList());
    const maps = mapEntries(entries.filter((e) => e.slot < this.slotsWanted));
    await writeFileAtomic(this.paths.hostMap, renderMap(maps.host));
    await writeFileAtomic(this.paths.pathMap, renderMap(maps.path));
    await writeFileAtomic(this.paths.tlsMap, renderMap(maps.tls));
    const written = await readFile(this.paths.config, 'utf8').catch(() => '');
    if (written !== rendered) {
      await writeFileAtomic(`${this.paths.config}.new`, rendered);
      await checkConfig(this.binary, `${this.paths.config}.new`);
      await writeFileAtomic(this.paths.config, rendered);
    }
    await startHaproxy(this.binary, this.paths);
    this.running = { slots: this.slotsWanted, https: this.settings.https !== undefined };
  }

  /** The running HAProxy's slot count, read from its config when nothing started or adopted it yet. */
  private async ensureKnownSlots(): Promise<void> {
    if (this.running.slots > 0) return;
    const written = await readFile(this.paths.config, 'utf8').catch(() => '');
    if (written) this.running = { slots: slotsOf(written), https: written.includes(' ssl crt-list ') };
  }

  /** Runs a runtime change; if HAProxy is gone, starts it again and reconciles everything instead. */
  private async applyOrRevive<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof FerryError) || err.code !== 'FERRY_ERR_PROXY_UNAVAILABLE') throw err;
      if (await this.client.alive()) throw err;
      await this.ensureRunning();
      await this.reconcile();
      return await fn();
    }
  }

  // ---- Reconciliation

  /** Makes the running HAProxy agree with the table: slots, maps, servers, certificates. */
  private async reconcile(): Promise<void> {
    let entries = await this.table();
    // Routes in slots the running HAProxy does not have (fewer slots configured) move to free ones.
    if (entries.some((e) => e.slot >= this.running.slots)) {
      entries = entries.map(cloneEntry);
      for (const e of entries.filter((x) => x.slot >= this.running.slots)) {
        try {
          e.slot = assignSlot(entries.filter((x) => x !== e && x.slot < this.running.slots), e.service, e.route, this.running.slots);
        } catch {
          this.warn(`no proxy slot for the route of ${e.service}: it is not served until HAProxy has more slots`);
        }
      }
      await this.save(entries);
    }
    await this.syncMaps();
    const states = await this.serverStates();
    const wanted = new Map<string, Upstream[]>();
    for (const e of entries.filter((x) => x.slot < this.running.slots)) wanted.set(slotName(e.slot), e.upstreams);
    for (const s of states) {
      if (this.retired.has(`${s.backend}/${s.name}`) || wanted.get(s.backend)?.some((u) => u.name === s.name)) continue;
      await this.deleteServer(s.backend, s.name).catch((err: unknown) => this.warn(`proxy: ${(err as Error).message}`));
    }
    for (const [backend, upstreams] of wanted) {
      for (const u of upstreams) await this.syncServer(backend, u, states.find((s) => s.backend === backend && s.name === u.name));
    }
    if (this.running.https) await this.reconcileCertificates();
  }

  /** Rewrites a map (file and live) only when its live entries differ from the table's. */
  private async syncMaps(): Promise<void> {
    const maps = mapEntries((await this.table()).filter((e) => e.slot < this.running.slots));
    await this.syncMap(this.paths.hostMap, maps.host);
    await this.syncMap(this.paths.pathMap, maps.path);
    if (this.running.https) await this.syncMap(this.paths.tlsMap, maps.tls);
  }

  private async syncMap(file: string, entries: [string, string][]): Promise<void> {
    const live = (await this.client.send(['show', 'map', file])).split('\n').filter((l) => l.trim() !== '')
      .map((l) => l.split(' ')).map((p) => `${p[1]} ${p[2]}`);
    const onDisk = await readFile(file, 'utf8').catch(() => '');
    const text = renderMap(entries);
    if (onDisk !== text) await writeFileAtomic(file, text);
    if (live.join('\n') === entries.map(([k, v]) => `${k} ${v}`).join('\n')) return;
    // A new version filled, then committed: requests see the old map or the new one, never half of it.
    const answer = await this.client.expect(['prepare', 'map', file], /^New version created: \d+$/);
    const version = `@${/(\d+)/.exec(answer)![1]}`;
    for (const [k, v] of entries) await this.client.expect(['add', 'map', version, file, k, v], 'empty');
    await this.client.expect(['commit', 'map', version, file], 'empty');
  }

  /** The dynamic servers of every slot backend. */
  private async serverStates(): Promise<ServerState[]> {
    return parseServersState(await this.client.send(['show', 'servers', 'state'])).filter((s) => /^slot\d+$/.test(s.backend));
  }

  private async syncServer(backend: string, u: Upstream, state: ServerState | undefined): Promise<void> {
    const id = `${backend}/${u.name}`;
    // A retired server wanted again (a rollback to the container it was) is the same server, made ready below.
    this.retired.delete(id);
    const { ip, port } = parseAddress(u.address);
    if (!state) {
      await this.client.expect(['add', 'server', id, `${ip}:${port}`, 'weight', String(u.weight)], /New server registered/);
      // A dynamic server starts in maintenance.
      await this.client.expect(['enable', 'server', id], 'empty');
      return;
    }
    if (state.ip !== ip || state.port !== port) await this.client.expect(['set', 'server', id, 'addr', ip, 'port', String(port)], /^(?:|.*changed from.*)$/s);
    if (state.weight !== u.weight) await this.client.expect(['set', 'server', id, 'weight', String(u.weight)], 'empty');
    // Weight 0 is how a drain is kept in the table: leave a draining server draining.
    if (u.weight > 0 && (state.admin & (ADMIN_MAINT | ADMIN_DRAIN)) !== 0) await this.client.expect(['set', 'server', id, 'state', 'ready'], 'empty');
  }

  /**
   * Takes a server out of its route: maintenance (sent nothing new), its sessions shut, and
   * deleted only RETIRE_MS later by sweepRetired (see RETIRE_MS for why not at once).
   */
  private async deleteServer(backend: string, name: string): Promise<void> {
    const id = `${backend}/${name}`;
    await this.client.expect(['set', 'server', id, 'state', 'maint'], 'empty');
    await this.client.expect(['shutdown', 'sessions', 'server', id], 'empty');
    if (!this.retired.has(id)) this.retired.set(id, Date.now());
  }

  /** Deletes the retired servers whose time is up and that nothing uses; the others wait for the next sweep. */
  private async sweepRetired(): Promise<void> {
    if (this.retired.size === 0) return;
    const live = new Set((await this.serverStates()).map((st) => `${st.backend}/${st.name}`));
    for (const [id, since] of [...this.retired]) {
      if (!live.has(id)) {
        this.retired.delete(id);
        continue;
      }
      if (Date.now() - since < this.retireMs) continue;
      const [backend = '', name = ''] = id.split('/');
      if (!await this.idle(backend, name)) continue;
      const answer = (await this.client.send(['del', 'server', id])).trim();
      if (/Server deleted/.test(answer)) this.retired.delete(id);
      else this.warn(`proxy: HAProxy did not delete ${id} (${answer.slice(0, 200)}); it stays in maintenance and is tried again`);
    }
  }

  /** No current and no queued session on the server. */
  private async idle(backend: string, name: string): Promise<boolean> {
    const rows = parseShowStat(await this.client.send(['show', 'stat', backend, '4', '-1']));
    const row = rows.find((r) => r['pxname'] === backend && r['svname'] === name);
    return !row || (Number(row['scur'] || 0) === 0 && Number(row['qcur'] || 0) === 0);
  }

  private async sessions(backend: string, name: string): Promise<number> {
    const rows = parseShowStat(await this.client.send(['show', 'stat', backend, '4', '-1']));
    const row = rows.find((r) => r['pxname'] === backend && r['svname'] === name);
    return row ? toCounters(row).current : 0;
  }

  private entryOf(entries: TableEntry[], service: string): TableEntry {
    const entry = entries.find((e) => e.service === service);
    if (!entry) throw new FerryError('FERRY_ERR_NOT_FOUND', { message: `The proxy has no route for ${service}` });
    return entry;
  }

  // ---- Certificates

  private certPath(host: string): string {
    return join(this.paths.certs, `${host}.pem`);
  }

  private async certHosts(): Promise<string[]> {
    const names = await readdir(this.paths.certs).catch(() => [] as string[]);
    return names.filter((n) => n.endsWith('.pem')).map((n) => n.slice(0, -4)).filter((h) => { try { checkHost(h); return true; } catch { return false; } }).sort();
  }

  private async crtList(): Promise<string> {
    return [this.paths.defaultCert, ...(await this.certHosts()).map((h) => this.certPath(h))].map((p) => `${p}\n`).join('');
  }

  /** Writes the host's certificate where a restarted HAProxy loads it, then sets it live. */
  private async installCertificate(host: string, pem: string): Promise<void> {
    const path = this.certPath(host);
    const before = await readFile(path, 'utf8').catch(() => '');
    await writeFileAtomic(path, pem);
    await writeFileAtomic(this.paths.crtList, await this.crtList());
    await this.ensureKnownSlots();
    if (!this.running.https) return;
    await this.applyOrRevive(async () => {
      const loaded = await this.loadedCertificates();
      if (loaded.has(path) && before === pem) return;
      await this.setLiveCertificate(path, pem, !loaded.has(path));
    });
  }

  private async loadedCertificates(): Promise<Set<string>> {
    const answer = await this.client.send(['show', 'ssl', 'cert']);
    return new Set(answer.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')).map((l) => l.replace(/^\*/, '')));
  }

  private async setLiveCertificate(path: string, pem: string, isNew: boolean): Promise<void> {
    if (isNew) await this.client.expect(['new', 'ssl', 'cert', path], /New empty certificate store/);
    await this.client.expect(['set', 'ssl', 'cert', path], /Transaction (?:created|updated)/, pem.trimEnd());
    await this.client.expect(['commit', 'ssl', 'cert', path], /Success!/);
    if (isNew) await this.client.expect(['add', 'ssl', 'crt-list', this.paths.crtList, path], /Success!/);
  }

  /** Certificates set since HAProxy started are set again: what it loaded at start it has already. */
  private async reconcileCertificates(): Promise<void> {
    const loaded = await this.loadedCertificates();
    for (const host of await this.certHosts()) {
      const path = this.certPath(host);
      if (loaded.has(path)) continue;
      await this.setLiveCertificate(path, await readFile(path, 'utf8'), true);
    }
  }

  /** The operator's `<host>.pem` files (settings.certificates), installed when they differ from what is served. */
  private async installOperatorCertificates(): Promise<void> {
    const dir = this.settings.certificates;
    if (dir === undefined) return;
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (cause) {
      throw new FerryError('FERRY_ERR_CONFIG', { message: `The proxy certificate directory ${dir} cannot be read`, cause });
    }
    for (const name of names.filter((n) => n.endsWith('.pem')).sort()) {
      const host = name.slice(0, -4);
      try {
        checkHost(host);
        await this.installCertificate(host, normalizePem(await readFile(join(dir, name), 'utf8')));
      } catch (err) {
        this.warn(`proxy certificate ${name} not installed: ${(err as Error).message}`);
      }
    }
  }
}
