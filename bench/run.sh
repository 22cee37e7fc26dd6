#!/usr/bin/env bash
# npm run bench: installs and starts what the comparison needs (the npm dependencies with Node 24,
# the local stack, sshd for the classic script, Debian's docker-registry, iproute2 and socat for
# the shaped links), then runs compare.ts with the arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib/safe-dir.sh
. deploy/lib/safe-dir.sh
bash deploy/lib/ensure-node-deps.sh
bash deploy/local-stack.sh up >/dev/null
bash deploy/local-stack.sh install openssh-server:/usr/sbin/sshd openssh-client:ssh docker-registry:/usr/bin/docker-registry iproute2:/usr/sbin/tc socat:/usr/bin/socat
# Read as data, after checking that the state dir is ours alone: never sourced.
ferry_load_env "${FERRY_STACK_DIR:-/tmp/ferry-stack}/stack.env" || exit 1
export PATH="$PWD/node_modules/.bin:$PATH"
exec node bench/compare.ts "$@"
