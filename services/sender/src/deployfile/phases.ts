import { FerryError } from '@ferry/protocol';
import { closest, formatPath, type PathSegment } from './problems.ts';
import type { RawProblem } from './schema.ts';

/** What a service waits for in a service it depends on: its container started, or its health check passed. */
export type DependencyCondition = 'started' | 'healthy';

/** One phase of a release: services deployed together, after every service of the phases before. */
export interface Phase {
  name: string;
  services: string[];
}

/** The most phases a release has (the manifest's `release.phases`). */
export const MAX_PHASES = 64;

/** What the order is computed from: each service's `depends_on`, and `phases:` as written, if any. */
export interface OrderInput {
  /** In the document's order. */
  services: ReadonlyArray<[name: string, dependsOn: Readonly<Record<string, { condition: DependencyCondition }>>]>;
  phases?: readonly Phase[] | undefined;
  /**
   * Where a dependency is written (`depends_on` as a list puts `db` at an index, as a map under
   * its name): the path problems are reported at, so they get the line of the dependency itself.
   */
  dependencyPath?: (service: string, dependency: string) => PathSegment[];
}

/**
 * Checks the order of a document and computes its phases. Without `phases:` they are the
 * topological levels of `depends_on` — a service goes in the phase after the last of its
 * dependencies — named `phase-1`, `phase-2`…, each in the document's order. With `phases:` they
 * are as written, and a dependency must sit in an earlier phase. Every problem is returned: a name
 * that is no service, a cycle, a service in no phase or in two, a dependency that is not earlier.
 */
export function orderPhases(input: OrderInput): { phases: Phase[]; problems: RawProblem[] } {
  const names = input.services.map(([name]) => name);
  const known = new Set(names);
  const deps = new Map(input.services.map(([name, dependsOn]) => [name, Object.keys(dependsOn)]));
  const at = input.dependencyPath ?? ((service, dependency) => ['services', service, 'depends_on', dependency]);
  const problems: RawProblem[] = [];

  for (const [service, dependencies] of deps) {
    for (const dependency of dependencies) {
      if (known.has(dependency)) continue;
      const hint = closest(dependency, names);
      problems.push({ path: at(service, dependency), atKey: true, message: `no service "${dependency}" in this file${hint ? ` (did you mean ${hint}?)` : ''}` });
    }
  }
  for (const cycle of cycles(names, (name) => (deps.get(name) ?? []).filter((d) => known.has(d)))) {
    const [first, second] = cycle;
    if (first === undefined || second === undefined) continue;
    problems.push({ path: at(first, second), atKey: true, message: `depends_on forms a cycle: ${cycle.join(' → ')}` });
  }
  if (problems.length > 0) return { phases: [], problems };

  if (input.phases) return { phases: input.phases.map((p) => ({ name: p.name, services: [...p.services] })), problems: checkExplicit(input.phases, names, deps, at) };

  const level = new Map<string, number>();
  const levelOf = (name: string): number => {
    const found = level.get(name);
    if (found !== undefined) return found;
    // No cycle (checked above), so the recursion ends; its depth is at most the number of services.
    const value = Math.max(-1, ...(deps.get(name) ?? []).map(levelOf)) + 1;
    level.set(name, value);
    return value;
  };
  const phases: Phase[] = [];
  for (const name of names) {
    const index = levelOf(name);
    while (phases.length <= index) phases.push({ name: `phase-${phases.length + 1}`, services: [] });
    phases[index]?.services.push(name);
  }
  if (phases.length > MAX_PHASES) {
    problems.push({ path: ['services'], message: `depends_on chains make ${phases.length} phases; a release has at most ${MAX_PHASES}` });
  }
  return { phases, problems };
}

/** `phases:` as written: each service of the file in exactly one phase, after its dependencies. */
function checkExplicit(phases: readonly Phase[], names: string[], deps: Map<string, string[]>, at: (service: string, dependency: string) => PathSegment[]): RawProblem[] {
  const problems: RawProblem[] = [];
  const phaseOf = new Map<string, number>();
  const seenNames = new Set<string>();
  phases.forEach((phase, i) => {
    if (seenNames.has(phase.name)) problems.push({ path: ['phases', i, 'name'], message: `another phase is named "${phase.name}"` });
    seenNames.add(phase.name);
    phase.services.forEach((service, j) => {
      if (!deps.has(service)) {
        const hint = closest(service, names);
        problems.push({ path: ['phases', i, 'services', j], message: `no service "${service}" in this file${hint ? ` (did you mean ${hint}?)` : ''}` });
        return;
      }
      const earlier = phaseOf.get(service);
      if (earlier !== undefined) {
        problems.push({ path: ['phases', i, 'services', j], message: `"${service}" is already in phase "${phases[earlier]?.name ?? earlier}"` });
        return;
      }
      phaseOf.set(service, i);
    });
  });
  for (const name of names) {
    if (!phaseOf.has(name)) problems.push({ path: ['services', name], atKey: true, message: `in no phase: list it under one of phases (${phases.map((p) => p.name).join(', ')})` });
  }
  for (const [service, dependencies] of deps) {
    const mine = phaseOf.get(service);
    if (mine === undefined) continue;
    for (const dependency of dependencies) {
      const theirs = phaseOf.get(dependency);
      if (theirs === undefined || theirs < mine) continue;
      const where = theirs === mine ? 'the same phase' : `a later phase, "${phases[theirs]?.name ?? theirs}"`;
      problems.push({ path: at(service, dependency), atKey: true, message: `depends on ${dependency}, which phases put in ${where}: a dependency goes in an earlier phase than "${phases[mine]?.name ?? mine}"` });
    }
  }
  return problems;
}

/**
 * Every elementary cycle found by a depth-first walk, each once, as `a → b → … → a`, starting at
 * the service of the cycle that comes first in `names` (so the report is the same run after run).
 */
function cycles(names: string[], edges: (name: string) => string[]): string[][] {
  const found: string[][] = [];
  const seen = new Set<string>();
  const order = new Map(names.map((n, i) => [n, i]));
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (name: string): void => {
    state.set(name, 'open');
    stack.push(name);
    for (const next of edges(name)) {
      const s = state.get(next);
      if (s === 'open') {
        const loop = stack.slice(stack.indexOf(next));
        const start = loop.reduce((best, n, i) => ((order.get(n) ?? 0) < (order.get(loop[best] ?? '') ?? 0) ? i : best), 0);
        const rotated = [...loop.slice(start), ...loop.slice(0, start)];
        const key = rotated.join('\0');
        if (!seen.has(key)) {
          seen.add(key);
          found.push([...rotated, rotated[0] ?? next]);
        }
      } else if (s === undefined) {
        visit(next);
      }
    }
    stack.pop();
    state.set(name, 'done');
  };
  for (const name of names) if (!state.has(name)) visit(name);
  return found;
}

/** A validated document's phases, `only` (the services `--only` names) keeping only those. */
export function phasesOf(document: {
  services: Record<string, { depends_on?: Record<string, { condition: DependencyCondition }> | undefined }>;
  phases?: readonly Phase[] | undefined;
}, only?: readonly string[]): Phase[] {
  const { phases, problems } = orderPhases({
    services: Object.entries(document.services).map(([name, entry]) => [name, entry.depends_on ?? {}]),
    phases: document.phases,
  });
  if (problems.length > 0) {
    // A validated document has none; a document made by hand may.
    throw new FerryError('FERRY_ERR_BAD_DEPLOYMENT_FILE', {
      message: `The deployment document's order is invalid:\n  - ${problems.map((p) => `${formatPath(p.path)}: ${p.message}`).join('\n  - ')}`,
      details: { problems: problems.map((p) => ({ path: formatPath(p.path), message: p.message })) },
    });
  }
  if (!only || only.length === 0) return phases;
  return phases.map((p) => ({ name: p.name, services: p.services.filter((s) => only.includes(s)) })).filter((p) => p.services.length > 0);
}
