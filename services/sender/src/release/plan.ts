import { FerryError, newReleaseId } from '@ferry/protocol';
import { phasesOf, type DeploymentDocument, type DependencyCondition, type Phase, type Rollout, type ServiceEntry } from '../deployfile/index.ts';

/** One service of a release, in its place in the order. */
export interface PlannedService {
  name: string;
  entry: ServiceEntry;
  /** Index of its phase in {@link ReleasePlan.phases}. */
  phase: number;
  dependsOn: Array<{ service: string; condition: DependencyCondition }>;
}

/** What a run of a deployment document deploys, and in which order, before anything is asked of a host. */
export interface ReleasePlan {
  id: string;
  createdAt: string;
  project: string;
  phases: Phase[];
  /** Phase after phase, each phase's services in the document's order. */
  services: PlannedService[];
  /** The hosts in waves (`rollout:`); absent: one wave of every host. */
  rollout?: Rollout;
  /** `--only` as given, for a paused release to go on with the same services. */
  only?: string[];
}

export interface PlanOptions {
  /** Only these services of the document (`--only`); dependencies left out are taken as deployed already. */
  only?: string[] | undefined;
  /** Default a new one (newReleaseId). */
  id?: string | undefined;
  /** Default the document's `name`, else `default`. */
  project?: string | undefined;
  at?: Date | undefined;
}

/**
 * The release of a document: its id, its phases (written, or computed from depends_on), and its
 * services in phase order.
 *
 * @throws FerryError FERRY_ERR_USAGE for an `only` naming no service of the document.
 */
export function planRelease(document: DeploymentDocument, options: PlanOptions = {}): ReleasePlan {
  const only = options.only && options.only.length > 0 ? options.only : undefined;
  if (only) {
    const unknown = only.filter((name) => !Object.hasOwn(document.services, name));
    if (unknown.length > 0) {
      throw new FerryError('FERRY_ERR_USAGE', { message: `--only ${unknown.join(', ')}: no such service in the document (it has ${Object.keys(document.services).join(', ')})` });
    }
  }
  const phases = phasesOf(document, only);
  const services: PlannedService[] = [];
  phases.forEach((phase, index) => {
    for (const name of phase.services) {
      const entry = document.services[name];
      if (!entry) continue;
      const dependsOn = Object.entries(entry.depends_on ?? {}).map(([service, { condition }]) => ({ service, condition }));
      services.push({ name, entry, phase: index, dependsOn });
    }
  });
  const at = options.at ?? new Date();
  return {
    id: options.id ?? newReleaseId(at), createdAt: at.toISOString(),
    project: options.project ?? document.name ?? 'default', phases, services,
    ...(document.rollout ? { rollout: document.rollout } : {}), ...(only ? { only } : {}),
  };
}
