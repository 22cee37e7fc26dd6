#!/usr/bin/env bash
# The demo (npm run demo): starts the local stack, builds a small multi-layer image FROM scratch on
# the "build" engine, starts a receiver for the "target" engine, pushes the image with `ferry push`,
# shows it answering, and replays the events the deployment produced.
#   bash deploy/demo.sh        run (again: it upgrades the demo in place)
#   bash deploy/demo.sh stop   stop the demo receiver and the local stack
# Env: FERRY_DEMO_PORT (the demo service's HTTP port, default 18080), FERRY_DEMO_DIR (state,
# default /tmp/ferry-demo), FERRY_STACK_DIR (see deploy/local-stack.sh). Both directories are
# made 0700 by the scripts, and an existing one that another user could have written to is refused
# before anything in it is read (deploy/lib/safe-dir.sh).
set -euo pipefail
demo_dir=${FERRY_DEMO_DIR:-/tmp/ferry-demo}
case $demo_dir in /*) ;; *) demo_dir=$PWD/$demo_dir ;; esac
cd "$(dirname "$0")/.."
root=$PWD
port=${FERRY_DEMO_PORT:-18080}
listen=127.0.0.1:7701
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
PROG=demo
# shellcheck source=deploy/lib/safe-dir.sh
. deploy/lib/safe-dir.sh
# Before anything reads receiver.pid or writes a key: a demo dir planted by someone else is refused.
ferry_own_dir "$demo_dir" adopt || exit 1

stop_receiver() {
  if [ -f "$demo_dir/receiver.pid" ] && kill -0 "$(cat "$demo_dir/receiver.pid")" 2>/dev/null; then
    kill "$(cat "$demo_dir/receiver.pid")"
    for _ in $(seq 50); do kill -0 "$(cat "$demo_dir/receiver.pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$demo_dir/receiver.pid"
}

if [ "${1:-}" = stop ]; then
  stop_receiver
  bash deploy/local-stack.sh down
  exit 0
fi

bash deploy/lib/ensure-node-deps.sh
export PATH="$root/node_modules/.bin:$PATH"
say "starting the local stack (build engine, target engine, nats-server -js, redis-server)"
bash deploy/local-stack.sh up >/dev/null
# Read as data, after checking that the state dir is ours alone: never sourced.
ferry_load_env "${FERRY_STACK_DIR:-/tmp/ferry-stack}/stack.env" || exit 1

say "building ferry-demo:1.0 FROM scratch on the build engine"
image_id=$(bash deploy/lib/test-image.sh "$FERRY_BUILD_DOCKER_HOST" ferry-demo:1.0 hello-from-ferry 2>/dev/null | tail -n 1)
DOCKER_HOST=$FERRY_BUILD_DOCKER_HOST docker history --format '  {{.Size}}\t{{.CreatedBy}}' ferry-demo:1.0 | cut -c1-100

say "starting a receiver for the target engine on $listen"
# The demo's signing key, and the receiver's trust file that lets it deploy anything anywhere.
if [ ! -f "$demo_dir/demo.key" ] || [ ! -f "$demo_dir/trust.json" ]; then
  rm -f "$demo_dir/demo.key" "$demo_dir/trust.json"
  public_key=$(node bin/ferry.js key new --id demo --out "$demo_dir/demo.key" | awk '$1 == "public" && $2 == "key" { print $3 }')
  node bin/ferry.js trust add --id demo --public-key "$public_key" --role deploy --file "$demo_dir/trust.json" >/dev/null
fi
# Written each run (a key.env from an older demo may name variables Ferry no longer reads) for the
# commands suggested at the end; this script sets the same values itself rather than sourcing it.
FERRY_KEY_ID=demo
FERRY_KEY_FILE=$demo_dir/demo.key
printf 'FERRY_KEY_ID=%s\nFERRY_KEY_FILE=%s\n' "$FERRY_KEY_ID" "$FERRY_KEY_FILE" > "$demo_dir/key.env"
stop_receiver
DOCKER_HOST=$FERRY_TARGET_DOCKER_HOST FERRY_LISTEN=$listen FERRY_DATA_DIR=$demo_dir/data FERRY_HOST_ID=demo-target \
  FERRY_TRUST_FILE=$demo_dir/trust.json FERRY_NATS_URL=$FERRY_NATS_URL \
  nohup node bin/ferry.js receiver > "$demo_dir/receiver.log" 2>&1 &
echo $! > "$demo_dir/receiver.pid"
for _ in $(seq 100); do
  curl -fsS "http://$listen/healthz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$demo_dir/receiver.pid")" 2>/dev/null || { cat "$demo_dir/receiver.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "http://$listen/healthz"; echo

say "ferry push ferry-demo:1.0 --to http://$listen --name demo-web"
DOCKER_HOST=$FERRY_BUILD_DOCKER_HOST FERRY_KEY_ID=$FERRY_KEY_ID FERRY_KEY_FILE=$FERRY_KEY_FILE FERRY_NATS_URL=$FERRY_NATS_URL \
  node bin/ferry.js push ferry-demo:1.0 --to "http://$listen" --name demo-web \
  --network host --env "PORT=$port" --health "http://127.0.0.1:$port/healthz"

say "the service answers on the target: curl http://127.0.0.1:$port/"
curl -fsS "http://127.0.0.1:$port/"
say "docker ps on the target engine"
DOCKER_HOST=$FERRY_TARGET_DOCKER_HOST docker ps --filter name=demo-web --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}'
deployment=$(DOCKER_HOST=$FERRY_TARGET_DOCKER_HOST docker inspect -f '{{index .Config.Labels "ferry.deployment-id"}}' demo-web)
test "$(DOCKER_HOST=$FERRY_TARGET_DOCKER_HOST docker inspect -f '{{.Image}}' demo-web)" = "$image_id"

say "the events of deployment $deployment, replayed from JetStream"
# As NATS's reader user: it may read the stream, and publish nothing.
FERRY_NATS_URL=$FERRY_NATS_READER_URL node bin/ferry.js events --deployment "$deployment"

cat >&2 <<MSG

The receiver keeps running (log: $demo_dir/receiver.log). Try:
  set -a; . $demo_dir/key.env; set +a; eval "\$(bash deploy/local-stack.sh env)"
  DOCKER_HOST=\$FERRY_BUILD_DOCKER_HOST npx ferry push ferry-demo:1.0 --to http://$listen --name demo-web --network host --env PORT=$port --health http://127.0.0.1:$port/healthz
  FERRY_NATS_URL=\$FERRY_NATS_READER_URL npx ferry events --service demo-web
Stop everything: bash deploy/demo.sh stop
MSG
