import { unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { FerryError } from '@ferry/protocol';

/** The lock's name in the data directory. */
export const LOCK_NAME = 'ferry.lock';
/** sun_path holds 108 bytes with its terminating NUL. */
const MAX_SOCKET_PATH = 107;

export interface DataDirLock {
  path: string;
  release(): Promise<void>;
}

/**
 * One process at a time on a receiver's data directory (journal, retained releases, outbox): the
 * receiver and `ferry bundle apply` both take this lock before touching it. The lock is a unix
 * socket bound at DATA_DIR/ferry.lock. A socket — not a pid file — because it dies with its
 * process whatever kills it, names no pid that could be reused, and answers across pid and mount
 * namespaces (a containerised receiver's bind-mounted data directory locks out an apply on the
 * host): a connect that succeeds means a live holder; a refused one means its holder died, and the
 * stale file is replaced.
 */
export async function lockDataDir(dataDir: string, holder: string): Promise<DataDirLock> {
  const path = join(dataDir, LOCK_NAME);
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    throw new FerryError('FERRY_ERR_CONFIG', { message: `FERRY_DATA_DIR is too long for its lock socket ${path} (at most ${MAX_SOCKET_PATH - LOCK_NAME.length - 1} bytes): use a shorter path` });
  }
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const server = await bind(path, holder);
    if (server) return { path, release: () => release(server) };
    if (await alive(path)) break;
    // Its holder is gone: the file alone is left. Another process may be doing the same; the bind
    // after it decides, and a live winner is then found by the next connect.
    await unlink(path).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new FerryError('FERRY_ERR_CONFIG', { message: `${path} is in the way of the data directory's lock and cannot be removed: ${(err as Error).message}`, cause: err });
    });
  }
  throw new FerryError('FERRY_ERR_DATA_DIR_LOCKED', {
    message: `Another process (a running receiver, or another "ferry bundle apply") holds the data directory ${dataDir} (${path}): stop the receiver first, or give this one its own FERRY_DATA_DIR`,
    details: { dataDir, lock: path },
  });
}

/** The bound server, or undefined when the path is taken. */
async function bind(path: string, holder: string): Promise<Server | undefined> {
  const server = createServer((socket) => {
    // Whoever asks is told who holds it, then let go.
    socket.end(`${JSON.stringify({ holder, pid: process.pid })}\n`);
    socket.on('error', () => undefined);
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') resolve(undefined);
      else reject(new FerryError('FERRY_ERR_CONFIG', { message: `Cannot create the data directory's lock ${path}: ${err.message}`, cause: err }));
    });
    server.listen({ path, exclusive: true }, () => {
      // The lock must not keep a process alive that is otherwise done.
      server.unref();
      resolve(server);
    });
  });
}

async function alive(path: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      socket.destroy();
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') resolve(false);
      else reject(new FerryError('FERRY_ERR_CONFIG', { message: `Cannot check the data directory's lock ${path}: ${err.message}`, cause: err }));
    });
  });
}

async function release(server: Server): Promise<void> {
  // Closing a listening unix socket unlinks its path; unlinking it here as well could remove the
  // lock of a process that took it meanwhile.
  await new Promise<void>((resolve) => server.close(() => resolve()));
}
