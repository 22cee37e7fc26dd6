import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { FerryError } from '@ferry/protocol';

/** Asserts that `fn` throws the CLI's usage error (exit 2) with a message matching `message`. */
export function usageError(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof FerryError, String(err));
    assert.equal(err.code, 'FERRY_ERR_USAGE');
    assert.match(err.message, message);
    return true;
  });
}

/** A stream that keeps what the CLI wrote to it, a terminal or not. */
export class Capture extends Writable {
  text = '';
  isTTY: boolean;
  columns = 200;
  constructor(isTTY = false) {
    super();
    this.isTTY = isTTY;
  }
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    this.text += chunk.toString('utf8');
    callback();
  }
}
