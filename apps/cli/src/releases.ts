import type { ProjectedRelease } from '@ferry/auth';
import { FerryError, RELEASE_ID_PATTERN } from '@ferry/protocol';
import { parse, parseInteger } from './args.ts';
import { line, type Io } from './io.ts';
import { ago, registryFrom, shortId, table } from './registry.ts';
import { oneLine } from './terminal.ts';

const ID_HINT = 'a release id, rel-YYYYMMDDTHHMMSSZ-<8 hex> (see "ferry releases")';

/** `ferry releases`: what it does and takes is its help text, in help.ts. */
export async function releasesCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { project: { type: 'string' }, limit: { type: 'string' }, before: { type: 'string' }, json: { type: 'boolean' } });
  const limit = parseInteger('limit', values.limit, 1, 200) ?? 20;
  if (values.before !== undefined && !RELEASE_ID_PATTERN.test(values.before)) throw new FerryError('FERRY_ERR_USAGE', { message: `--before: ${ID_HINT}` });
  const page = await registryFrom(io, 'releases').releases({
    limit, ...(values.before === undefined ? {} : { before: values.before }), ...(values.project === undefined ? {} : { project: values.project }),
  });
  if (values.json) {
    line(io.stdout, JSON.stringify(page));
    return 0;
  }
  if (page.releases.length === 0) {
    line(io.stdout, values.project !== undefined || values.before !== undefined ? 'No release matches.' : 'The registry knows no release yet ("ferry deploy" makes one).');
    return 0;
  }
  const rows = [['ID', 'PROJECT', 'STATE', 'SERVICES', 'HOSTS', 'WHEN']];
  for (const r of page.releases) rows.push([r.id, r.project || '-', r.state, String(r.services.length), String(r.hosts.length), `${ago(r.createdAt)} (${r.createdAt})`]);
  line(io.stdout, table(rows));
  if (page.next !== undefined) line(io.stderr, `More: ferry releases${values.project === undefined ? '' : ` --project ${values.project}`} --before ${page.next}`);
  return 0;
}

/** `ferry release show ID`: what it does and takes is its help text, in help.ts. */
export async function releaseCommand(args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'continue') return await (await import('./deploy.ts')).continueCommand(rest, io);
  if (sub === 'promote' || sub === 'abort') return await (await import('./canary.ts')).canaryCommand(sub, rest, io);
  if (sub !== 'show') {
    throw new FerryError('FERRY_ERR_USAGE', { message: sub === undefined ? 'ferry release: say what, e.g. "ferry release show ID"' : `ferry release ${sub}: unknown; "ferry release show ID" shows one release, "ferry release continue ID" goes on with a paused one, "ferry release promote|abort SERVICE" ends a canary` });
  }
  const { values, positionals } = parse(rest, { json: { type: 'boolean' } }, 1);
  const id = positionals[0];
  if (id === undefined || !RELEASE_ID_PATTERN.test(id)) throw new FerryError('FERRY_ERR_USAGE', { message: `ferry release show: name ${ID_HINT}` });
  const release = await registryFrom(io, 'release show').release(id);
  if (values.json) {
    line(io.stdout, JSON.stringify({ release }));
    return 0;
  }
  for (const text of describe(release)) line(io.stdout, text);
  return 0;
}

/** The release as a few blocks of text: facts, phases, waves, then the outcome of each service on each host. */
function describe(r: ProjectedRelease): string[] {
  const out: string[] = [];
  const facts: string[][] = [
    ['project', r.project || '-'],
    ['state', r.state],
    ['created', `${r.createdAt} (${ago(r.createdAt)})`],
  ];
  if (r.finishedAt !== undefined) facts.push(['finished', r.finishedAt]);
  if (r.paused) facts.push(['paused', `before wave ${r.paused.wave + 1}, ${r.paused.until !== undefined ? `until ${r.paused.until}` : 'until "ferry release continue"'}`]);
  if (r.error) facts.push(['error', `${r.error.message} [${r.error.code}]`]);
  if (r.previousId !== undefined) facts.push(['previous', r.previousId]);
  if (r.rolledBackTo !== undefined) facts.push(['rolled back to', r.rolledBackTo]);
  if (r.startedBy !== undefined) facts.push(['started by', r.startedBy]);
  const width = Math.max(...facts.map(([k]) => k?.length ?? 0));
  out.push(`release ${r.id}`, ...facts.map(([k, v]) => oneLine(`  ${(k ?? '').padEnd(width)}  ${v ?? ''}`)));

  const services = serviceNames(r);
  if (r.phases.length > 0) {
    const rows = [['PHASE', 'NAME', 'SERVICES', 'DONE']];
    r.phases.forEach((name, phase) => {
      const done = r.completed.phases.filter((p) => p.phase === phase).map((p) => (p.wave === undefined ? '✔' : `wave ${p.wave + 1}`));
      rows.push([`phase ${phase + 1}`, name, r.services.filter((s) => s.phase === phase).map((s) => s.name).join(', ') || '-', done.join(', ') || '-']);
    });
    out.push('', table(rows));
  }
  if (r.waves.length > 0) {
    const rows = [['WAVE', 'NAME', 'HOSTS', 'DONE']];
    r.waves.forEach((hosts, wave) => {
      const done = r.completed.waves.find((w) => w.wave === wave);
      rows.push([`wave ${wave + 1}`, done?.name ?? '-', hosts.join(', ') || '-', done ? '✔' : '-']);
    });
    out.push('', table(rows));
  }
  if (r.services.length > 0) {
    const rows = [['SERVICE', 'IMAGE', 'IMAGE ID', 'PHASE', 'DEPENDS ON']];
    for (const s of r.services) {
      rows.push([s.name, s.image || '-', shortId(s.imageId), String(s.phase + 1), s.dependsOn.map((d) => `${d.service} (${d.condition})`).join(', ') || '-']);
    }
    out.push('', table(rows));
  }
  const hosts = hostNames(r);
  if (hosts.length > 0 && services.length > 0) {
    const rows = [['HOST', ...services.map((s) => s.toUpperCase())]];
    for (const host of hosts) rows.push([host, ...services.map((s) => r.outcomes[host]?.[s] ?? '-')]);
    out.push('', table(rows));
  }
  return out;
}

/** The release's services in plan order, then any only a receiver named. */
function serviceNames(r: ProjectedRelease): string[] {
  const names = r.services.map((s) => s.name);
  for (const row of Object.values(r.outcomes)) for (const service of Object.keys(row)) if (!names.includes(service)) names.push(service);
  return names;
}

/** Hosts in wave order, then any only a receiver named. */
function hostNames(r: ProjectedRelease): string[] {
  const names = r.waves.flat();
  for (const host of Object.keys(r.outcomes).sort()) if (!names.includes(host)) names.push(host);
  return [...new Set(names)];
}
