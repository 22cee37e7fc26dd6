import type { RegistryClient } from '@ferry/auth';
import { ManifestSchema, configHash, type ManifestInput } from '@ferry/protocol';

/** One successful deployment, as the sender knows it. */
export interface Deployed {
  /** The receiver's host id (its `GET /healthz`), which is also its id in the registry. */
  host: string;
  /** The receiver URL the package went to. */
  url: string;
  manifest: ManifestInput;
}

/**
 * Records what the sender deployed as the registry's desired state, so the registry can tell
 * drift from a deployment. Never throws: the deployment already succeeded, and a registry that is
 * down must not turn it into a failed push — the failure becomes a warning.
 */
export interface DesiredRecorder {
  record(deployed: Deployed): Promise<void>;
}

export function desiredRecorder(registry: RegistryClient, warn: (message: string) => void): DesiredRecorder {
  return {
    async record({ host, url, manifest: input }) {
      try {
        // Parsed as the receiver parses it, so the hash equals the container's ferry.config-hash label.
        const manifest = ManifestSchema.parse(input);
        await registry.putDesired(host, manifest.service.name, {
          deploymentId: manifest.deploymentId, image: manifest.image.ref, imageId: manifest.image.id,
          configHash: configHash(manifest), service: manifest.service, targetUrl: url,
        });
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        warn(`warning: ${input.service.name} on ${host} was deployed, but the registry at ${registry.url} did not record it: ${reason}`);
      }
    },
  };
}
