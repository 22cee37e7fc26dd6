#!/usr/bin/env bash
# The test command (npm test): installs what is missing, starts the local stack (two Docker
# engines, nats-server, redis-server on loopback), then type-checks, lints and runs every test
# against those real parts. Arguments select test files (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib/safe-dir.sh
. deploy/lib/safe-dir.sh
bash deploy/lib/ensure-node-deps.sh
bash deploy/local-stack.sh up >/dev/null
# Beyond the stack: sshd for the bootstrap tests, ssh and openssl for the shell client, Chromium
# for the dashboard in a real browser, hey for load through the proxy.
bash deploy/local-stack.sh install openssh-server:/usr/sbin/sshd openssh-client:ssh openssl:openssl chromium:/usr/bin/chromium hey:hey
# Read as data, after checking that the state dir is ours alone: never sourced.
ferry_load_env "${FERRY_STACK_DIR:-/tmp/ferry-stack}/stack.env" || exit 1
export PATH="$PWD/node_modules/.bin:$PATH"
echo "node $(node --version); stack: build=$FERRY_BUILD_DOCKER_HOST target=$FERRY_TARGET_DOCKER_HOST nats=$(ferry_redact_url "$FERRY_NATS_URL")" >&2

if [ "$#" -eq 0 ]; then
  echo "== typecheck" >&2; tsc -p tsconfig.json --noEmit
  echo "== lint" >&2; eslint --max-warnings 0 .
  set -- 'test/unit/**/*.test.ts' 'test/integration/**/*.test.ts' 'test/e2e/**/*.test.ts'
fi
echo "== tests" >&2
# One file at a time: the integration files share the two engines and the NATS stream. A test
# that hangs fails after 15 minutes instead of holding the run (the slowest takes about one).
exec node --test --test-concurrency=1 --test-timeout=900000 --test-reporter=spec "$@"
