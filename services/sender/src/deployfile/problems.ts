import { FerryError } from '@ferry/protocol';

/** One thing wrong with a deployment document: where (field path, and line:column in a file) and what. */
export interface Problem {
  /** `services.web.ports[0]`; empty for the document itself. */
  path: string;
  message: string;
  /** 1-based; present when the document came from a file. */
  line?: number;
  column?: number;
}

export type PathSegment = string | number;

const PLAIN_KEY = /^[A-Za-z_][A-Za-z0-9_-]*$/;

/** `['services', 'web', 'ports', 0]` → `services.web.ports[0]`; odd keys are quoted: `labels["a.b/c"]`. */
export function formatPath(path: readonly PathSegment[]): string {
  let text = '';
  for (const segment of path) {
    if (typeof segment === 'number') text += `[${segment}]`;
    else if (PLAIN_KEY.test(segment)) text += text === '' ? segment : `.${segment}`;
    else text += `[${JSON.stringify(segment)}]`;
  }
  return text;
}

/** `ferry.yaml:7:12 services.web.ports[0]: message`, the form editors and terminals link. */
export function formatProblem(problem: Problem, file?: string): string {
  const where = problem.line !== undefined ? `${file ?? '<document>'}:${problem.line}:${problem.column ?? 1}` : file;
  const head = [where, problem.path || undefined].filter(Boolean).join(' ');
  return head ? `${head}: ${problem.message}` : problem.message;
}

/** The one error an invalid document becomes: every problem in the message and in `details.problems`. */
export function invalidDocument(problems: Problem[], file?: string): FerryError {
  const lines = problems.map((p) => formatProblem(p, file));
  return new FerryError('FERRY_ERR_BAD_DEPLOYMENT_FILE', {
    message: `${file ?? 'The deployment document'} is invalid:\n  - ${lines.join('\n  - ')}`,
    details: { problems },
  });
}

export { closest } from '@ferry/config';
