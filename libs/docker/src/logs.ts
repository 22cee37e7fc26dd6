import { StringDecoder } from 'node:string_decoder';

const HEADER_LENGTH = 8;

/**
 * Splits what `GET /containers/{id}/logs` returned into lines, stdout and stderr interleaved in the
 * order the engine sent them. A container without a TTY gets Docker's multiplexed framing (an
 * 8-byte header per frame: stream type, three zero bytes, big-endian length); a TTY container gets
 * raw bytes. Which one it is shows in the bytes themselves, which spares an inspect round trip: raw
 * output would have to be a chain of well-formed headers that exactly fills the buffer to be
 * mistaken for frames.
 */
export function splitLogLines(output: Buffer): string[] {
  const frames = readFrames(output);
  if (!frames) return rawLines(output);
  const decoders = new Map<number, StringDecoder>();
  const pending = new Map<number, string>();
  const lines: string[] = [];
  for (const { stream, payload } of frames) {
    let decoder = decoders.get(stream);
    if (!decoder) decoders.set(stream, (decoder = new StringDecoder('utf8')));
    // A long line can span frames; its stream's unfinished part waits for the next frame.
    const text = (pending.get(stream) ?? '') + decoder.write(payload);
    const parts = text.split('\n');
    pending.set(stream, parts.pop() ?? '');
    lines.push(...parts.map(stripCarriageReturn));
  }
  for (const [stream, rest] of pending) {
    const tail = rest + (decoders.get(stream)?.end() ?? '');
    if (tail !== '') lines.push(stripCarriageReturn(tail));
  }
  return lines;
}

interface Frame {
  stream: number;
  payload: Buffer;
}

function readFrames(output: Buffer): Frame[] | undefined {
  const frames: Frame[] = [];
  let offset = 0;
  while (offset < output.length) {
    if (output.length - offset < HEADER_LENGTH) return undefined;
    const stream = output[offset] ?? -1;
    if (stream > 2 || output[offset + 1] !== 0 || output[offset + 2] !== 0 || output[offset + 3] !== 0) return undefined;
    const length = output.readUInt32BE(offset + 4);
    const start = offset + HEADER_LENGTH;
    if (start + length > output.length) return undefined;
    frames.push({ stream, payload: output.subarray(start, start + length) });
    offset = start + length;
  }
  return frames;
}

function rawLines(output: Buffer): string[] {
  const parts = output.toString('utf8').split('\n');
  if (parts.at(-1) === '') parts.pop();
  return parts.map(stripCarriageReturn);
}

function stripCarriageReturn(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}
