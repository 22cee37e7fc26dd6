import { z } from 'zod';

/** Memory and CPUs: bytes, and CPUs as `docker run --cpus` counts them (1.5 = one and a half). */
const Amount = z.object({ memoryBytes: z.number().int().nonnegative(), cpus: z.number().nonnegative() });
const Disk = z.object({ path: z.string(), freeBytes: z.number().int().nonnegative(), totalBytes: z.number().int().nonnegative() });

/**
 * `GET /v1/capacity` (docs/protocol.md §11.6): what a host has, what its operator lets Ferry
 * commit of it, and what the containers Ferry runs there commit now. Senders check a release
 * against `budget` and `committed` before building or sending anything.
 */
export const CapacitySchema = z.object({
  hostId: z.string(),
  /** The receiver's own machine (the operating system's view). */
  host: Amount,
  /** The engine's machine (`docker info` MemTotal, NCPU, DockerRootDir), which the containers run on. */
  engine: Amount.extend({ rootDir: z.string().optional() }).optional(),
  /** Free space of the receiver's data directory, and of the engine's data root when it is on this machine. */
  disk: z.object({ dataDir: Disk, engineRoot: Disk.optional() }),
  /** FERRY_BUDGET_MEMORY and FERRY_BUDGET_CPUS, or their defaults. */
  budget: Amount,
  /** The memory and CPU limits of the running containers Ferry deployed, summed, and per service. */
  committed: Amount.extend({ services: z.array(Amount.extend({ service: z.string() })) }),
});

export type CapacityReport = z.infer<typeof CapacitySchema>;

/** CPUs as whole nano-CPUs (Docker's NanoCpus), so that sums of 0.1 and 0.2 stay exact. */
export function nanoCpus(cpus: number): number {
  return Math.round(cpus * 1e9);
}
