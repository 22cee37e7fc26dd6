import { FerryError, isFerryError, nanoCpus, parseMemory, type CapacityReport } from '@ferry/protocol';
import type { DeployDeps, ServiceOutcome } from '../deploy.ts';
import { ReceiverClient } from '../receiver-client.ts';
import { eachLimited } from './limit.ts';
import type { ReleasePlan } from './plan.ts';
import type { HostServices } from './previous.ts';
import { failService } from './service.ts';

/** What one service of a release asks of a host: its `memory` and `cpus` limits, 0 without one. */
export interface ServiceAsk {
  service: string;
  memoryBytes: number;
  cpus: number;
}

/** A host's answer as far as the budget goes. */
export type HostBudget = Pick<CapacityReport, 'budget' | 'committed'>;

/** The limits a service's spec sets; a service without a limit asks for nothing that is counted. */
export function askOf(service: string, spec: { memory?: string | undefined; cpus?: number | undefined }): ServiceAsk {
  return { service, memoryBytes: spec.memory === undefined ? 0 : parseMemory(spec.memory) ?? 0, cpus: spec.cpus ?? 0 };
}

/**
 * Why deploying `asked` on a host would overcommit it, or undefined when it fits: each asked
 * service replaces what runs of it there now (same name), everything else running stays, and the
 * sum must stay within the host's budget, for memory and for CPUs alike.
 * "host-b: memory 3.5 GiB asked (web 2 GiB, api 1.5 GiB) + 1 GiB running > budget 4 GiB".
 */
export function overcommit(host: string, asked: readonly ServiceAsk[], capacity: HostBudget): string | undefined {
  const replaced = new Set(asked.map((a) => a.service));
  const staying = capacity.committed.services.filter((s) => !replaced.has(s.service));
  const problems: string[] = [];
  const memoryAsked = sum(asked.map((a) => a.memoryBytes));
  const memoryRunning = sum(staying.map((s) => s.memoryBytes));
  if (memoryAsked > 0 && memoryAsked + memoryRunning > capacity.budget.memoryBytes) {
    problems.push(`memory ${formatBytes(memoryAsked)} asked (${listed(asked, (a) => a.memoryBytes, formatBytes)}) + ${formatBytes(memoryRunning)} running > budget ${formatBytes(capacity.budget.memoryBytes)}`);
  }
  const cpusAsked = sum(asked.map((a) => nanoCpus(a.cpus)));
  const cpusRunning = sum(staying.map((s) => nanoCpus(s.cpus)));
  if (cpusAsked > 0 && cpusAsked + cpusRunning > nanoCpus(capacity.budget.cpus)) {
    problems.push(`cpus ${formatCpus(cpusAsked)} asked (${listed(asked, (a) => nanoCpus(a.cpus), formatCpus)}) + ${formatCpus(cpusRunning)} running > budget ${formatCpus(nanoCpus(capacity.budget.cpus))}`);
  }
  return problems.length === 0 ? undefined : `${host}: ${problems.join('; ')}`;
}

/** Why the release is refused before its first phase, shaped as run.ts halts a release. */
export interface BudgetHalt {
  phase: number;
  failed: string[];
  error: FerryError;
  interrupted: false;
}

/** How a host's capacity is read: undefined when it cannot say (a receiver older than the route). */
export type CapacityReader = (host: HostServices) => Promise<CapacityReport | undefined>;

/** A host a release would overcommit: the services it deploys there, and why. */
export interface HostOver {
  host: string;
  services: string[];
  message: string;
}

/** Each host's capacity, asked of its receiver (`GET /v1/capacity`), signed as the release's requests are. */
export function receiverCapacity(deps: Pick<DeployDeps, 'credentials'>): CapacityReader {
  return async (h) => await new ReceiverClient({ url: h.url, credentials: deps.credentials, audience: h.host, ...(h.hostKey ? { hostKey: h.hostKey } : {}) }).capacity();
}

/**
 * The hosts of `hosts` that deploying the plan's services there would overcommit, sorted by host.
 * A host that cannot say (a receiver older than the route, or one that does not answer now) is
 * not checked, and `onWarning` is told so. A release that asks for no limits at all asks nothing.
 */
export async function hostsOverBudget(
  plan: ReleasePlan, hosts: readonly HostServices[], read: CapacityReader, onWarning: ((message: string) => void) | undefined, parallel: number,
): Promise<HostOver[]> {
  const asks = new Map(plan.services.map(({ name, entry }) => [name, askOf(name, entry)]));
  if (![...asks.values()].some((a) => a.memoryBytes > 0 || a.cpus > 0)) return [];
  const over: HostOver[] = [];
  await eachLimited(hosts, parallel, async (h) => {
    let capacity: CapacityReport | undefined;
    try {
      capacity = await read(h);
    } catch (err) {
      if (!isFerryError(err)) throw err;
      onWarning?.(`${h.host}: could not read its capacity (${err.message}); its budget is not checked`);
      return;
    }
    if (!capacity) {
      onWarning?.(`${h.host}: the receiver does not report its capacity (an older version); its budget is not checked`);
      return;
    }
    const message = overcommit(h.host, h.services.flatMap((s) => asks.get(s) ?? []), capacity);
    if (message) over.push({ host: h.host, services: h.services, message });
  });
  return over.sort((a, b) => a.host.localeCompare(b.host));
}

/**
 * Asks every host of the release for its capacity and refuses the release, before anything is
 * built or sent, when it would commit more than a host's budget (FERRY_ERR_OVER_BUDGET, naming
 * each host and the numbers); the services deployed on such a host fail with that error.
 */
export async function refuseOverBudget(plan: ReleasePlan, hosts: readonly HostServices[], outcomes: readonly ServiceOutcome[], deps: DeployDeps, parallel: number): Promise<BudgetHalt | undefined> {
  const over = await hostsOverBudget(plan, hosts, receiverCapacity(deps), deps.onWarning, parallel);
  if (over.length === 0) return undefined;
  const failed = failedServices(plan, over);
  const error = new FerryError('FERRY_ERR_OVER_BUDGET', {
    message: `Release ${plan.id} refused, nothing built or sent: ${over.map((o) => o.message).join('; ')}`,
    details: { releaseId: plan.id, hosts: over.map((o) => o.host), failed },
  });
  for (const outcome of outcomes) if (failed.includes(outcome.service)) failService(outcome, error, deps);
  return { phase: 0, failed, error, interrupted: false };
}

/**
 * Before a paused release goes on: the hosts of the waves still to go are asked for their
 * capacity again — it may have changed while the release waited — and when the release would
 * overcommit one, it does not go on (FERRY_ERR_OVER_BUDGET naming each host and the numbers).
 * Nothing is sent then, and the release stays paused.
 *
 * @throws FerryError FERRY_ERR_OVER_BUDGET.
 */
export async function refuseToGoOnOverBudget(
  plan: ReleasePlan, hosts: readonly HostServices[], read: CapacityReader, onWarning: ((message: string) => void) | undefined, parallel: number, wave: string,
): Promise<void> {
  const over = await hostsOverBudget(plan, hosts, read, onWarning, parallel);
  if (over.length === 0) return;
  throw new FerryError('FERRY_ERR_OVER_BUDGET', {
    message: `Release ${plan.id} does not go on with wave ${wave}, nothing sent, it stays paused: ${over.map((o) => o.message).join('; ')}`,
    details: { releaseId: plan.id, hosts: over.map((o) => o.host), failed: failedServices(plan, over) },
  });
}

function failedServices(plan: ReleasePlan, over: readonly HostOver[]): string[] {
  return plan.services.map((s) => s.name).filter((name) => over.some((o) => o.services.includes(name)));
}

function sum(values: readonly number[]): number {
  return values.reduce((total, v) => total + v, 0);
}

function listed(asked: readonly ServiceAsk[], amount: (a: ServiceAsk) => number, format: (n: number) => string): string {
  return asked.filter((a) => amount(a) > 0).map((a) => `${a.service} ${format(amount(a))}`).join(', ');
}

/** Bytes in binary units, as limits are written: `512 MiB`, `1.5 GiB`, one decimal at most. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number(value.toFixed(1))} ${units[unit]}`;
}

function formatCpus(nano: number): string {
  return String(Number((nano / 1e9).toFixed(3)));
}
