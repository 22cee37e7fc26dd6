/**
 * docs/cli.md is made from the texts `ferry help` prints (npm run docs:cli): a help text changed
 * without regenerating it fails here, so the reference says what the command line says.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { CLI_DOC, commandNames, renderCliDoc } from '../../scripts/gen-cli-doc.ts';
import { HELP, HELPS } from '../../apps/cli/src/help.ts';

describe('docs/cli.md', () => {
  it('is what npm run docs:cli writes from today\'s help texts', () => {
    assert.equal(readFileSync(CLI_DOC, 'utf8'), renderCliDoc(), 'docs/cli.md is stale: run "npm run docs:cli" and commit it');
  });

  it('has a section for every command "ferry help" lists', () => {
    const doc = readFileSync(CLI_DOC, 'utf8');
    for (const name of commandNames(HELP, HELPS)) assert.ok(doc.includes(`## \`ferry ${name}\``), name);
  });

  it('orders commands as the overview lists them and keeps unlisted ones', () => {
    const overview = 'Commands:\n  push        a\n  help        b\n  key         "key new": c\n';
    assert.deepEqual(commandNames(overview, { key: '', zeta: '', push: '' }), ['push', 'key', 'zeta']);
  });
});
