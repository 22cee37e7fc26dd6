import { Router } from 'express';
import { PATHS, nanoCpus, type CapacityReport } from '@ferry/protocol';
import { readableBy } from './readable.ts';
import { onlyParameters, requireEmptyBody } from './services.ts';

export interface CapacityRouteDeps {
  capacity: () => Promise<CapacityReport>;
}

/**
 * `GET /v1/capacity`: what this host has, its budget and what Ferry's containers commit
 * (capacity.ts). The services the key may not read are not named: what they commit is summed in
 * one entry named `*` (no service can be), so the totals — and a sender's budget check — stay whole.
 */
export function capacityRouter(deps: CapacityRouteDeps): Router {
  const router = Router();
  router.get(PATHS.capacity, async (req, res) => {
    onlyParameters(req, []);
    requireEmptyBody(res);
    res.json(forReader(await deps.capacity(), readableBy(res)));
  });
  return router;
}

/** The entry of `committed.services` that sums the services the key may not read. */
export const OTHERS = '*';

function forReader(report: CapacityReport, readable: (service: string) => boolean): CapacityReport {
  const shown = report.committed.services.filter((s) => readable(s.service));
  const hidden = report.committed.services.filter((s) => !readable(s.service));
  if (hidden.length === 0) return report;
  const others = {
    service: OTHERS,
    memoryBytes: hidden.reduce((sum, s) => sum + s.memoryBytes, 0),
    // Summed as nano-CPUs, as the engine counts them, so that 0.1 + 0.2 stays 0.3.
    cpus: hidden.reduce((sum, s) => sum + nanoCpus(s.cpus), 0) / 1e9,
  };
  return { ...report, committed: { ...report.committed, services: [...shown, others] } };
}
