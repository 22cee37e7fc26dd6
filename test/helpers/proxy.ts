import { createServer, connect, type Server, type Socket } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface CorruptingProxy {
  url: string;
  /** Whether a byte was actually flipped (the stream reached the offset). */
  readonly flipped: boolean;
  close(): Promise<void>;
}

/**
 * A loopback TCP proxy that flips one bit of the byte at `offset` of what each client sends: the
 * damage a bad link or middlebox does, on real sockets, below HTTP.
 */
export async function corruptingProxy(targetUrl: string, offset: number): Promise<CorruptingProxy> {
  const target = new URL(targetUrl);
  let flipped = false;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    let seen = 0;
    const flip = new Transform({
      transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
        if (seen <= offset && offset < seen + chunk.length) {
          const copy = Buffer.from(chunk);
          copy[offset - seen] = (copy[offset - seen] ?? 0) ^ 0x01;
          flipped = true;
          seen += chunk.length;
          callback(null, copy);
          return;
        }
        seen += chunk.length;
        callback(null, chunk);
      },
    });
    pipeline(client, flip, upstream).catch(() => client.destroy());
    pipeline(upstream, client).catch(() => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    url: `http://127.0.0.1:${address.port}`,
    get flipped() { return flipped; },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export interface StallingProxy {
  url: string;
  /** Resolves once the proxy holds back what the client sends past `holdAfter` bytes. */
  readonly held: Promise<void>;
  close(): Promise<void>;
}

/**
 * A loopback TCP proxy that passes everything through, except that once its clients sent
 * `holdAfter` bytes in all it stops passing on what that connection sends (once): the request in
 * flight stalls there, the receiver waiting for the rest of its body, until the test does something
 * to it (kills the receiver). A connection whose other side closes is closed too, so the client
 * sees the cut; later connections pass through untouched.
 */
export async function stallingProxy(targetUrl: string, holdAfter: number): Promise<StallingProxy> {
  const target = new URL(targetUrl);
  let seen = 0;
  let holding = false;
  let onHeld!: () => void;
  const held = new Promise<void>((resolve) => { onHeld = resolve; });
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    let stalled = false;
    client.on('data', (chunk: Buffer) => {
      if (stalled) return;
      if (!holding && seen + chunk.length > holdAfter) {
        holding = true;
        stalled = true;
        upstream.write(chunk.subarray(0, holdAfter - seen));
        seen = holdAfter;
        onHeld();
        return;
      }
      seen += chunk.length;
      upstream.write(chunk);
    });
    upstream.pipe(client);
    client.on('error', () => upstream.destroy()).on('close', () => upstream.destroy());
    upstream.on('error', () => client.destroy()).on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    url: `http://127.0.0.1:${address.port}`,
    held,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
