import { StringDecoder } from 'node:string_decoder';

/**
 * One line of the JSON stream the engine answers `load`, `build`, `pull` and `push` with
 * (Docker's `jsonmessage.JSONMessage`). Every field is optional; which ones appear depends on the
 * endpoint.
 */
export interface JsonMessage {
  stream?: string;
  status?: string;
  id?: string;
  progress?: string;
  progressDetail?: { current?: number; total?: number };
  error?: string;
  errorDetail?: { code?: number; message?: string };
  aux?: unknown;
}

/**
 * What one line turned out to be. The engine reports failures in-band with HTTP 200, so an error
 * line is its own kind: a consumer cannot forget to look for it. Lines that are not JSON objects
 * are kept rather than dropped, so that a consumer can quote them when nothing else made sense.
 */
export type ProgressEvent =
  | { type: 'message'; message: JsonMessage }
  | { type: 'error'; error: string; message: JsonMessage }
  | { type: 'invalid'; line: string };

/**
 * A line longer than this is not progress from a sane engine; cutting it off bounds the memory a
 * misbehaving peer can make us hold.
 */
export const MAX_LINE_LENGTH = 1024 * 1024;

/** Classifies one line; undefined for a blank line (the engine ends lines with `\r\n` at times). */
export function parseProgressLine(raw: string): ProgressEvent | undefined {
  const line = raw.trim();
  if (line === '') return undefined;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { type: 'invalid', line };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return { type: 'invalid', line };
  const message = value as JsonMessage;
  const error = errorText(message);
  return error === undefined ? { type: 'message', message } : { type: 'error', error, message };
}

function errorText(message: JsonMessage): string | undefined {
  const detail = message.errorDetail?.message;
  if (typeof detail === 'string' && detail !== '') return detail;
  if (typeof message.error === 'string' && message.error !== '') return message.error;
  // An errorDetail without words is still the engine saying it failed.
  if (message.errorDetail !== undefined && message.errorDetail !== null) return 'unknown error';
  return undefined;
}

/**
 * Splits a byte stream into progress events. Chunks break anywhere, including inside a line or a
 * multi-byte character, so the unfinished tail is carried over to the next chunk.
 */
export class ProgressParser {
  readonly #decoder = new StringDecoder('utf8');
  #pending = '';
  /** Set after an overlong line was cut off: the rest of it, up to its newline, is dropped. */
  #skipping = false;

  push(chunk: Buffer | string): ProgressEvent[] {
    let text = this.#pending + (typeof chunk === 'string' ? chunk : this.#decoder.write(chunk));
    if (this.#skipping) {
      const newline = text.indexOf('\n');
      if (newline < 0) return [];
      this.#skipping = false;
      text = text.slice(newline + 1);
    }
    const lines = text.split('\n');
    this.#pending = lines.pop() ?? '';
    const events = collect(lines);
    if (this.#pending.length > MAX_LINE_LENGTH) {
      events.push({ type: 'invalid', line: `${this.#pending.slice(0, 200)}… (cut off at ${MAX_LINE_LENGTH} characters)` });
      this.#pending = '';
      this.#skipping = true;
    }
    return events;
  }

  /** The last line may lack its newline. */
  end(): ProgressEvent[] {
    const rest = this.#pending + this.#decoder.end();
    this.#pending = '';
    if (this.#skipping) {
      this.#skipping = false;
      return [];
    }
    return collect([rest]);
  }
}

function collect(lines: string[]): ProgressEvent[] {
  const events: ProgressEvent[] = [];
  for (const line of lines) {
    const event = parseProgressLine(line);
    if (event) events.push(event);
  }
  return events;
}

/** Reads a whole progress response as events, in order. */
export async function* readProgress(source: AsyncIterable<Buffer | string>): AsyncGenerator<ProgressEvent> {
  const parser = new ProgressParser();
  for await (const chunk of source) yield* parser.push(chunk);
  yield* parser.end();
}
