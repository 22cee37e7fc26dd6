/**
 * Finds the references in Ferry's documents and code comments that lead nowhere: a relative
 * markdown link to a missing file or heading, a `docs/….md` path the repository does not hold, or
 * a pointer to a named section (`docs/receiver.md "Policy"`, `docs/security.md, "Residual risks"`)
 * that no heading or bold lead-in carries. test/unit/doc-links.test.ts runs it over the repository;
 * `node scripts/doc-links.ts` prints what it finds.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

export const ROOT = normalize(join(import.meta.dirname, '..'));

/** One reference found in a file. `line` is 1-based. */
export interface Reference {
  file: string;
  line: number;
  /** The target path, relative to the repository root (already resolved against `file` for links). */
  path: string;
  /** A `#anchor` of a markdown link, or a quoted section name of a pointer. */
  anchor?: string;
  section?: string;
  text: string;
  /** Other places the path may mean: a file named without its folder (`protocol.md`). */
  alternatives?: string[];
}

export interface Problem { reference: Reference; reason: string }

/** What the checker needs from a repository: its files' text, and whether a path exists. */
export interface Tree {
  read(path: string): string | undefined;
  exists(path: string): boolean;
}

/**
 * GitHub's heading anchors: lower case, punctuation dropped (letters, digits, `_`, `-` and spaces
 * kept), spaces to `-`; a repeated heading gets `-1`, `-2`… Inline markup is reduced to its text.
 */
export function headingSlugs(markdown: string): Set<string> {
  const slugs = new Set<string>();
  const seen = new Map<string, number>();
  for (const heading of headings(markdown)) {
    const base = heading.toLowerCase().replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '').replace(/ /g, '-');
    const count = seen.get(base) ?? 0;
    seen.set(base, count + 1);
    slugs.add(count === 0 ? base : `${base}-${count}`);
  }
  for (const m of markdown.matchAll(/<a\s+(?:id|name)="([^"]+)"/g)) slugs.add(m[1] ?? '');
  return slugs;
}

/** The text of each ATX heading outside code fences, with links, code and emphasis markup removed. */
export function headings(markdown: string): string[] {
  const out: string[] = [];
  for (const { text } of proseLines(markdown)) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(text);
    if (m) out.push(plain(m[1] ?? ''));
  }
  return out;
}

/** Bold lead-ins (`**Read from the layer store.**`) name sections too, where a heading would be too many. */
function boldPhrases(markdown: string): string[] {
  return [...markdown.matchAll(/\*\*([^*]+)\*\*/g)].map((m) => plain(m[1] ?? ''));
}

function plain(text: string): string {
  return text.replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1').replace(/`/g, '').trim();
}

/** Lines outside fenced code blocks, numbered from 1. */
function proseLines(markdown: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  let fence: string | undefined;
  markdown.split('\n').forEach((text, i) => {
    const m = /^\s*(`{3,}|~{3,})/.exec(text);
    if (m) {
      const marker = m[1] ?? '';
      if (fence === undefined) fence = marker;
      else if (marker[0] === fence[0] && marker.length >= fence.length) fence = undefined;
      return;
    }
    if (fence === undefined) out.push({ line: i + 1, text });
  });
  return out;
}

/** A document or source file named without its folder (`protocol.md`) inside docs/ means docs/protocol.md. */
const SECTION_POINTER = /(README(?:\.md)?|(?:[\w.-]+\/)*[\w.-]+\.md)(?:'s)?(?:,\s*|\s+)(?:under\s+)?\(?["“]([^"”\n]+)["”]/g;
const DOC_PATH = /(?<![\w/.-])((?:docs|bench|services\/[\w-]+|libs\/[\w-]+)\/(?:[\w.-]+\/)*[\w.-]+\.md)(#[\w-]+)?/g;
const BARE_DOC = /(?<![\w/.-])([A-Za-z][\w-]*\.md)\b/g;
const MD_LINK = /!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g;

/** Every checkable reference of one file: links (markdown only), repository paths and section pointers. */
export function findReferences(file: string, text: string): Reference[] {
  const markdown = file.endsWith('.md');
  const lines = markdown ? proseLines(text) : text.split('\n').map((t, i) => ({ line: i + 1, text: t }));
  const refs: Reference[] = [];
  for (const { line, text: content } of lines) {
    if (markdown) {
      // Inline code is an example, not a reference: `[x](y)` inside backticks is left alone.
      const prose = content.replace(/`[^`]*`/g, (code) => ' '.repeat(code.length));
      for (const m of prose.matchAll(MD_LINK)) {
        const target = m[1] ?? '';
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, mailto:, …
        const [path = '', anchor] = target.split('#', 2);
        const resolved = path === '' ? file : normalize(join(dirname(file), decodeURIComponent(path)));
        refs.push({ file, line, path: resolved, ...(anchor ? { anchor } : {}), text: m[0] });
      }
    }
    for (const m of content.matchAll(DOC_PATH)) {
      const anchor = m[2]?.slice(1);
      refs.push({ file, line, path: m[1] ?? '', ...(anchor ? { anchor } : {}), text: m[0] });
    }
    // A document named without its folder: in this folder, at the top, or in docs/ (comments say "protocol.md §7").
    for (const m of content.replace(DOC_PATH, ' ').replace(markdown ? MD_LINK : /$^/, ' ').matchAll(BARE_DOC)) {
      const name = m[1] ?? '';
      const [path = name, ...alternatives] = [...new Set([join(dirname(file), name), name, join('docs', name)])];
      refs.push({ file, line, path, alternatives, text: m[0] });
    }
    for (const m of content.matchAll(SECTION_POINTER)) {
      const name = m[1] ?? '';
      const path = /^README(\.md)?$/.test(name) ? 'README.md'
        : name.includes('/') ? name : join(file.startsWith('docs/') ? 'docs' : dirname(file), name);
      refs.push({ file, line, path: normalize(path), section: m[2] ?? '', text: m[0] });
    }
  }
  const seen = new Set<string>();
  return refs.filter((r) => !seen.has(`${r.line} ${r.path} ${r.anchor ?? ''} ${r.section ?? ''}`) && Boolean(seen.add(`${r.line} ${r.path} ${r.anchor ?? ''} ${r.section ?? ''}`)));
}

/** What is wrong with each reference, if anything. */
export function check(refs: readonly Reference[], tree: Tree): Problem[] {
  const problems: Problem[] = [];
  for (const reference of refs) {
    const found = [reference.path, ...(reference.alternatives ?? [])].find((path) => tree.exists(path));
    if (found === undefined) {
      problems.push({ reference, reason: `${reference.path} does not exist` });
      continue;
    }
    if (found !== reference.path) continue;
    if (reference.anchor === undefined && reference.section === undefined) continue;
    const target = tree.read(reference.path);
    if (target === undefined) {
      problems.push({ reference, reason: `${reference.path} is not a readable file, so it has no sections` });
      continue;
    }
    if (reference.anchor !== undefined && !headingSlugs(target).has(reference.anchor)) {
      problems.push({ reference, reason: `${reference.path} has no heading with the anchor #${reference.anchor}` });
    }
    if (reference.section !== undefined) {
      const wanted = reference.section.toLowerCase().replace(/[.:]$/, '');
      // "Layer negotiation" names "### 8.2 Layer negotiation": section numbers are not part of the name.
      const names = [...headings(target), ...boldPhrases(target)].map((h) => h.toLowerCase().replace(/^[\d.]+\s+/, ''));
      if (!names.some((h) => h.startsWith(wanted))) {
        problems.push({ reference, reason: `${reference.path} has no section "${reference.section}"` });
      }
    }
  }
  return problems;
}

/** The source folders whose comments and help texts are checked beside the documents. */
// test/ is left out: its fixtures name missing files on purpose.
const SOURCE_FOLDERS = ['bin', 'libs', 'services', 'deploy', 'bench', 'scripts'];
const SOURCE_EXTENSIONS = /\.(ts|js|sh|ya?ml|Dockerfile|service)$/;

/** The repository's files to scan, relative to ROOT. */
export function repositoryFiles(root = ROOT): string[] {
  const files = new Set<string>();
  const walk = (dir: string, keep: (path: string) => boolean): void => {
    for (const entry of readdirSync(join(root, dir), { withFileTypes: true })) {
      if (entry.name === 'node_modules' || entry.name.startsWith('.')) continue;
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path, keep);
      else if (keep(path)) files.add(path);
    }
  };
  files.add('README.md');
  walk('docs', (p) => p.endsWith('.md'));
  files.add('bench/README.md');
  for (const dir of ['services', 'libs']) walk(dir, (p) => /^[^/]+\/[^/]+\/README\.md$/.test(p));
  for (const dir of SOURCE_FOLDERS) if (existsSync(join(root, dir))) walk(dir, (p) => SOURCE_EXTENSIONS.test(p));
  return [...files].sort();
}

export function diskTree(root = ROOT): Tree {
  return {
    read: (path) => {
      try {
        return statSync(join(root, path)).isFile() ? readFileSync(join(root, path), 'utf8') : undefined;
      } catch {
        return undefined;
      }
    },
    exists: (path) => !relative(root, join(root, path)).startsWith('..') && existsSync(join(root, path)),
  };
}

/** Every problem in the repository at ROOT. */
export function checkRepository(root = ROOT): Problem[] {
  const tree = diskTree(root);
  return check(repositoryFiles(root).flatMap((file) => findReferences(file, tree.read(file) ?? '')), tree);
}

export function describeProblem({ reference, reason }: Problem): string {
  return `${reference.file}:${reference.line}: ${reference.text} → ${reason}`;
}

if (import.meta.main) {
  const problems = checkRepository();
  for (const problem of problems) process.stdout.write(`${describeProblem(problem)}\n`);
  process.exitCode = problems.length ? 1 : 0;
}
