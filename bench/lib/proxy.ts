import { connect, createServer, type Server, type Socket } from 'node:net';

/** Bytes seen by a proxy since its last reset, by direction. */
export interface WireBytes {
  /** Client to server (e.g. what a sender uploads). */
  up: number;
  /** Server to client. */
  down: number;
}

/**
 * A loopback TCP proxy that counts every byte in each direction: "bytes on the wire" of a method
 * is what crosses it (for ssh that is the encrypted stream, for HTTP the bodies plus headers).
 */
export class CountingProxy {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #bytes: WireBytes = { up: 0, down: 0 };
  #port = 0;
  #upstreamPort: number;

  private constructor(server: Server, upstreamPort: number) {
    this.#server = server;
    this.#upstreamPort = upstreamPort;
  }

  /** Listens on a random loopback port; `upstreamPort` 0 = nothing yet (see retarget). */
  static async start(upstreamPort: number): Promise<CountingProxy> {
    const server = createServer({ allowHalfOpen: true });
    const proxy = new CountingProxy(server, upstreamPort);
    server.on('connection', (client) => proxy.#relay(client, proxy.#upstreamPort));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('the counting proxy has no port');
    proxy.#port = address.port;
    return proxy;
  }

  get port(): number {
    return this.#port;
  }

  /** New connections go to this loopback port from now on; the proxy's own address stays. */
  retarget(upstreamPort: number): void {
    this.#upstreamPort = upstreamPort;
  }

  /** Returns what was counted so far and starts again from zero. */
  take(): WireBytes {
    const bytes = this.#bytes;
    this.#bytes = { up: 0, down: 0 };
    return bytes;
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  #relay(client: Socket, upstreamPort: number): void {
    const upstream = connect({ port: upstreamPort, host: '127.0.0.1', allowHalfOpen: true });
    this.#sockets.add(client).add(upstream);
    // pipe() pauses the source when the destination's buffer is full; the extra 'data' listener
    // only counts and does not defeat that backpressure. Half-closes pass through (pipe ends the
    // other side on 'end'), so a client may finish sending and still read the whole answer.
    client.on('data', (chunk: Buffer) => { this.#bytes.up += chunk.length; });
    upstream.on('data', (chunk: Buffer) => { this.#bytes.down += chunk.length; });
    client.pipe(upstream);
    upstream.pipe(client);
    const fail = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', fail).once('close', () => this.#sockets.delete(client));
    upstream.on('error', fail).once('close', () => this.#sockets.delete(upstream));
  }
}
