/**
 * Every reference in the documents and code comments leads somewhere: relative links to files
 * and headings that exist, `docs/….md` paths the repository holds, and `README "Section"` style
 * pointers to a section the named document has. The synthetic cases show each kind of dangling
 * reference is caught, so the repository's clean result means something.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { check, checkRepository, describeProblem, findReferences, headingSlugs, repositoryFiles, type Tree } from '../../scripts/doc-links.ts';

function tree(files: Record<string, string>): Tree {
  return {
    read: (path) => files[path],
    exists: (path) => path in files || Object.keys(files).some((f) => f.startsWith(`${path}/`)),
  };
}

function problems(files: Record<string, string>): string[] {
  const t = tree(files);
  return check(Object.keys(files).flatMap((f) => findReferences(f, files[f] ?? '')), t).map((p) => p.reason);
}

describe('documentation references', () => {
  it('all resolve in this repository', () => {
    const found = checkRepository().map(describeProblem);
    assert.deepEqual(found, [], `dangling references:\n${found.join('\n')}`);
  });

  it('scans the README, docs/, bench/README.md, the services\' READMEs and source comments', () => {
    const files = repositoryFiles();
    for (const f of ['README.md', 'docs/security.md', 'bench/README.md', 'services/registry/README.md', 'services/receiver/src/config.ts']) {
      assert.ok(files.includes(f), f);
    }
  });

  it('makes GitHub\'s heading anchors', () => {
    const slugs = headingSlugs('# Ferry\n## `ferry push IMAGE --to URL`\n### 8.2 Layer negotiation\n## Notes\n## Notes\n```\n# not a heading\n```\n');
    assert.deepEqual([...slugs], ['ferry', 'ferry-push-image---to-url', '82-layer-negotiation', 'notes', 'notes-1']);
  });

  it('accepts references that resolve', () => {
    assert.deepEqual(problems({
      'README.md': '# Ferry\n## Two commands\nSee [ops](docs/ops.md#install) and docs/ops.md.\n',
      'docs/ops.md': '# Ops\n## Install\n**Bold lead.** text. Back to [the README](../README.md#two-commands), [here](#install).\n',
      'libs/x/src/a.ts': '// see README "Two commands" and docs/ops.md, "Install"; ops.md §2\n',
      'docs/example.md': '```\n[not a link](missing.md)\n```\n`[code](missing.md)` and [web](https://example.com/x.md)\n',
    }), []);
  });

  it('catches a link to a missing file, a missing anchor, a missing docs path and a missing section', () => {
    assert.deepEqual(problems({
      'README.md': '# Ferry\n[gone](docs/gone.md) and [bad anchor](docs/ops.md#nope)\n',
      'docs/ops.md': '# Ops\n## Install\n',
      'libs/x/src/a.ts': '// see README "Receiver policy", docs/missing.md and DESIGN.md\n',
    }), [
      'docs/gone.md does not exist',
      'docs/ops.md has no heading with the anchor #nope',
      'docs/missing.md does not exist',
      'libs/x/src/DESIGN.md does not exist',
      'README.md has no section "Receiver policy"',
    ]);
  });
});
