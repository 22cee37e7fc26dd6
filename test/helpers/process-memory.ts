import { open, readFile } from 'node:fs/promises';

/** Read at once from a mapping; consecutive reads overlap by the longest needle less one byte. */
const CHUNK = 8 * 1024 ** 2;

/** What a search of a process's memory found, and how much memory it read. */
export interface MemorySearch {
  /** For each needle, in order: whether it occurs anywhere in the memory read. */
  found: boolean[];
  bytesRead: number;
  mappings: number;
}

/**
 * Searches the memory of a live process for byte strings, as an attacker with root on its host
 * could: every readable mapping listed in /proc/PID/maps (heaps, stacks, V8's spaces, mapped
 * files) read through /proc/PID/mem. Needs ptrace access to the process (root, or its parent).
 * Mappings the kernel will not hand out (vvar, vsyscall) or that vanish while read are skipped.
 */
export async function searchMemory(pid: number, needles: Buffer[]): Promise<MemorySearch> {
  if (needles.some((n) => n.length === 0)) throw new Error('an empty needle matches everywhere');
  const found = needles.map(() => false);
  const overlap = Math.max(...needles.map((n) => n.length)) - 1;
  const maps = await readFile(`/proc/${pid}/maps`, 'utf8');
  const mem = await open(`/proc/${pid}/mem`, 'r');
  let bytesRead = 0;
  let mappings = 0;
  try {
    const buffer = Buffer.alloc(overlap + CHUNK);
    for (const line of maps.split('\n')) {
      const [range = '', perms = '', , , , name = ''] = line.trim().split(/\s+/);
      if (!perms.startsWith('r') || name === '[vvar]' || name === '[vsyscall]' || name === '[vvar_vclock]') continue;
      const [start, end] = range.split('-').map((hex) => Number.parseInt(hex, 16));
      if (start === undefined || end === undefined || !(end > start)) continue;
      mappings += 1;
      let carried = 0;
      for (let at = start; at < end; at += CHUNK) {
        const length = Math.min(CHUNK, end - at);
        let got: number;
        try {
          ({ bytesRead: got } = await mem.read(buffer, carried, length, at));
        } catch {
          break;
        }
        if (got === 0) break;
        bytesRead += got;
        const window = buffer.subarray(0, carried + got);
        needles.forEach((needle, i) => {
          if (!found[i] && window.includes(needle)) found[i] = true;
        });
        carried = Math.min(overlap, window.length);
        window.copyWithin(0, window.length - carried);
      }
    }
  } finally {
    await mem.close();
  }
  return { found, bytesRead, mappings };
}
