#!/usr/bin/env bash
# deploy/bootstrap.sh - install (or upgrade) a Ferry receiver on a host that has only Docker and
# sshd, over ssh, from this machine's receiver image.
#
# Usage: deploy/bootstrap.sh [user@]host [options]
#
#   -p PORT                  ssh port
#   -i IDENTITY              ssh private key
#   -o OPTION                extra ssh option (repeatable), e.g. -o StrictHostKeyChecking=accept-new
#   --image REF              receiver image on the local engine (DOCKER_HOST) (default
#                            ferry-receiver:<version>; deploy/image/build-receiver-image.sh builds it)
#   --name ID                the receiver's host id, FERRY_HOST_ID (default: kept, else the
#                            host's short hostname)
#   --listen ADDR            FERRY_LISTEN on the host (default: kept, else 0.0.0.0:7701)
#   --url URL                how senders reach it (default http://HOST:<listen port>), also
#                            FERRY_ADVERTISE_URL for the registry
#   --key-id ID --key SECRET the key senders sign with (prefer FERRY_BOOTSTRAP_KEY for the secret:
#                            an argument shows in ps). Without them the key already installed is
#                            kept, or a new one is generated and printed once.
#   --keys RING              the whole ring, FERRY_KEYS syntax (id:secret[:notAfter=DATE],…), for
#                            rotation; or FERRY_BOOTSTRAP_KEYS. The receiver signs towards the
#                            registry with the last key without notAfter.
#   --tls-dir DIR            directory on the host with cert.pem and key.pem: HTTPS (mounted
#                            read-only at /etc/ferry/tls)
#   --registry URL           FERRY_REGISTRY_URL: the receiver registers and heartbeats itself
#   --labels k=v,…           FERRY_LABELS for the registry
#   --env K=V                any other receiver setting (FERRY_NATS_URL=…, FERRY_ALLOW_CIDRS=…);
#                            repeatable
#   --remote-docker-host unix:///PATH   the host's engine (default unix:///var/run/docker.sock);
#                            its socket is what the receiver container gets
#   --remote-dir DIR         where the receiver's env file lives on the host (default ~/.ferry)
#   --container NAME         container name (default ferry-receiver)
#   --wait SECONDS           how long to wait for /healthz (default 90)
#
# What it does: checks over ssh (BatchMode) that the host has docker and zstd and that the user
# may use docker; copies the image (docker save | zstd | ssh 'zstd -d | docker load', skipped when
# the host has that image id already); writes the receiver's settings to DIR/receiver.env (0600,
# through stdin, so no secret is on a command line); replaces the container (restart
# unless-stopped, host network, the engine's socket, the named volume ferry-data for
# /var/lib/ferry); waits for /healthz from inside the container; prints the URL and key id (and a
# generated secret, once). Running it again upgrades in place: same volume, so the journal, the
# package store and uploads are kept; if the new container does not become healthy, the old one
# is started again. Exit: 0 ok, 1 failed, 2 usage, 3 the host cannot be reached.
set -euo pipefail

PROG=bootstrap
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit "${2:-1}"; }
usage() { printf '%s: %s (see --help)\n' "$PROG" "$1" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/^  "version": "\([^"]*\)".*/\1/p' "$ROOT/package.json" | head -n 1)
TARGET='' SSH_OPTS=() IMAGE=ferry-receiver:${VERSION:-latest} HOST_ID='' LISTEN='' URL=''
KEY_ID='' KEY=${FERRY_BOOTSTRAP_KEY:-} RING=${FERRY_BOOTSTRAP_KEYS:-} REGISTRY='' LABELS='' EXTRA_ENV=() TLS_DIR=''
REMOTE_DOCKER=unix:///var/run/docker.sock REMOTE_DIR='' CONTAINER=ferry-receiver WAIT=90
while [ "$#" -gt 0 ]; do
  case $1 in
    -p|-i|-o|--image|--name|--listen|--url|--key-id|--key|--keys|--registry|--labels|--env|--tls-dir|--remote-docker-host|--remote-dir|--container|--wait)
      [ "$#" -ge 2 ] || usage "$1 needs a value"
      case $1 in
        -p) SSH_OPTS+=(-p "$2") ;; -i) SSH_OPTS+=(-i "$2") ;; -o) SSH_OPTS+=(-o "$2") ;;
        --image) IMAGE=$2 ;; --name) HOST_ID=$2 ;; --listen) LISTEN=$2 ;; --url) URL=$2 ;;
        --key-id) KEY_ID=$2 ;; --key) KEY=$2 ;; --keys) RING=$2 ;; --registry) REGISTRY=$2 ;; --labels) LABELS=$2 ;;
        --tls-dir) TLS_DIR=$2 ;;
        --env) EXTRA_ENV+=("$2") ;; --remote-docker-host) REMOTE_DOCKER=$2 ;; --remote-dir) REMOTE_DIR=$2 ;;
        --container) CONTAINER=$2 ;; --wait) WAIT=$2 ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) usage "unknown option $1" ;;
    *) [ -z "$TARGET" ] || usage "one host only (got '$TARGET' and '$1')"; TARGET=$1; shift ;;
  esac
done
[ -n "$TARGET" ] || usage "[user@]host is required"
[[ $REMOTE_DOCKER =~ ^unix:///[A-Za-z0-9._/-]+$ ]] || usage "--remote-docker-host must be unix:///path/to/docker.sock"
SOCKET=${REMOTE_DOCKER#unix://}
[[ $CONTAINER =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ ]] || usage "--container: letters, digits, _ . -"
[[ $WAIT =~ ^[1-9][0-9]*$ ]] || usage "--wait takes a number of seconds"
[ -z "$HOST_ID" ] || [[ $HOST_ID =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$ ]] || usage "--name: letters, digits, - and _, at most 63"
[ -z "$KEY_ID" ] || [[ $KEY_ID =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || usage "--key-id: letters, digits, . _ -, at most 64"
[ -z "$KEY_ID" ] || [ "${#KEY}" -ge 16 ] || usage "--key-id needs --key SECRET (or FERRY_BOOTSTRAP_KEY) of at least 16 characters"
[ -n "$KEY_ID" ] || [ -z "$KEY" ] || usage "--key needs --key-id"
[[ $KEY =~ ^[^,:[:space:]]*$ ]] || usage "the secret may not hold ',', ':' or spaces (FERRY_KEYS separators)"
[ -z "$RING" ] || [ -z "$KEY_ID" ] || usage "--keys and --key-id exclude each other"
[ -z "$RING" ] || [[ $RING =~ ^[A-Za-z0-9][A-Za-z0-9._-]*:[^,[:space:]]{16,}(,[A-Za-z0-9][A-Za-z0-9._-]*:[^,[:space:]]{16,})*$ ]] \
  || usage "--keys takes keyid:secret[:notAfter=DATE][,…] (secrets of at least 16 characters)"
[ -z "$TLS_DIR" ] || [[ $TLS_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || usage "--tls-dir takes an absolute path on the host"
MANAGED='FERRY_KEYS|FERRY_HOST_ID|FERRY_LISTEN|FERRY_DATA_DIR|DOCKER_HOST|FERRY_ADVERTISE_URL|FERRY_REGISTRY_URL|FERRY_KEY_ID|FERRY_KEY|FERRY_LABELS|FERRY_TLS_CERT|FERRY_TLS_KEY'
[ -z "$LISTEN" ] || [[ $LISTEN =~ ^(\[[0-9a-fA-F:.]+\]|[^:]+):[0-9]{1,5}$ ]] || usage "--listen takes host:port"
for kv in "${EXTRA_ENV[@]}"; do
  [[ $kv =~ ^[A-Z_][A-Z0-9_]*=[^$'\n']*$ ]] || usage "--env takes KEY=VALUE on one line (got '${kv%%=*}')"
  [[ ! ${kv%%=*} =~ ^($MANAGED)$ ]] || usage "${kv%%=*} is set by its own option, not --env"
done
for tool in docker zstd ssh openssl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required on this machine" 2
done

SSH=(ssh -o BatchMode=yes -o ConnectTimeout=15 -o ServerAliveInterval=15 "${SSH_OPTS[@]}" "$TARGET")
# remote COMMAND: runs COMMAND with the host's engine as DOCKER_HOST (stdin passes through).
remote() { "${SSH[@]}" "DOCKER_HOST=$(printf '%q' "$REMOTE_DOCKER"); export DOCKER_HOST; $1"; }
q() { printf '%q' "$1"; }

# ------------------------------------------------------------------------------- preflight --
LOCAL_ID=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null) \
  || die "the receiver image $IMAGE is not on the local engine${DOCKER_HOST:+ ($DOCKER_HOST)}: build it with deploy/image/build-receiver-image.sh"

say "checking $TARGET"
rc=0
facts=$(remote '
  command -v docker >/dev/null 2>&1 || { echo "docker is not installed (or not on the PATH of a non-interactive ssh session)"; exit 10; }
  command -v zstd >/dev/null 2>&1 || { echo "zstd is not installed (or not on the PATH of a non-interactive ssh session): install it, e.g. apt-get install zstd"; exit 10; }
  out=$(docker version --format "{{.Server.Version}}" 2>&1) || {
    case $out in
      *"permission denied"*) echo "user $(id -un) may not use docker at $DOCKER_HOST: add it to the docker group (usermod -aG docker $(id -un)) or bootstrap as root"; exit 11 ;;
      *) echo "the Docker engine at $DOCKER_HOST does not answer: $out"; exit 12 ;;
    esac
  }
  echo "engine=$out"
  echo "hostname=$(hostname 2>/dev/null || uname -n)"
  echo "home=$HOME"
  echo "image=$(docker image inspect -f "{{.Id}}" '"$(q "$IMAGE")"' 2>/dev/null)"
' 2>&1) || rc=$?
case $rc in
  0) ;;
  10|11|12) die "$TARGET: $(tail -n 1 <<< "$facts")" ;;
  255) die "cannot reach $TARGET over ssh (BatchMode: a key must let you in without a prompt): $(tail -n 1 <<< "$facts")" 3 ;;
  *) die "$TARGET: the checks failed (exit $rc): $(tail -n 3 <<< "$facts")" ;;
esac
fact() { sed -n "s/^$1=//p" <<< "$facts" | tail -n 1; }
REMOTE_DIR=${REMOTE_DIR:-$(fact home)/.ferry}
ENV_FILE=$REMOTE_DIR/receiver.env
say "$TARGET: Docker $(fact engine), zstd present"

# -------------------------------------------------------------------------------- the image --
if [ "$(fact image)" = "$LOCAL_ID" ]; then
  say "$TARGET already has $IMAGE ($LOCAL_ID)"
else
  say "copying $IMAGE ($LOCAL_ID) to $TARGET"
  docker save "$IMAGE" | zstd -q -T0 -3 | remote 'zstd -q -d | docker load -q >/dev/null' \
    || die "copying $IMAGE to $TARGET failed (docker save | zstd | ssh docker load)"
  [ "$(remote "docker image inspect -f '{{.Id}}' $(q "$IMAGE")")" = "$LOCAL_ID" ] \
    || die "$TARGET does not hold $IMAGE as $LOCAL_ID after the load"
fi

# ------------------------------------------------------------------------------ settings --
old=$(remote "cat $(q "$ENV_FILE") 2>/dev/null || true")
kept() { sed -n "s/^$1=//p" <<< "$old" | tail -n 1; }
GENERATED=''
if [ -n "$RING" ]; then
  KEYS=$RING
elif [ -n "$KEY_ID" ]; then
  KEYS=$KEY_ID:$KEY
elif [ -n "$(kept FERRY_KEYS)" ]; then
  KEYS=$(kept FERRY_KEYS)
  say "keeping the installed key ring"
else
  KEY_ID=ferry-$(date -u +%Y%m%d)
  KEY=$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')
  KEYS=$KEY_ID:$KEY
  GENERATED=1
fi
# The key this receiver signs with (towards the registry) and the one printed for senders: the
# ring's last key without an expiry, else its last key.
IFS=, read -r -a entries <<< "$KEYS"
signing=${entries[-1]}
for entry in "${entries[@]}"; do [[ $entry == *:notAfter=* ]] || signing=$entry; done
KEY_ID=${signing%%:*}
SIGN_SECRET=${signing#*:}
SIGN_SECRET=${SIGN_SECRET%%:notAfter=*}
TLS_DIR=${TLS_DIR:-$(sed -n 's/^# tls-dir=//p' <<< "$old" | tail -n 1)}
SCHEME=http${TLS_DIR:+s}
HOST_ID=${HOST_ID:-$(kept FERRY_HOST_ID)}
HOST_ID=${HOST_ID:-$(fact hostname | cut -d. -f1 | tr -c 'A-Za-z0-9_\n-' '-')}
LISTEN=${LISTEN:-$(kept FERRY_LISTEN)}
LISTEN=${LISTEN:-0.0.0.0:7701}
PORT=${LISTEN##*:}
HOST_PART=${TARGET#*@}
KEPT_URL=$(kept FERRY_ADVERTISE_URL)
# A kept URL follows a switch to or from TLS.
[ -z "$KEPT_URL" ] || KEPT_URL=$SCHEME://${KEPT_URL#*://}
URL=${URL:-$KEPT_URL}
URL=${URL:-$SCHEME://$HOST_PART:$PORT}
REGISTRY=${REGISTRY:-$(kept FERRY_REGISTRY_URL)}
LABELS=${LABELS:-$(kept FERRY_LABELS)}
case ${LISTEN%:*} in
  0.0.0.0|'[::]') PROBE=$SCHEME://127.0.0.1:$PORT/healthz ;;
  *) PROBE=$SCHEME://${LISTEN}/healthz ;;
esac

OLD_EXTRA=$(grep -E '^[A-Z_][A-Z0-9_]*=' <<< "$old" | grep -vE "^($MANAGED)=" || true)
{
  printf '# Ferry receiver settings, written by deploy/bootstrap.sh (docs/operations.md)\n'
  printf 'FERRY_KEYS=%s\nFERRY_HOST_ID=%s\nFERRY_LISTEN=%s\nFERRY_DATA_DIR=/var/lib/ferry\n' "$KEYS" "$HOST_ID" "$LISTEN"
  printf 'DOCKER_HOST=unix:///var/run/docker.sock\nFERRY_ADVERTISE_URL=%s\n' "$URL"
  if [ -n "$REGISTRY" ]; then
    # The receiver signs its registration with its own key; the registry's FERRY_KEYS must hold it.
    printf 'FERRY_REGISTRY_URL=%s\nFERRY_KEY_ID=%s\nFERRY_KEY=%s\n' "$REGISTRY" "$KEY_ID" "$SIGN_SECRET"
  fi
  if [ -n "$TLS_DIR" ]; then
    printf '# tls-dir=%s\nFERRY_TLS_CERT=/etc/ferry/tls/cert.pem\nFERRY_TLS_KEY=/etc/ferry/tls/key.pem\n' "$TLS_DIR"
  fi
  [ -z "$LABELS" ] || printf 'FERRY_LABELS=%s\n' "$LABELS"
  # Earlier --env settings stay unless given again.
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    for kv in "${EXTRA_ENV[@]}"; do [ "${kv%%=*}" != "${line%%=*}" ] || continue 2; done
    printf '%s\n' "$line"
  done <<< "$OLD_EXTRA"
  for kv in "${EXTRA_ENV[@]}"; do printf '%s\n' "$kv"; done
} | remote "umask 077 && mkdir -p $(q "$REMOTE_DIR") && cat > $(q "$ENV_FILE.tmp") && mv -f $(q "$ENV_FILE.tmp") $(q "$ENV_FILE")" \
  || die "cannot write $ENV_FILE on $TARGET"

# ----------------------------------------------------------------------------- container --
# The old container is kept, stopped, as NAME.previous until the new one is healthy: the same
# volume cannot serve two receivers, and a failed upgrade puts the old one back.
C=$(q "$CONTAINER") P=$(q "$CONTAINER.previous")
say "starting $CONTAINER on $TARGET ($IMAGE, host id $HOST_ID, listening on $LISTEN)"
TLS_MOUNT=''
[ -z "$TLS_DIR" ] || TLS_MOUNT="-v $(q "$TLS_DIR"):/etc/ferry/tls:ro"
NEW=$(remote "
  if [ -n $(q "$TLS_DIR") ] && ! { [ -r $(q "$TLS_DIR/cert.pem") ] && [ -r $(q "$TLS_DIR/key.pem") ]; }; then
    echo 'the TLS directory $(q "$TLS_DIR") lacks cert.pem or key.pem'; exit 1
  fi
  docker rm -f $P >/dev/null 2>&1 || true
  if docker container inspect $C >/dev/null 2>&1; then
    docker stop -t 30 $C >/dev/null && docker rename $C $P
  fi
  docker run -d --name $C --restart unless-stopped --network host \
    -v $(q "$SOCKET"):/var/run/docker.sock -v ferry-data:/var/lib/ferry $TLS_MOUNT \
    --env-file $(q "$ENV_FILE") --label io.ferry.bootstrap=$(q "$VERSION") $(q "$IMAGE")
" 2>&1) || die "$TARGET: docker run failed: $(tail -n 3 <<< "$NEW")"
NEW=$(tail -n 1 <<< "$NEW")

# /healthz from inside the container (both receiver images have /usr/local/bin/node), so the
# host needs no curl and the port need not be reachable from here. Over loopback the probe does
# not check the certificate: it asks whether the process answers, not who it is.
JS='fetch(process.argv[1]).then(r=>r.text()).then(t=>{process.stdout.write(t);process.exit(0)},()=>process.exit(1))'
deadline=$((SECONDS + WAIT))
health=''
while :; do
  health=$(remote "docker exec -e NODE_TLS_REJECT_UNAUTHORIZED=0 $C /usr/local/bin/node -e $(q "$JS") $(q "$PROBE")" 2>/dev/null) && [ -n "$health" ] && break
  health=''
  running=$(remote "docker container inspect -f '{{.State.Running}}' $C" 2>/dev/null || true)
  if [ "$running" != true ] && [ $((SECONDS + 5)) -lt "$deadline" ]; then sleep 2; fi
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 1
done
if [ -z "$health" ] || [[ $health != *'"status":"ok"'* ]]; then
  logs=$(remote "docker logs --tail 20 $C 2>&1" || true)
  remote "docker rm -f $C >/dev/null 2>&1; if docker container inspect $P >/dev/null 2>&1; then docker rename $P $C && docker start $C >/dev/null; fi" || true
  printf '%s\n' "$logs" >&2
  die "the receiver on $TARGET did not answer $PROBE within ${WAIT}s (its last log lines above); the previous container, if any, runs again"
fi
remote "docker rm -f $P >/dev/null 2>&1 || true"

say "the receiver on $TARGET is up: $health"
printf 'url        %s\nhost id    %s\ncontainer  %s (%s)\nkey id     %s\n' "$URL" "$HOST_ID" "$CONTAINER" "${NEW:0:12}" "$KEY_ID"
if [ -n "$GENERATED" ]; then
  printf 'secret     %s\n' "$KEY"
  say "a new key was generated: the secret above is shown this once; store it now (senders use FERRY_KEY_ID=$KEY_ID and FERRY_KEY=<secret>)"
fi
[ -z "$REGISTRY" ] || say "the receiver registers itself with $REGISTRY (labels: ${LABELS:-none})"
