import { FerryError, type ErrorCode } from '@ferry/protocol';

/**
 * Socket-level failures that mean "no engine there" rather than "the engine said no": a missing or
 * unreadable unix socket, or nothing listening on the TCP port.
 */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOENT', 'EACCES', 'EHOSTUNREACH', 'ENOTFOUND', 'ETIMEDOUT']);

interface DockerodeError {
  statusCode?: unknown;
  code?: unknown;
  json?: unknown;
  message?: unknown;
}

/** The HTTP status the engine answered with, when the failure was an answer at all. */
export function statusOf(err: unknown): number | undefined {
  const status = (err as DockerodeError | null)?.statusCode;
  return typeof status === 'number' ? status : undefined;
}

export function isUnreachable(err: unknown): boolean {
  const code = (err as DockerodeError | null)?.code;
  return typeof code === 'string' && UNREACHABLE.has(code);
}

/** The engine's own words: dockerode buries them in `json.message` behind an HTTP preamble. */
export function daemonMessage(err: unknown): string {
  const json = (err as DockerodeError | null)?.json;
  if (json && typeof json === 'object' && typeof (json as { message?: unknown }).message === 'string') {
    return (json as { message: string }).message.trim();
  }
  if (typeof json === 'string' && json.trim()) return json.trim();
  const message = (err as DockerodeError | null)?.message;
  return typeof message === 'string' ? message.trim() : String(err);
}

/**
 * Turns whatever dockerode threw into a FerryError: unreachable engines get their own code so the
 * caller can tell "retry later" from "this request is wrong"; everything else gets `code`.
 */
export function toFerryError(err: unknown, code: ErrorCode, doing: string): FerryError {
  if (err instanceof FerryError) return err;
  const status = statusOf(err);
  if (status === undefined && isUnreachable(err)) {
    return new FerryError('FERRY_ERR_DOCKER_UNAVAILABLE', {
      message: `The Docker engine cannot be reached while trying to ${doing} (${String((err as DockerodeError).code)})`,
      cause: err,
    });
  }
  return new FerryError(code, {
    message: `Could not ${doing}: ${daemonMessage(err)}`,
    cause: err,
    ...(status === undefined ? {} : { details: { dockerStatus: status } }),
  });
}
