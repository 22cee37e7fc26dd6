/**
 * Each service's settings table lists exactly the variables its configuration schema reads: a
 * variable added to a schema without a row, or a row left for a variable no schema reads, fails.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

const read = (path: string): string => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8');

/** The variables a `z.object({...})` schema names, `...credentialVars` expanded; refused ones (`z.never`) left out. */
function schemaVariables(source: string): Set<string> {
  const names = [...source.matchAll(/^\s+((?:FERRY|DOCKER)_[A-Z_]+): (?!z\.never)/gm)].map((m) => m[1] ?? '');
  if (/\.\.\.credentialVars/.test(source)) names.push(...schemaVariables(read('libs/config/src/vars.ts').split('export const credentialVars')[1]?.split('};')[0] ?? ''));
  return new Set(names);
}

/** The variables the first column of a markdown table under `heading` names. */
function documentedVariables(markdown: string, heading: string): Set<string> {
  const section = markdown.split(/^## /m).find((s) => s.startsWith(heading)) ?? '';
  const names = section.split('\n').filter((l) => l.startsWith('| `')).flatMap((l) => [...(l.split('|')[1] ?? '').matchAll(/`((?:FERRY|DOCKER)_[A-Z_]+)`/g)].map((m) => m[1] ?? ''));
  return new Set(names);
}

const SERVICES = [
  { name: 'receiver', schema: 'services/receiver/src/config.ts', doc: 'docs/receiver.md', heading: 'Settings' },
  { name: 'sender service', schema: 'services/sender/src/service/config.ts', doc: 'docs/sender-service.md', heading: 'Settings' },
  { name: 'registry', schema: 'services/registry/src/config.ts', doc: 'docs/registry.md', heading: 'Configuration' },
];

describe('settings tables', () => {
  for (const service of SERVICES) {
    it(`${service.doc} lists every variable the ${service.name} reads, and no other`, () => {
      const schema = schemaVariables(read(service.schema));
      const documented = documentedVariables(read(service.doc), service.heading);
      assert.ok(schema.size > 5, `read the schema of ${service.schema}`);
      assert.deepEqual([...schema].filter((v) => !documented.has(v)).sort(), [], `missing from ${service.doc}`);
      assert.deepEqual([...documented].filter((v) => !schema.has(v)).sort(), [], `documented but not read by ${service.schema}`);
    });
  }
});
