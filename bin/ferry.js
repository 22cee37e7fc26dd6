#!/usr/bin/env node
// Plain JavaScript on purpose: it must run on an old Node long enough to say what is wrong.
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 18)) {
  process.stderr.write(`ferry needs Node.js >= 22.18 (24 LTS recommended); this is ${process.version}.\n`
    + 'Run it through "npx ferry" or "npm run ferry --" inside the project, which use the bundled Node 24.\n');
  process.exit(2);
}
const { main } = await import('./main.ts');
process.exitCode = await main(process.argv.slice(2));
