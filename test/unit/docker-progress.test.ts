import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { MAX_LINE_LENGTH, ProgressParser, parseProgressLine, readProgress, type ProgressEvent } from '@ferry/docker';

async function eventsOf(chunks: (string | Buffer)[]): Promise<ProgressEvent[]> {
  const events: ProgressEvent[] = [];
  for await (const event of readProgress(Readable.from(chunks))) events.push(event);
  return events;
}

describe('docker progress (NDJSON)', () => {
  it('reads one message per line', async () => {
    const events = await eventsOf(['{"stream":"Loaded image ID: sha256:abc\\n"}\n{"status":"Loading layer","id":"1"}\n']);
    assert.deepEqual(events, [
      { type: 'message', message: { stream: 'Loaded image ID: sha256:abc\n' } },
      { type: 'message', message: { status: 'Loading layer', id: '1' } },
    ]);
  });

  it('joins lines split across chunks, including inside a multi-byte character', async () => {
    const line = Buffer.from('{"stream":"Loaded image: caf\u00e9:1\\n"}\n{"status":"done"}');
    const at = line.indexOf(0xc3) + 1; // between the two bytes of "é"
    const chunks = [line.subarray(0, 5), line.subarray(5, at), line.subarray(at, at + 3), line.subarray(at + 3)];
    const events = await eventsOf(chunks);
    assert.deepEqual(events, [
      { type: 'message', message: { stream: 'Loaded image: caf\u00e9:1\n' } },
      { type: 'message', message: { status: 'done' } },
    ]);
  });

  it('handles one byte at a time and a final line without a newline', async () => {
    const text = '{"a":1}\r\n\r\n{"b":2}';
    const events = await eventsOf([...Buffer.from(text)].map((byte) => Buffer.from([byte])));
    assert.deepEqual(events.map((event) => event.type === 'message' && event.message), [{ a: 1 }, { b: 2 }]);
  });

  it('reports error lines with the engine message, preferring errorDetail', async () => {
    const events = await eventsOf([
      '{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF (short)"}\n',
      '{"error":"only error"}\n',
      '{"errorDetail":{}}\n',
      '{"error":""}\n',
    ]);
    assert.deepEqual(events.map((event) => (event.type === 'error' ? event.error : event.type)), [
      'unexpected EOF',
      'only error',
      'unknown error',
      'message',
    ]);
  });

  it('keeps garbage lines as invalid instead of throwing', async () => {
    const events = await eventsOf(['not json\n{"ok":true}\n[1,2]\nnull\n"text"\n{"broken":\n']);
    assert.deepEqual(events, [
      { type: 'invalid', line: 'not json' },
      { type: 'message', message: { ok: true } },
      { type: 'invalid', line: '[1,2]' },
      { type: 'invalid', line: 'null' },
      { type: 'invalid', line: '"text"' },
      { type: 'invalid', line: '{"broken":' },
    ]);
  });

  it('skips blank lines', () => {
    assert.equal(parseProgressLine(''), undefined);
    assert.equal(parseProgressLine('  \r'), undefined);
  });

  it('cuts off a line that never ends instead of holding it', () => {
    const parser = new ProgressParser();
    const events = parser.push('x'.repeat(MAX_LINE_LENGTH + 1));
    assert.equal(events.length, 1);
    assert.equal(events[0]?.type, 'invalid');
    assert.deepEqual(parser.push('still the same line'), []);
    assert.deepEqual(parser.push(' and its end\n{"ok":1}\n'), [{ type: 'message', message: { ok: 1 } }]);
    assert.deepEqual(parser.end(), []);
  });

  it('propagates a source error', async () => {
    const source = new Readable({ read() { this.destroy(new Error('boom')); } });
    await assert.rejects(async () => {
      for await (const _event of readProgress(source)) { /* drain */ }
    }, /boom/);
  });
});
