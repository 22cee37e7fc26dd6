import { connect, createServer, type Server, type Socket } from 'node:net';

/** Bytes seen by a proxy since its last reset, by direction. */
export interface WireBytes {
  /** Client to server (e.g. what a sender uploads). */
  up: number;
  /** Server to client. */
  down: number;
}

/** Counts the bytes a method moved: a counting proxy, or a shaped link's interface counters. */
export interface Meter {
  /** Returns what was counted since the last call and starts again from zero. */
  take(): WireBytes;
}

/**
 * A loopback TCP proxy that counts every byte in each direction: "bytes on the wire" of a method
 * is what crosses it (for ssh that is the encrypted stream, for HTTP the bodies plus headers).
 * Over a shaped link it only forwards (the engines trust plain-HTTP registries on 127.0.0.0/8 alone)
 * and the link's own counters count.
 */
export class CountingProxy implements Meter {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #bytes: WireBytes = { up: 0, down: 0 };
  #port = 0;
  #upstreamPort: number;
  #upstreamHost: string;

  private constructor(server: Server, upstreamPort: number, upstreamHost: string) {
    this.#server = server;
    this.#upstreamPort = upstreamPort;
    this.#upstreamHost = upstreamHost;
  }

  /** Listens on a random loopback port; `upstreamPort` 0 = nothing yet (see retarget). */
  static async start(upstreamPort: number, upstreamHost = '127.0.0.1'): Promise<CountingProxy> {
    const server = createServer({ allowHalfOpen: true });
    const proxy = new CountingProxy(server, upstreamPort, upstreamHost);
    server.on('connection', (client) => proxy.#relay(client, proxy.#upstreamPort, proxy.#upstreamHost));
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

  /** New connections go to this port from now on; the proxy's own address stays. */
  retarget(upstreamPort: number, upstreamHost = this.#upstreamHost): void {
    this.#upstreamPort = upstreamPort;
    this.#upstreamHost = upstreamHost;
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

  #relay(client: Socket, upstreamPort: number, upstreamHost: string): void {
    const upstream = connect({ port: upstreamPort, host: upstreamHost, allowHalfOpen: true });
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
