import { FerryError } from './errors.ts';

/*
 * Host labels and the selectors that pick hosts by them: one grammar for every place that takes
 * either (docs/protocol.md §2.3). Labels are assigned as `key=value[,key=value…]` (a receiver's
 * FERRY_LABELS, a join token's pinned labels); a selector is `key=value` and `key!=value` terms
 * joined by commas (`--to selector:…`, `ferry hosts --selector`, the registry's `?selector=`,
 * grants' host selectors).
 */

/** At most 63 letters, digits, `.`, `_`, `/` and `-`, starting with a letter or digit. */
export const LABEL_KEY_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;
/**
 * At most 256 characters, none of them a control character (Unicode Cc: U+0000–U+001F,
 * U+007F–U+009F) or a comma, and not starting with `=`:
 * every value a host can carry is one a selector can name (a comma would end the term, and
 * `env==prod` is refused rather than read as the value `=prod`).
 */
export const LABEL_VALUE_PATTERN = /^(?!=)[^\p{Cc},]{0,256}$/u;
export const MAX_LABELS = 64;
/** Terms of one selector. */
export const MAX_SELECTOR_TERMS = 64;
/** Characters of a selector or a label list: checked before anything is split. */
export const MAX_SELECTOR_LENGTH = 4096;
/** A target of this form (`selector:env=prod`) is resolved by the registry. */
export const SELECTOR_PREFIX = 'selector:';

/** Every `key=value` must match and no `key!=value` may (`env=prod,role!=db`). */
export interface Selector {
  equal: [string, string][];
  notEqual: [string, string][];
}

/** `key` `=` or `!=` `value`, the operator being the first `=` (and the `!` just before it). */
const TERM = /^([^=]*?)(!?=)(.*)$/s;

/**
 * @throws FerryError FERRY_ERR_BAD_REQUEST naming what is wrong (never echoing a huge input): an
 *   empty selector, an empty term, a term without `=`, a bad key or value, too many terms.
 */
export function parseSelector(text: string, where = 'selector'): Selector {
  const selector: Selector = { equal: [], notEqual: [] };
  for (const [key, operator, value] of terms(text, where, 'selector', MAX_SELECTOR_TERMS)) {
    (operator === '=' ? selector.equal : selector.notEqual).push([key, value]);
  }
  return selector;
}

/**
 * Label assignments, `key=value[,key=value…]`. Keys and values follow the selector grammar (no
 * key can be `__proto__`: keys start with a letter or digit); `!=` and a key named twice are refused.
 *
 * @throws FerryError FERRY_ERR_BAD_REQUEST naming what is wrong.
 */
export function parseHostLabels(text: string, where = 'labels'): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const [key, operator, value] of terms(text, where, 'labels', MAX_LABELS)) {
    if (operator !== '=') throw bad(where, `"${key}!=…" is a selector term; a label is KEY=VALUE`);
    if (Object.hasOwn(labels, key)) throw bad(where, `"${key}" is given twice`);
    labels[key] = value;
  }
  return labels;
}

export function matchesSelector(selector: Selector, labels: Readonly<Record<string, string>>): boolean {
  const value = (key: string): string | undefined => (Object.hasOwn(labels, key) ? labels[key] : undefined);
  return selector.equal.every(([k, v]) => value(k) === v) && selector.notEqual.every(([k, v]) => value(k) !== v);
}

/**
 * Checks a selector a person typed (a flag, a target): the problem is a usage error naming where
 * it was typed, followed by the grammar.
 *
 * @throws FerryError FERRY_ERR_USAGE.
 */
export function checkSelectorInput(where: string, text: string): Selector {
  try {
    return parseSelector(text, where);
  } catch (err) {
    throw new FerryError('FERRY_ERR_USAGE', { message: `${(err as Error).message}; a selector is ${SELECTOR_SYNTAX}` });
  }
}

/** The grammar in one line, for usage errors and help texts. */
export const SELECTOR_SYNTAX = 'KEY=VALUE or KEY!=VALUE, joined by commas (e.g. env=prod,role!=db)';

/** `where` names the input in messages; `what` decides whether `!=` is mentioned. */
function terms(text: string, where: string, what: 'selector' | 'labels', max: number): [string, '=' | '!=', string][] {
  if (text.length > MAX_SELECTOR_LENGTH) throw bad(where, `longer than ${MAX_SELECTOR_LENGTH} characters`);
  if (spaces(text) === '') throw bad(where, 'empty');
  const parts = text.split(',');
  if (parts.length > max) throw bad(where, `more than ${max} terms`);
  return parts.map((part) => {
    // Spaces around a term and around its operator are layout; anything else counts.
    const term = spaces(part);
    if (term === '') throw bad(where, 'an empty term (two commas in a row, or one at an end)');
    const match = TERM.exec(term);
    if (!match) throw bad(where, `"${shown(term)}" is not KEY=VALUE${what === 'selector' ? ' or KEY!=VALUE' : ''}`);
    const [, rawKey = '', operator, rawValue = ''] = match;
    const key = spaces(rawKey);
    const value = spaces(rawValue);
    if (!LABEL_KEY_PATTERN.test(key)) {
      throw bad(where, `"${shown(key)}" is not a label key: at most 63 letters, digits, ".", "_", "/" and "-", starting with a letter or digit`);
    }
    if (value.startsWith('=')) throw bad(where, `"${key}${operator}=…": the operator is = or !=, and a value does not start with "="`);
    if (!LABEL_VALUE_PATTERN.test(value)) throw bad(where, `the value of "${key}": at most 256 characters, no control characters`);
    return [key, operator === '!=' ? '!=' : '=', value];
  });
}

function spaces(text: string): string {
  return text.replace(/^ +| +$/g, '');
}

/** A piece of the input fit for a message: short, control characters escaped. */
function shown(text: string): string {
  const cut = text.length > 64 ? `${text.slice(0, 64)}…` : text;
  return cut.replace(/\p{Cc}/gu, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function bad(where: string, problem: string): FerryError {
  return new FerryError('FERRY_ERR_BAD_REQUEST', { message: `${where}: ${problem}` });
}

/** `*` matches any run of characters, everything else itself: `web-*` matches `web-1`, not `db`. */
export function matchesGlob(pattern: string, name: string): boolean {
  const source = pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${source}$`).test(name);
}
