import { dirname, resolve } from 'node:path';
import { readFile } from 'node:fs/promises';
import { LineCounter, isMap, isPair, isScalar, isSeq, parseDocument, type Node } from 'yaml';
import { FerryError } from '@ferry/protocol';
import { formatPath, invalidDocument, type PathSegment, type Problem } from './problems.ts';
import { validateDeployment, type DeploymentDocument, type RawProblem } from './schema.ts';

/** Deployment files larger than this are not deployment files. */
export const MAX_FILE_BYTES = 1024 ** 2;

export type ParseResult = { ok: true; document: DeploymentDocument } | { ok: false; problems: Problem[] };

export interface ParseOptions {
  /** Directory relative build contexts start from (the file's). */
  baseDir: string;
  /** Values for `${VAR}` in env values. */
  env?: Record<string, string | undefined>;
}

/**
 * Parses and validates the text of a deployment file. Pure: every problem — YAML syntax, a
 * duplicate key, a bad field — comes back with its line, column and field path.
 */
export function parseDeploymentText(text: string, options: ParseOptions): ParseResult {
  const lineCounter = new LineCounter();
  // YAML 1.2 core schema: `no` and `8080:80` stay strings, as a Compose user means them.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true, version: '1.2' });
  const syntax = [...doc.errors, ...doc.warnings];
  if (doc.errors.length > 0) {
    return {
      ok: false,
      problems: syntax.map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return { path: '', message: e.message.split('\n')[0] ?? e.message, line: pos.line, column: pos.col };
      }),
    };
  }
  const result = validateDeployment(doc.toJS({ maxAliasCount: 100 }), { baseDir: options.baseDir, ...(options.env ? { env: options.env } : {}) });
  if (result.ok) return result;
  return {
    ok: false,
    problems: result.problems
      .map((p) => place(p, doc.contents, lineCounter))
      .sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0)),
  };
}

/**
 * Reads and validates a deployment file.
 *
 * @throws FerryError FERRY_ERR_USAGE when it cannot be read, FERRY_ERR_BAD_DEPLOYMENT_FILE with every problem.
 */
export async function loadDeploymentFile(path: string, env?: Record<string, string | undefined>): Promise<DeploymentDocument> {
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.length > MAX_FILE_BYTES) throw new FerryError('FERRY_ERR_USAGE', { message: `${path}: larger than ${MAX_FILE_BYTES} bytes; not a deployment file` });
    text = bytes.toString('utf8');
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('FERRY_ERR_USAGE', { message: `-f ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? 'error'})`, cause: err });
  }
  const result = parseDeploymentText(text, { baseDir: dirname(resolve(path)), ...(env ? { env } : {}) });
  if (!result.ok) throw invalidDocument(result.problems, path);
  return result.document;
}

/** Validates a document that arrived as JSON (no file, so no line numbers and no relative paths). */
export function parseDeploymentJson(value: unknown): ParseResult {
  const result = validateDeployment(value);
  if (result.ok) return result;
  return { ok: false, problems: result.problems.map((p) => ({ path: formatPath(p.path), message: p.message })) };
}

function place(problem: RawProblem, root: unknown, lines: LineCounter): Problem {
  const offset = locate(root, problem.path, problem.atKey === true);
  const pos = offset === undefined ? undefined : lines.linePos(offset);
  return { path: formatPath(problem.path), message: problem.message, ...(pos ? { line: pos.line, column: pos.col } : {}) };
}

/**
 * Where in the text the node at `path` starts. A path the friendly forms made up (an env list
 * turned into a map) is not in the tree: the deepest node that is stands in for it.
 */
function locate(root: unknown, path: PathSegment[], atKey: boolean): number | undefined {
  let node = root as Node | null | undefined;
  let offset = startOf(node);
  for (let i = 0; i < path.length; i++) {
    const segment = path[i];
    const last = i === path.length - 1;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && (isScalar(p.key) ? p.key.value : p.key) === segment);
      if (!pair) return offset;
      const keyStart = startOf(pair.key as Node | null);
      if (last && atKey) return keyStart ?? offset;
      node = pair.value as Node | null;
      offset = startOf(node) ?? keyStart ?? offset;
    } else if (isSeq(node) && typeof segment === 'number') {
      const item = node.items[segment] as Node | null | undefined;
      if (item === undefined) return offset;
      node = item;
      offset = startOf(node) ?? offset;
    } else {
      return offset;
    }
  }
  return offset;
}

function startOf(node: Node | null | undefined): number | undefined {
  return node && typeof node === 'object' && 'range' in node && node.range ? node.range[0] : undefined;
}
