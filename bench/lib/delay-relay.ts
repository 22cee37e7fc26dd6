/**
 * A TCP relay that delays every chunk by a one-way latency, in each direction: the bench's round
 * trip where the kernel has no netem. Runs inside a link's namespace, on the veth address, in
 * front of a service on the namespace's loopback:
 *
 *   node bench/lib/delay-relay.ts LISTEN_HOST:PORT TARGET_HOST:PORT ONE_WAY_MS
 *
 * What it models: every request waits ONE_WAY_MS before the service sees it and every answer
 * ONE_WAY_MS before the client does, so each round trip a protocol makes (a request and its
 * answer, a handshake) costs the round trip. What it does not: the relay ends TCP on its side, so
 * the sender's congestion window grows over a short path and a stream is not held to one
 * window per round trip as over a long real link. Prints "relaying" once it listens.
 */
import { connect, createServer, type Socket } from 'node:net';

/** Bytes a direction may hold in its delay queue before it stops reading (backpressure). */
const HIGH_WATER = 8 * 1024 * 1024;

const [listen = '', target = '', delayText = ''] = process.argv.slice(2);
const split = (address: string): [string, number] => {
  const at = address.lastIndexOf(':');
  return [address.slice(0, at), Number(address.slice(at + 1))];
};
const [listenHost, listenPort] = split(listen);
const [targetHost, targetPort] = split(target);
const delayMs = Number(delayText);
if (!listenHost || !targetHost || !(listenPort > 0) || !(targetPort > 0) || !(delayMs >= 0)) {
  process.stderr.write('usage: delay-relay.ts LISTEN_HOST:PORT TARGET_HOST:PORT ONE_WAY_MS\n');
  process.exit(2);
}

/**
 * Forwards `from` to `to`, each chunk (and the end) ONE_WAY_MS after it arrived, in order;
 * stops reading `from` while more than HIGH_WATER bytes wait.
 */
function delayed(from: Socket, to: Socket): void {
  const queue: Array<{ due: number; chunk: Buffer | null }> = [];
  let queued = 0;
  let timer: NodeJS.Timeout | undefined;
  const flush = (): void => {
    timer = undefined;
    const now = performance.now();
    while (queue.length > 0 && (queue[0]?.due ?? 0) <= now) {
      const { chunk } = queue.shift() ?? { chunk: null };
      if (chunk === null) {
        to.end();
        return;
      }
      queued -= chunk.length;
      to.write(chunk);
    }
    if (queued <= HIGH_WATER && from.isPaused()) from.resume();
    const next = queue[0];
    if (next) timer = setTimeout(flush, Math.max(0, next.due - performance.now()));
  };
  const push = (chunk: Buffer | null): void => {
    queue.push({ due: performance.now() + delayMs, chunk });
    if (chunk) queued += chunk.length;
    if (queued > HIGH_WATER) from.pause();
    timer ??= setTimeout(flush, delayMs);
  };
  from.on('data', (chunk: Buffer) => push(chunk));
  from.on('end', () => push(null));
}

const server = createServer({ allowHalfOpen: true }, (client) => {
  const upstream = connect({ host: targetHost, port: targetPort, allowHalfOpen: true });
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  delayed(client, upstream);
  delayed(upstream, client);
  const fail = (): void => {
    client.destroy();
    upstream.destroy();
  };
  // Half-closes pass through, delayed like data (the end is queued behind the last chunk).
  client.on('error', fail);
  upstream.on('error', fail);
});
server.listen(listenPort, listenHost, () => process.stdout.write(`relaying ${listen} to ${target}, ${delayMs} ms each way\n`));
const stop = (): void => { server.close(); process.exit(0); };
process.on('SIGTERM', stop).on('SIGINT', stop);
