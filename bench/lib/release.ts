import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { run, type Processes } from './proc.ts';

/** Which `ferry` the bench runs: the release a user installs, or this checkout's sources. */
export type FerryBuild = 'release' | 'checkout';

export interface FerryEntry {
  build: FerryBuild;
  /** The script `node` runs: the installed release's dist/ferry.js, or the checkout's bin/ferry.js. */
  script: string;
  /** How the report names it. */
  describe: string;
}

/**
 * The `ferry` to measure. `release` packs this checkout (`npm run pack`) and installs the tarball
 * into the bench's temp directory the way `npm i -g` would, so that the bench times what users
 * run: the bundled JavaScript, where the checkout's sources are TypeScript that Node strips on
 * every start (half a second and more of each push's start-up on 2 cores).
 */
export async function ferryEntry(procs: Processes, root: string, tmp: string, build: FerryBuild, log: (message: string) => void): Promise<FerryEntry> {
  if (build === 'checkout') return { build, script: join(root, 'bin/ferry.js'), describe: 'the checkout\'s sources (`node bin/ferry.js`)' };
  const out = join(tmp, 'release');
  await mkdir(out, { recursive: true });
  log('packing and installing the release (npm run pack; npm install of the tarball)');
  const packed = await run(procs, process.execPath, [join(root, 'scripts/pack.ts'), '--out', out]);
  const tarball = packed.stdout.trim().split('\n').at(-1) ?? '';
  if (!tarball.endsWith('.tgz')) throw new Error(`npm run pack printed no tarball: ${packed.stdout.slice(-500)}`);
  const prefix = join(out, 'installed');
  await mkdir(prefix, { recursive: true });
  await run(procs, 'npm', ['install', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel', 'error', tarball]);
  return {
    build,
    script: join(prefix, 'node_modules/ferry/dist/ferry.js'),
    describe: `the release as installed (\`npm run pack\`, then \`npm install\` of ${tarball.split('/').at(-1) ?? 'the tarball'}: the bundled dist/ferry.js)`,
  };
}

