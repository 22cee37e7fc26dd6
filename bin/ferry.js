#!/usr/bin/env node
// Plain JavaScript on purpose: it must run on an old Node long enough to say what is wrong, or to
// hand over to the Node an installed release brings. `npm run pack` bundles it as dist/ferry.js.
import { spawn } from 'node:child_process';
import { accessSync, constants, lstatSync, mkdirSync, statSync } from 'node:fs';
import module from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

const bundled = bundledNode();
if (bundled !== undefined && !sameFile(bundled, process.execPath)) {
  runOn(bundled);
} else {
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major < 22 || (major === 22 && minor < 18)) {
    process.stderr.write(`ferry needs Node.js >= 22.18 (24 LTS recommended); this is ${process.version}.\n`
      + 'Run it through "npx ferry" or "npm run ferry --" inside the project, which use the bundled Node 24;\n'
      + 'a release installed with npm brings its Node 24 on Linux x64.\n');
    process.exit(2);
  }
  enableCompileCache();
  const { main } = await import('./main.ts');
  process.exitCode = await main(process.argv.slice(2));
}

/**
 * The Node an installed release brings: its optional dependency node-<platform>-<arch> (the
 * release pins the version Ferry was tested with, and npm installs the one for this machine).
 * A checkout has none beside this file (`npx ferry` puts its own Node 24 first on the PATH).
 */
function bundledNode() {
  try {
    const manifest = module.createRequire(import.meta.url).resolve(`node-${process.platform}-${process.arch}/package.json`);
    const node = join(dirname(manifest), 'bin', 'node');
    accessSync(node, constants.X_OK);
    return node;
  } catch {
    return undefined;
  }
}

/** Whether two paths name one file (the same binary under a link, or hard-linked elsewhere). */
function sameFile(a, b) {
  try {
    const [x, y] = [statSync(a), statSync(b)];
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/**
 * Runs this command again on `node`, with the same flags, arguments and environment. Where Node
 * can, the process becomes the new one (same pid, descriptors and signals); on an older Node —
 * the one on the PATH that npm's link starts — a child takes over, which gets the signals a
 * supervisor sends this process (a terminal's Ctrl-C reaches both, so it is not passed on twice).
 */
function runOn(node) {
  const args = [...process.execArgv, process.argv[1], ...process.argv.slice(2)];
  if (typeof process.execve === 'function') process.execve(node, [node, ...args], process.env);
  const child = spawn(node, args, { stdio: 'inherit' });
  process.on('SIGINT', () => undefined);
  for (const signal of ['SIGTERM', 'SIGHUP']) process.on(signal, () => child.kill(signal));
  child.once('error', (err) => {
    process.stderr.write(`ferry: cannot start ${node}: ${err.message}\n`);
    process.exit(2);
  });
  child.once('exit', (code, signal) => {
    if (signal === null) process.exit(code ?? 1);
    // Ended by a signal: end the same way, so the caller sees what happened.
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  });
}

/**
 * Without a cache, every start strips the types of each module it loads and compiles it anew,
 * most of a second before a command does anything; Node keeps both results in a directory of
 * this user's own: $XDG_CACHE_HOME/ferry (default ~/.cache/ferry), else, with no usable home (a
 * service account, a read-only disk), one in the temp directory. NODE_COMPILE_CACHE chooses
 * another directory and NODE_DISABLE_COMPILE_CACHE=1 turns it off (Node reads both itself).
 * Anything going wrong here only means a slower start.
 */
function enableCompileCache() {
  if (typeof module.enableCompileCache !== 'function' || process.env.NODE_COMPILE_CACHE) return;
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  const { XDG_CACHE_HOME, HOME } = process.env;
  const cache = XDG_CACHE_HOME || (HOME ? join(HOME, '.cache') : undefined);
  const places = [...(cache ? [[cache, 'ferry']] : []), [tmpdir(), `ferry-cache-${uid ?? 'user'}`]];
  for (const [parent, name] of places) {
    const dir = ownDirectory(parent, name, uid);
    if (dir === undefined) continue;
    try {
      module.enableCompileCache(join(dir, 'compile-cache'));
    } catch {
      // A start without the cache is only slower.
    }
    return;
  }
}

/** parent/name, made if missing, if it is a directory this user owns and alone may write to. */
function ownDirectory(parent, name, uid) {
  const dir = join(parent, name);
  try {
    // One level at a time, not { recursive: true }: that never returns for a path under /proc.
    for (const path of [parent, dir]) {
      try {
        mkdirSync(path, { mode: 0o700 });
      } catch (err) {
        if (err?.code !== 'EEXIST') throw err;
      }
    }
    // In a shared temp directory another user could have made this directory first, and could
    // then plant compiled code in it.
    const stat = lstatSync(dir);
    if (!stat.isDirectory() || (uid !== undefined && (stat.uid !== uid || (stat.mode & 0o022) !== 0))) return undefined;
    accessSync(dir, constants.W_OK);
    return dir;
  } catch {
    return undefined;
  }
}
