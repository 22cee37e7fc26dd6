import { parseArgs, type ParseArgsConfig } from 'node:util';
import { FerryError } from '@ferry/protocol';

type Options = NonNullable<ParseArgsConfig['options']>;

/** parseArgs with its errors turned into the CLI's usage error, so every mistake exits 2. */
export function parse<O extends Options>(args: string[], options: O, positionals = 0) {
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: positionals > 0, strict: true });
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: (err as Error).message.replace(/\. To specify a positional.*$/s, '') });
  }
  if (parsed.positionals.length > positionals) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `Unexpected argument "${parsed.positionals[positionals]}"` });
  }
  return parsed;
}

export function parseEnvPairs(pairs: string[] | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new FerryError('FERRY_ERR_USAGE', { message: `--env ${pair.split('=')[0]}: expected KEY=VALUE` });
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return env;
}

export function parseInteger(name: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new FerryError('FERRY_ERR_USAGE', { message: `--${name}: expected a whole number from ${min} to ${max}` });
  return n;
}
