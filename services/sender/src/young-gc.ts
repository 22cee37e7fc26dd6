import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type Collect = (options: { type: 'minor'; execution: 'sync' }) => void;

let collector: Collect | null | undefined;

/**
 * Scavenges V8's young generation every `intervalMs` until the returned function is called.
 *
 * Why: V8 starts a collection when JavaScript objects fill the young generation, not when buffers
 * do. A push moves a gigabyte in 64 KiB buffers that each die at once, with few JavaScript objects
 * around them, so dead buffers piled up to ~60 MiB before a full collection freed them. The
 * receiver avoids this with 1 MiB semi-spaces, which need V8 flags at start and so a second start
 * of Node (~0.1 s); a `ferry push` takes this instead: a scavenge costs about a millisecond and
 * frees every buffer that died since the last one.
 *
 * `gc` is exposed at run time: V8 installs it in contexts created after the flag is set. Where
 * that fails, pushes only use more memory.
 */
export function scavengePeriodically(intervalMs = 100): () => void {
  if (!scavenge()) return () => undefined;
  const timer = setInterval(scavenge, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** One scavenge now; false where `gc` cannot be had. */
export function scavenge(): boolean {
  if (collector === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      collector = runInNewContext('gc') as Collect;
    } catch {
      collector = null;
    }
  }
  collector?.({ type: 'minor', execution: 'sync' });
  return collector !== null;
}
