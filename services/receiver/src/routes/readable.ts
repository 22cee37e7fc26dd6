import type { Response } from 'express';
import { authorize } from '@ferry/auth';
import type { AuthLocals } from '@ferry/http';
import { FerryError } from '@ferry/protocol';

/**
 * Whether the request's key may read `service`: the same grant check every route asks of a key
 * (role, the grant's service globs), so a listing of several services shows only the ones a
 * key granted some services may read.
 */
export function readableBy(res: Response): (service: string) => boolean {
  const auth = (res.locals as AuthLocals).auth;
  return (service) => {
    try {
      authorize(auth, 'read', { service });
      return true;
    } catch (err) {
      if (err instanceof FerryError && err.code === 'FERRY_ERR_NOT_GRANTED') return false;
      throw err;
    }
  };
}
