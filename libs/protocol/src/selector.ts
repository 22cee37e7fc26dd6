import { FerryError } from './errors.ts';

/**
 * A label selector: every `key=value` must match and no `key!=value` may (`env=prod,role=web`).
 * The one grammar for selectors: `--to selector:…`, the registry's `?selector=`, grants' hosts.
 */
export interface Selector {
  equal: [string, string][];
  notEqual: [string, string][];
}

const TERM = /^([A-Za-z0-9_./-]+)(!?=)(.*)$/;

/** @throws FerryError FERRY_ERR_BAD_REQUEST naming the term that is not `key=value` or `key!=value`. */
export function parseSelector(value: string): Selector {
  const selector: Selector = { equal: [], notEqual: [] };
  for (const term of value.split(',').map((s) => s.trim()).filter(Boolean)) {
    const match = TERM.exec(term);
    if (!match?.[1] || match[3] === undefined) {
      throw new FerryError('FERRY_ERR_BAD_REQUEST', { message: `selector: "${term}" is not key=value or key!=value`, details: { selector: value } });
    }
    (match[2] === '=' ? selector.equal : selector.notEqual).push([match[1], match[3]]);
  }
  return selector;
}

export function matchesSelector(selector: Selector, labels: Readonly<Record<string, string>>): boolean {
  const value = (key: string): string | undefined => (Object.hasOwn(labels, key) ? labels[key] : undefined);
  return selector.equal.every(([k, v]) => value(k) === v) && selector.notEqual.every(([k, v]) => value(k) !== v);
}

/** `*` matches any run of characters, everything else itself: `web-*` matches `web-1`, not `db`. */
export function matchesGlob(pattern: string, name: string): boolean {
  const source = pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${source}$`).test(name);
}
