import { randomBytes } from 'node:crypto';
import { z } from 'zod';

/**
 * A release id: `rel-` + the UTC second it was made + 8 random hex digits. Sorting ids as text
 * sorts releases by when they were made, which is what "the previous release" means on a host.
 */
export const RELEASE_ID_PATTERN = /^rel-\d{8}T\d{6}Z-[0-9a-f]{8}$/;

export function newReleaseId(at: Date = new Date()): string {
  const stamp = at.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
  return `rel-${stamp}-${randomBytes(4).toString('hex')}`;
}

/**
 * What a deployment's manifest says about the release it belongs to (docs/protocol.md §4,
 * `release`). It travels under the request's signature, so a receiver files a deployment under a
 * release only as its signer said; a receiver keeps the last releases of each service by this id.
 */
export const ReleaseRefSchema = z.strictObject({
  id: z.string().regex(RELEASE_ID_PATTERN, 'rel-YYYYMMDDTHHMMSSZ-<8 hex>'),
  /** The phase the service is in, counted from 0, and how many the release has. */
  phase: z.int().min(0).max(63),
  phases: z.int().min(1).max(64),
  /** The rollout wave this host is in, counted from 0 (absent: one wave). */
  wave: z.int().min(0).max(63).optional(),
}).refine((r) => r.phase < r.phases, { path: ['phase'], message: 'phase must be below phases' });
export type ReleaseRef = z.infer<typeof ReleaseRefSchema>;

/** How a service went on one host in one release. */
export const RELEASE_OUTCOMES = ['pending', 'deploying', 'healthy', 'failed', 'skipped', 'rolled-back', 'rollback-failed'] as const;
export type ReleaseOutcome = (typeof RELEASE_OUTCOMES)[number];

/** Where a release stands as a whole. */
export const RELEASE_STATES = ['in-progress', 'paused', 'completed', 'failed', 'rolling-back', 'rolled-back'] as const;
export type ReleaseState = (typeof RELEASE_STATES)[number];

/** One service of a release: its image, its place in the order, and the hosts it goes to. */
export interface ReleaseService {
  name: string;
  image: string;
  imageId: string;
  configHash?: string;
  phase: number;
  dependsOn: Array<{ service: string; condition: 'started' | 'healthy' }>;
  hosts: string[];
}

/**
 * A release as the sender plans it and the registry projects it (`ferry releases`,
 * `ferry release show ID`): the services, the hosts, per host per service an outcome.
 */
export interface ReleaseRecord {
  id: string;
  createdAt: string;
  /** Where the release was made: the deployment file's `name`, or its directory's name. */
  project: string;
  state: ReleaseState;
  /** Phase names in order (`phase-1`… when the file names none). */
  phases: string[];
  services: ReleaseService[];
  /** Host ids by wave, in the order the waves go. */
  waves: string[][];
  /** outcomes[host][service]. */
  outcomes: Record<string, Record<string, ReleaseOutcome>>;
  /** The release this one replaced on its hosts, where the sender knew it. */
  previousId?: string;
  /** The release a whole-release rollback returned to. */
  rolledBackTo?: string;
  finishedAt?: string;
  error?: { code: string; message: string };
}

