import { connect } from 'node:net';
import { FerryError } from '@ferry/protocol';
import { checkToken } from './names.ts';

/**
 * HAProxy's runtime API over its admin socket: one command per connection (HAProxy answers,
 * then closes). A socket that is missing, refuses, or does not answer in time is
 * FERRY_ERR_PROXY_UNAVAILABLE; an answer that is not the command's success is FERRY_ERR_PROXY_COMMAND.
 */
export class RuntimeClient {
  readonly socketPath: string;
  private readonly timeoutMs: number;

  constructor(socketPath: string, timeoutMs = 5_000) {
    this.socketPath = socketPath;
    this.timeoutMs = timeoutMs;
  }

  /**
   * Sends `args` (each checked to be one harmless token) and resolves to HAProxy's answer.
   * `payload` goes after `<<` as HAProxy's multi-line form; it must hold no blank line (that ends it).
   */
  send(args: string[], payload?: string): Promise<string> {
    for (const arg of args) checkToken(arg);
    if (payload !== undefined && (/\n\s*\n/.test(payload) || /[^\x20-\x7e\n]/.test(payload))) {
      return Promise.reject(new FerryError('FERRY_ERR_PROXY_COMMAND', { message: 'Refused to send a payload with a blank line or control characters' }));
    }
    const line = payload === undefined ? `${args.join(' ')}\n` : `${args.join(' ')} <<\n${payload.replace(/\n+$/, '')}\n\n`;
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let settled = false;
      const socket = connect(this.socketPath);
      const finish = (err: FerryError | undefined) => {
        if (settled) return;
        settled = true;
        socket.destroy();
        if (err) reject(err); else resolve(Buffer.concat(chunks).toString('utf8'));
      };
      socket.setTimeout(this.timeoutMs, () => finish(new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { message: `The proxy did not answer "${args[0]} ${args[1] ?? ''}" within ${this.timeoutMs} ms` })));
      socket.on('connect', () => socket.end(line));
      socket.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        // An answer this large is not one HAProxy sends to anything Ferry asks.
        if (chunks.reduce((n, c) => n + c.length, 0) > 64 * 1024 * 1024) finish(new FerryError('FERRY_ERR_PROXY_COMMAND', { message: 'The proxy answered more than 64 MiB' }));
      });
      socket.on('end', () => finish(undefined));
      socket.on('error', (cause) => finish(new FerryError('FERRY_ERR_PROXY_UNAVAILABLE', { cause, details: { socket: this.socketPath } })));
    });
  }

  /**
   * Sends a command whose success HAProxy answers with nothing, or with text `ok` matches;
   * anything else is its refusal, carried in the error.
   */
  async expect(args: string[], ok: RegExp | 'empty', payload?: string): Promise<string> {
    const answer = await this.send(args, payload);
    const text = answer.trim();
    const good = ok === 'empty' ? text === '' : ok.test(text);
    if (!good) {
      throw new FerryError('FERRY_ERR_PROXY_COMMAND', {
        message: `The proxy refused "${args.slice(0, 3).join(' ')}": ${text.slice(0, 300) || '(no answer)'}`,
        details: { command: args.slice(0, 3).join(' ') },
      });
    }
    return answer;
  }

  /** Whether HAProxy answers at all. */
  async alive(): Promise<boolean> {
    try {
      return /^Name: HAProxy/m.test(await this.send(['show', 'info']));
    } catch {
      return false;
    }
  }
}
