#!/usr/bin/env bash
# Installs the project's npm dependencies when they are missing or older than the lockfile. They
# include Node 24 itself (the "node" package), so everything after this runs on the bundled Node
# whatever the machine's own Node is.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v npm >/dev/null 2>&1; then
  echo "ferry: npm is needed to install the project (apt-get install npm, or any Node.js >= 18)" >&2
  exit 2
fi
if [ ! -x node_modules/.bin/node ] || [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "ferry: installing npm dependencies (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
version=$(node_modules/.bin/node --version)
case "$version" in
  v2[2-9].*|v[3-9][0-9].*) ;;
  *) echo "ferry: node_modules/.bin/node is $version; expected the bundled Node 24" >&2; exit 2 ;;
esac
