import { createHash } from 'node:crypto';

/**
 * The chain id of every prefix of a layer list, bottom first (the OCI image spec's ChainID): the
 * first is the bottom layer's diff id, each next one `sha256(<previous chain id> + " " + <diff id>)`.
 * It is the key of Docker's legacy layer store, where `docker load` looks a layer up before it
 * reads the layer's file — which is what lets a package leave held layers out.
 */
export function chainIds(diffIds: readonly string[]): string[] {
  const chains: string[] = [];
  for (const diffId of diffIds) {
    const previous = chains.at(-1);
    chains.push(previous === undefined ? diffId : `sha256:${createHash('sha256').update(`${previous} ${diffId}`).digest('hex')}`);
  }
  return chains;
}
