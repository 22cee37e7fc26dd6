import { FerryError } from '@ferry/protocol';

export interface ReferenceParts {
  repository: string;
  tag: string;
}

/**
 * Splits `name[:tag]` the way Docker does. A colon only starts the tag when it comes after the
 * last slash, so that `localhost:5000/app` is a repository on a registry with a port, not `app`
 * tagged `5000/app`. A missing tag is `latest`.
 */
export function splitReference(ref: string): ReferenceParts {
  if (ref.includes('@')) throw badReference(ref, 'a digest reference cannot be tagged');
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  const parts = colon > slash
    ? { repository: ref.slice(0, colon), tag: ref.slice(colon + 1) }
    : { repository: ref, tag: 'latest' };
  // The engine would quietly turn an empty tag into `latest`; that hides a caller's mistake.
  if (parts.repository === '' || parts.tag === '') throw badReference(ref, 'the name or the tag is empty');
  return parts;
}

function badReference(ref: string, why: string): FerryError {
  return new FerryError('FERRY_ERR_DOCKER', { message: `Invalid image reference "${ref}": ${why}` });
}
