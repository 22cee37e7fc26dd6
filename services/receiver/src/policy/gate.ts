import { createEvent, type EventSink } from '@ferry/events';
import type { Logger } from '@ferry/log';
import { FerryError, type Manifest } from '@ferry/protocol';
import { evaluate, type Policy, type Violation } from './policy.ts';

export interface PolicyGateDeps {
  policy: Readonly<Policy>;
  events: EventSink;
  hostId: string;
  logger: Logger;
  /** When the newest release that completed on a service was signed (the journal knows). */
  newestSigned?: (service: string) => string | undefined;
}

/**
 * The receiver's policy at its front door: the admission of every manifest (upload/admission.ts)
 * calls check() once the manifest is verified and before any byte is spooled.
 */
export class PolicyGate {
  readonly #deps: PolicyGateDeps;

  constructor(deps: PolicyGateDeps) {
    this.#deps = deps;
  }

  get policy(): Readonly<Policy> {
    return this.#deps.policy;
  }

  /**
   * The policy's part of a manifest's admission (upload/admission.ts): no release signed before
   * the one that runs, then nothing the policy does not grant.
   */
  check(manifest: Manifest): void {
    this.#checkNotOlder(manifest);
    this.checkPolicy(manifest);
  }

  /** A signed release older than the one that runs is a replay, unless it is a signed rollback. */
  #checkNotOlder(manifest: Manifest): void {
    const current = this.#deps.newestSigned?.(manifest.service.name);
    if (current === undefined || manifest.rollback === true || Date.parse(manifest.createdAt) >= Date.parse(current)) return;
    throw new FerryError('FERRY_ERR_DOWNGRADE', { details: { service: manifest.service.name, signedAt: manifest.createdAt, current } });
  }

  /**
   * Throws FERRY_ERR_POLICY_DENIED when the manifest asks for anything the policy does not grant,
   * after publishing the `policy.denied` audit event under the manifest's deployment id.
   */
  checkPolicy(manifest: Manifest): void {
    const violations = evaluate(this.#deps.policy, manifest);
    const first = violations[0];
    if (!first) return;
    const { hostId, events, logger } = this.#deps;
    const service = manifest.service.name;
    events.publish(createEvent('policy.denied', {
      source: `ferry://receiver/${hostId}`, host: hostId, service, deploymentId: manifest.deploymentId,
      data: { ...first, violations, image: manifest.image.ref, imageId: manifest.image.id },
    }));
    logger.warn({ deploymentId: manifest.deploymentId, service, rules: violations.map((v) => v.rule) }, 'deployment refused by policy');
    throw policyDenied(violations, manifest.deploymentId);
  }
}

/** The error a refused manifest gets; its message and details name the rule. */
export function policyDenied(violations: Violation[], deploymentId: string): FerryError {
  const rules = violations.map((v) => v.rule);
  const first = violations[0];
  return new FerryError('FERRY_ERR_POLICY_DENIED', {
    message: `Refused by the receiver's policy: ${rules.join(', ')}`,
    details: { rule: first?.rule, field: first?.field, value: first?.value, violations, deploymentId },
  });
}
