import { FerryError, type DeploymentResult } from '@ferry/protocol';

/** A failed deployment answers with its error code and status, and the whole record as details. */
export function failure(result: DeploymentResult): FerryError {
  const code = result.error?.code ?? 'FERRY_ERR_INTERNAL';
  return new FerryError(code, { message: result.error?.message, details: { deployment: result } });
}

export function asFerryError(err: unknown, fallback: 'FERRY_ERR_INTERNAL' | 'FERRY_ERR_CONTAINER_FAILED' = 'FERRY_ERR_INTERNAL'): FerryError {
  return err instanceof FerryError ? err : new FerryError(fallback, { cause: err });
}

export function since(started: number): number {
  return Math.round(performance.now() - started);
}
