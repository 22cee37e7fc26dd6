import { createServer, type ServerResponse } from 'node:http';

export interface HealthGate {
  /** The health check URL to put in a manifest (`health: {type: "http", url}`). */
  url: string;
  /** Settles at the first probe: the deployment is in VALIDATING from then on. */
  firstProbe: Promise<void>;
  /** Answers every held probe, and every later one, with 200. */
  release(): void;
  close(): Promise<void>;
}

/** An HTTP health endpoint on loopback that holds every probe until released: a deployment parks in VALIDATING. */
export async function healthGate(): Promise<HealthGate> {
  const held: ServerResponse[] = [];
  let open = false;
  let probed!: () => void;
  const firstProbe = new Promise<void>((resolve) => { probed = resolve; });
  const server = createServer((_req, res) => {
    probed();
    if (open) res.end('ok');
    else held.push(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    url: `http://127.0.0.1:${address.port}/healthz`,
    firstProbe,
    release: () => {
      open = true;
      for (const res of held.splice(0)) res.end('ok');
    },
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
