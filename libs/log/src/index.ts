import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino';

export type { Logger } from 'pino';

/**
 * Paths never written to a log: keys, signatures and a deployment's environment values. Redaction
 * is by path, so code that logs a request or a manifest cannot leak them by accident.
 */
export const REDACT_PATHS = [
  'secret', '*.secret', 'key', '*.key', 'keys', '*.keys', 'FERRY_KEY', 'FERRY_KEYS', '*.FERRY_KEY', '*.FERRY_KEYS',
  'privateKey', '*.privateKey', 'token', '*.token', 'joinToken', '*.joinToken', 'FERRY_JOIN_TOKEN', '*.FERRY_JOIN_TOKEN',
  'req.headers["x-ferry-signature"]', 'req.headers.authorization', 'headers["x-ferry-signature"]', 'headers.authorization',
  'manifest.service.env', 'service.env', 'env', '*.env',
];

export interface LoggerConfig {
  level?: string;
  name?: string;
  /** A sink other than stdout; tests read JSON lines from one. */
  destination?: DestinationStream;
}

export function createLogger(config: LoggerConfig = {}): Logger {
  const options: LoggerOptions = {
    level: config.level ?? 'info',
    base: config.name ? { name: config.name } : {},
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return config.destination ? pino(options, config.destination) : pino(options);
}
