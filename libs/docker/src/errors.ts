import { FerryError, type ErrorCode } from '@ferry/protocol';

/**
 * Socket-level failures that mean "no engine there" rather than "the engine said no": a missing or
 * unreadable unix socket, or nothing listening on the TCP port.
 */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOENT', 'EACCES', 'EHOSTUNREACH', 'ENOTFOUND', 'ETIMEDOUT']);

/** What a failed engine call carries: an EngineError (statusCode, json) or a socket error (code). */
interface EngineFailure {
  statusCode?: unknown;
  code?: unknown;
  json?: unknown;
  message?: unknown;
}

/** The HTTP status the engine answered with, when the failure was an answer at all. */
export function statusOf(err: unknown): number | undefined {
  const status = (err as EngineFailure | null)?.statusCode;
  return typeof status === 'number' ? status : undefined;
}

export function isUnreachable(err: unknown): boolean {
  const code = (err as EngineFailure | null)?.code;
  return typeof code === 'string' && UNREACHABLE.has(code);
}

/** The engine's own words: its answer's `json.message`, without the status preamble of `message`. */
export function daemonMessage(err: unknown): string {
  const json = (err as EngineFailure | null)?.json;
  if (json && typeof json === 'object' && typeof (json as { message?: unknown }).message === 'string') {
    return (json as { message: string }).message.trim();
  }
  if (typeof json === 'string' && json.trim()) return json.trim();
  const message = (err as EngineFailure | null)?.message;
  return typeof message === 'string' ? message.trim() : String(err);
}

/**
 * Turns whatever an engine call threw into a FerryError: unreachable engines get their own code so the
 * caller can tell "retry later" from "this request is wrong"; everything else gets `code`.
 */
export function toFerryError(err: unknown, code: ErrorCode, doing: string): FerryError {
  if (err instanceof FerryError) return err;
  const status = statusOf(err);
  if (status === undefined && isUnreachable(err)) {
    return new FerryError('FERRY_ERR_DOCKER_UNAVAILABLE', {
      message: `The Docker engine cannot be reached while trying to ${doing} (${String((err as EngineFailure).code)})`,
      cause: err,
    });
  }
  return new FerryError(code, {
    message: `Could not ${doing}: ${daemonMessage(err)}`,
    cause: err,
    ...(status === undefined ? {} : { details: { dockerStatus: status } }),
  });
}
