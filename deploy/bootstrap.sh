#!/usr/bin/env bash
# deploy/bootstrap.sh - install (or upgrade) a Ferry receiver on a host that has only Docker and
# sshd, over ssh, from this machine's receiver image: Ferry's release (npm run pack) installed in an
# image FROM scratch by deploy/image/build-receiver-image.sh.
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
#   --trust-file PATH        a trust file (ferry.trust/v1, as "ferry trust add" writes it): the
#                            keys that may call the receiver, their grants and revocation lists.
#                            Installed as /var/lib/ferry/trust.json in the receiver's volume (root's,
#                            0600), FERRY_TRUST_FILE
#   --trust-key ID=KEY[:ROLE]  a key to trust (repeatable): KEY is the public key, base64 of its 32
#                            bytes as "ferry key new" prints it, or a PEM public key file on this
#                            machine (openssl pkey -in KEY.pem -pubout); ROLE deploy (default),
#                            read, or admin (a key that signs grants and revocation lists). With
#                            --trust-file, added to it (replacing an entry with the same id).
#                            Without --trust-file and --trust-key the installed trust file is kept.
#   --tls-dir DIR            directory on the host with cert.pem and key.pem: HTTPS (mounted
#                            read-only at /etc/ferry/tls)
#   --registry URL           FERRY_REGISTRY_URL: the receiver registers and heartbeats itself
#   --join-token TOKEN       the one-time token an admin got from the registry for this host
#                            (POST /v1/join-tokens): the receiver enrolls its host key with it at
#                            its first registration (better in FERRY_BOOTSTRAP_JOIN_TOKEN: an
#                            argument shows in ps). FERRY_JOIN_TOKEN
#   --labels k=v,…           FERRY_LABELS for the registry
#   --env K=V                any other receiver setting (FERRY_NATS_URL=…, FERRY_ALLOW_CIDRS=…);
#                            repeatable
#   --remote-docker-host unix:///PATH   the host's engine (default unix:///var/run/docker.sock);
#                            its socket is what the receiver container gets
#   --remote-dir DIR         where the receiver's env file lives on the host (default ~/.ferry):
#                            a directory of the ssh user's, mode 0700 (made so when missing)
#   --container NAME         container name (default ferry-receiver)
#   --wait SECONDS           how long to wait for /healthz (default 90)
#
# What it does: checks over ssh (BatchMode) that the host has docker and zstd and that the user
# may use docker; copies the image (docker save | zstd | ssh 'zstd -d | docker load', skipped when
# the host has that image id already); installs the trust file into the receiver's volume (with a
# run of the receiver image, the JSON through stdin); writes the receiver's settings to
# DIR/receiver.env (0600, through stdin, staged in a fresh 0700 directory); replaces the container
# (restart unless-stopped, host network, the engine's socket, the named volume ferry-data for
# /var/lib/ferry); waits for /healthz from inside the container; checks the receiver's signed
# identity (GET /v1/identity) with openssl; prints the URL, host id, host key fingerprint (what
# senders pin with --host-key) and the Ferry version the identity names. No secret is printed: the
# receiver holds public keys only, and makes its own host key at its first start. Running it again
# upgrades in place: same volume, so the host key, trust file, journal, package store and uploads
# are kept; if the new container does not become healthy, the old one and its trust file are put
# back.
# Exit: 0 ok, 1 failed, 2 usage, 3 the host cannot be reached.
set -euo pipefail

PROG=bootstrap
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit "${2:-1}"; }
usage() { printf '%s: %s (see --help)\n' "$PROG" "$1" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/^  "version": "\([^"]*\)".*/\1/p' "$ROOT/package.json" | head -n 1)
TARGET='' SSH_OPTS=() IMAGE=ferry-receiver:${VERSION:-latest} HOST_ID='' LISTEN='' URL=''
TRUST_FILE='' TRUST_KEYS=() JOIN_TOKEN=${FERRY_BOOTSTRAP_JOIN_TOKEN:-} REGISTRY='' LABELS='' EXTRA_ENV=() TLS_DIR=''
REMOTE_DOCKER=unix:///var/run/docker.sock REMOTE_DIR='' CONTAINER=ferry-receiver WAIT=90
while [ "$#" -gt 0 ]; do
  case $1 in
    --key-id|--key|--keys)
      usage "$1 is gone: the receiver trusts public keys now; give them with --trust-key ID=PUBLIC-KEY[:ROLE] or --trust-file PATH" ;;
    -p|-i|-o|--image|--name|--listen|--url|--trust-file|--trust-key|--registry|--join-token|--labels|--env|--tls-dir|--remote-docker-host|--remote-dir|--container|--wait)
      [ "$#" -ge 2 ] || usage "$1 needs a value"
      case $1 in
        -p) SSH_OPTS+=(-p "$2") ;; -i) SSH_OPTS+=(-i "$2") ;; -o) SSH_OPTS+=(-o "$2") ;;
        --image) IMAGE=$2 ;; --name) HOST_ID=$2 ;; --listen) LISTEN=$2 ;; --url) URL=$2 ;;
        --trust-file) TRUST_FILE=$2 ;; --trust-key) TRUST_KEYS+=("$2") ;;
        --registry) REGISTRY=$2 ;; --join-token) JOIN_TOKEN=$2 ;; --labels) LABELS=$2 ;;
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
[ -z "$TLS_DIR" ] || [[ $TLS_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || usage "--tls-dir takes an absolute path on the host"
[ -z "$REMOTE_DIR" ] || [[ $REMOTE_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || usage "--remote-dir takes an absolute path on the host"
[ -z "$TRUST_FILE" ] || [ -r "$TRUST_FILE" ] || usage "--trust-file: cannot read $TRUST_FILE"
# (Length checked apart: a bound as large as {22,256} makes bash's regex slow to compile.)
if [ -n "$JOIN_TOKEN" ] && { [[ ! $JOIN_TOKEN =~ ^[A-Za-z0-9_-]+$ ]] || [ "${#JOIN_TOKEN}" -lt 22 ] || [ "${#JOIN_TOKEN}" -gt 256 ]; }; then
  usage "the join token is 22-256 characters of [A-Za-z0-9_-], as the registry printed it"
fi
MANAGED='FERRY_HOST_ID|FERRY_LISTEN|FERRY_DATA_DIR|DOCKER_HOST|FERRY_ADVERTISE_URL|FERRY_REGISTRY_URL|FERRY_LABELS|FERRY_TLS_CERT|FERRY_TLS_KEY|FERRY_TRUST_FILE|FERRY_JOIN_TOKEN'
# Settings of the shared-secret receivers: an old env file's are dropped, an --env with one refused.
GONE='FERRY_KEYS|FERRY_KEY_ID|FERRY_KEY|FERRY_KEY_FILE|FERRY_GRANT|FERRY_GRANT_FILE'
[ -z "$LISTEN" ] || [[ $LISTEN =~ ^(\[[0-9a-fA-F:.]+\]|[^:]+):[0-9]{1,5}$ ]] || usage "--listen takes host:port"
for kv in "${EXTRA_ENV[@]}"; do
  [[ $kv =~ ^[A-Z_][A-Z0-9_]*=[^$'\n']*$ ]] || usage "--env takes KEY=VALUE on one line (got '${kv%%=*}')"
  [[ ! ${kv%%=*} =~ ^($MANAGED)$ ]] || usage "${kv%%=*} is set by its own option, not --env"
  [[ ! ${kv%%=*} =~ ^($GONE)$ ]] || usage "${kv%%=*}: a receiver has no signing key of its own to give; trust keys with --trust-key or --trust-file"
done
for tool in docker zstd ssh openssl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required on this machine" 2
done

# The keys of --trust-key as trust file entries (JSON). A key given as a PEM file is read here
# with openssl: only its public half leaves this machine.
trust_entries=''
for spec in "${TRUST_KEYS[@]}"; do
  [[ $spec == *=* ]] || usage "--trust-key takes ID=PUBLIC-KEY[:ROLE] (got '$spec')"
  id=${spec%%=*} key=${spec#*=} role=deploy
  if [[ $key =~ ^(.*):(deploy|read|admin)$ ]]; then key=${BASH_REMATCH[1]} role=${BASH_REMATCH[2]}; fi
  [[ $id =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] && [ "${#id}" -le 128 ] || usage "--trust-key: the key id '$id' is not 1-128 characters of letters, digits, '.', '_' and '-'"
  if [[ ! $key =~ ^[A-Za-z0-9+/]{43}=$ ]]; then
    [ -r "$key" ] || usage "--trust-key $id: '$key' is neither a public key (base64 of 32 bytes) nor a readable PEM file"
    grep -q 'PRIVATE KEY' "$key" && usage "--trust-key $id: $key is a private key; give its public half (openssl pkey -in $key -pubout -out $id.pub)"
    [ "$(openssl pkey -pubin -in "$key" -noout -text_pub 2>/dev/null | head -n 1)" = 'ED25519 Public-Key:' ] \
      || usage "--trust-key $id: $key is not an Ed25519 public key in PEM"
    key=$(openssl pkey -pubin -in "$key" -outform DER | tail -c 32 | openssl base64 -A)
  fi
  trust_entries+="${trust_entries:+,}{\"id\":\"$id\",\"publicKey\":\"$key\",\"role\":\"$role\"}"
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
# shellcheck disable=SC2016 # expanded on the host, not here
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
[[ $REMOTE_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || die "$TARGET: the home directory $(fact home) is not a plain absolute path; choose --remote-dir"
ENV_FILE=$REMOTE_DIR/receiver.env
say "$TARGET: Docker $(fact engine), zstd present"

# The settings directory is read back as this receiver's settings, and the ssh user is often
# root: it must be one nobody else could have made or written to — a real directory of the ssh
# user's, mode 0700, under directories only root or that user can change (or sticky ones, as
# /tmp). Made so when missing; refused otherwise, before anything is changed.
rc=0
# shellcheck disable=SC2016 # expanded on the host, not here
dircheck=$(remote 'd='"$(q "$REMOTE_DIR")"'; me=$(id -u); umask 077
  p=${d%/*}
  while [ -n "$p" ]; do
    if [ -e "$p" ]; then
      set -- $(stat -L -c "%u %a" "$p") || exit 1
      [ "$1" = 0 ] || [ "$1" = "$me" ] || { echo "$p above it belongs to uid $1"; exit 20; }
      if [ $(( 0$2 & 022 )) != 0 ] && [ $(( 0$2 & 01000 )) = 0 ]; then echo "$p above it is writable by others (mode $2) and not sticky"; exit 20; fi
    fi
    p=${p%/*}
  done
  [ -e "$d" ] || [ -L "$d" ] || mkdir -p -- "$d" || { echo "cannot create $d"; exit 20; }
  [ ! -L "$d" ] || { echo "$d is a symbolic link"; exit 20; }
  [ -d "$d" ] || { echo "$d is not a directory"; exit 20; }
  set -- $(stat -c "%u %a" "$d")
  [ "$1" = "$me" ] || { echo "$d belongs to uid $1, not to uid $me who logs in"; exit 20; }
  if [ "$2" != 700 ]; then
    [ $(( 0$2 & 07022 )) = 0 ] || { echo "$d has mode $2: others may have written to it"; exit 20; }
    chmod 0700 "$d" || exit 1
  fi
  f=$d/receiver.env
  if [ -e "$f" ] || [ -L "$f" ]; then
    [ -f "$f" ] && [ ! -L "$f" ] && [ "$(stat -c %u "$f")" = "$me" ] || { echo "$f is not a regular file of uid $me"; exit 20; }
    echo "env-file=present"
  fi
' 2>&1) || rc=$?
case $rc in
  0) ;;
  20) die "$TARGET: refusing the settings directory: $(tail -n 1 <<< "$dircheck"); remove it or choose another --remote-dir" ;;
  *) die "$TARGET: checking $REMOTE_DIR failed (exit $rc): $(tail -n 3 <<< "$dircheck")" ;;
esac

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

if [ -n "$TLS_DIR" ]; then
  remote "[ -r $(q "$TLS_DIR/cert.pem") ] && [ -r $(q "$TLS_DIR/key.pem") ]" \
    || die "$TARGET: the TLS directory $TLS_DIR lacks a readable cert.pem or key.pem"
fi

# ------------------------------------------------------------------------------ trust file --
# The trust file lives in the receiver's volume, written by the receiver image itself (root, 0600,
# through a temporary file and a rename, checked by the image's own `ferry trust` as the receiver
# will read it): no file is staged on the host, and the host's user needs no root beyond docker.
# The previous file is kept as trust.json.previous until the new container is healthy.
TRUST_PATH=/var/lib/ferry/trust.json
# shellcheck disable=SC2016 # JavaScript, run by node in the image
TRUST_JS='
const fs = require("node:fs");
const { execFileSync } = require("node:child_process");
const [mode, file] = process.argv.slice(1);
const previous = `${file}.previous`;
const next = `${file}.next`;
// The ferry in the image: a release bundle (build-receiver-image.sh), or a checkout (receiver.Dockerfile).
const entry = ["/opt/ferry/dist/ferry.js", "/opt/ferry/bin/ferry.js"].find((f) => fs.existsSync(f));
const ferry = (...args) => execFileSync(process.execPath, [entry, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
// "trust list" refuses a file the receiver would refuse, naming what is wrong.
const show = (f) => JSON.parse(ferry("trust", "list", "--file", f, "--json")).keys.forEach((k) => console.log(`trusts=${k.keyId} ${k.role} ${k.fingerprint}${k.grant ? ` grant ${k.grant}` : ""}${k.notAfter ? ` until ${k.notAfter}` : ""}`));
try {
  if (mode === "install") {
    const input = JSON.parse(fs.readFileSync(0, "utf8"));
    fs.rmSync(next, { force: true });
    if (input.file) fs.writeFileSync(next, JSON.stringify(input.file), { mode: 0o600, flag: "wx" });
    for (const k of input.keys) ferry("trust", "add", "--file", next, "--id", k.id, "--public-key", k.publicKey, "--role", k.role);
    show(next);
    if (fs.existsSync(file)) fs.copyFileSync(file, previous);
    else fs.rmSync(previous, { force: true });
    fs.renameSync(next, file);
  } else if (mode === "restore") {
    if (fs.existsSync(previous)) fs.renameSync(previous, file);
  } else if (mode === "commit") {
    fs.rmSync(previous, { force: true });
  } else if (!fs.existsSync(file)) {
    console.log("trust=none");
  } else {
    show(file);
  }
} catch (err) {
  fs.rmSync(next, { force: true });
  console.error(String(err.stderr || err.message).trim());
  process.exit(1);
}
'
# trust_run MODE [STDIN]: runs TRUST_JS in the receiver image against the volume.
trust_run() {
  remote "docker run --rm -i --network none --user 0 --workdir /opt/ferry --entrypoint /usr/local/bin/node \
    -v ferry-data:/var/lib/ferry $(q "$IMAGE") -e $(q "$TRUST_JS") $1 $TRUST_PATH"
}
if [ -n "$TRUST_FILE" ] || [ -n "$trust_entries" ]; then
  say "installing the trust file on $TARGET"
  trust=$({ printf '{"file":'; if [ -n "$TRUST_FILE" ]; then cat "$TRUST_FILE"; else printf null; fi; printf ',"keys":[%s]}' "$trust_entries"; } \
    | trust_run install 2>&1) || die "$TARGET: the trust file was not installed: $(tail -n 3 <<< "$trust")"
  TRUST_CHANGED=1
else
  trust=$(trust_run check < /dev/null 2>&1) || die "$TARGET: the installed trust file does not load: $(tail -n 3 <<< "$trust"); give a new one with --trust-file or --trust-key"
  [[ $trust != *trust=none* ]] || die "$TARGET has no trust file yet: a receiver trusts nobody without one; give the keys that may deploy with --trust-key ID=PUBLIC-KEY[:ROLE] or --trust-file PATH" 2
  say "keeping the installed trust file"
  TRUST_CHANGED=''
fi

# ------------------------------------------------------------------------------ settings --
old=''
[[ $dircheck != *env-file=present* ]] || old=$(remote "cat $(q "$ENV_FILE")")
kept() { sed -n "s/^$1=//p" <<< "$old" | tail -n 1; }
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
[ -z "$JOIN_TOKEN" ] || [ -n "$REGISTRY" ] || usage "a join token goes with --registry URL"
case ${LISTEN%:*} in
  0.0.0.0|'[::]') LOCAL=$SCHEME://127.0.0.1:$PORT ;;
  *) LOCAL=$SCHEME://${LISTEN} ;;
esac

OLD_EXTRA=$(grep -E '^[A-Z_][A-Z0-9_]*=' <<< "$old" | grep -vE "^($MANAGED|$GONE)=" || true)
if grep -qE "^($GONE)=" <<< "$old"; then
  say "dropping the shared-secret settings of the installed receiver ($(grep -oE "^($GONE)=" <<< "$old" | tr -d = | paste -sd, -)): it trusts its trust file's keys now"
fi
{
  printf '# Ferry receiver settings, written by deploy/bootstrap.sh (docs/operations.md)\n'
  printf 'FERRY_HOST_ID=%s\nFERRY_LISTEN=%s\nFERRY_DATA_DIR=/var/lib/ferry\nFERRY_TRUST_FILE=%s\n' "$HOST_ID" "$LISTEN" "$TRUST_PATH"
  printf 'DOCKER_HOST=unix:///var/run/docker.sock\nFERRY_ADVERTISE_URL=%s\n' "$URL"
  [ -z "$REGISTRY" ] || printf 'FERRY_REGISTRY_URL=%s\n' "$REGISTRY"
  # Spent once the host key is enrolled (the receiver then never sends it again), so a token is
  # written only when given, not kept from an earlier run.
  [ -z "$JOIN_TOKEN" ] || printf 'FERRY_JOIN_TOKEN=%s\n' "$JOIN_TOKEN"
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
} | remote "umask 077; d=$(q "$REMOTE_DIR"); s=\$(mktemp -d \"\$d/.stage.XXXXXX\") && [ \"\$(stat -c %u \"\$s\")\" = \"\$(id -u)\" ] \
    && cat > \"\$s/receiver.env\" && mv -f \"\$s/receiver.env\" $(q "$ENV_FILE") && rmdir \"\$s\"" \
  || die "cannot write $ENV_FILE on $TARGET"

# -------------------------------------------------------------------------------- proxy --
# A receiver with FERRY_PROXY_HTTP (--env, or kept) runs the host's HAProxy (docs/proxy.md) from
# its own image: the binary must be in it (build-receiver-image.sh copies the build host's).
if grep -qE '^FERRY_PROXY_HTTP=.' <<< "$(printf '%s\n' "$OLD_EXTRA" "${EXTRA_ENV[@]}")"; then
  proxy=$(remote "docker run --rm --network none --entrypoint /usr/sbin/haproxy $(q "$IMAGE") -v 2>&1") \
    || die "$TARGET: $IMAGE has no HAProxy (build it where haproxy and openssl are installed): $(head -n 1 <<< "$proxy")"
  say "proxy on $TARGET: $(head -n 1 <<< "$proxy")"
fi

# ----------------------------------------------------------------------------- container --
# The old container is kept, stopped, as NAME.previous until the new one is healthy: the same
# volume cannot serve two receivers, and a failed upgrade puts the old one back.
C=$(q "$CONTAINER") P=$(q "$CONTAINER.previous")
say "starting $CONTAINER on $TARGET ($IMAGE, host id $HOST_ID, listening on $LISTEN)"
TLS_MOUNT=''
[ -z "$TLS_DIR" ] || TLS_MOUNT="-v $(q "$TLS_DIR"):/etc/ferry/tls:ro"
# put_back MESSAGE: the new container's last log lines, the old container and trust file back, exit 1.
put_back() {
  local logs
  logs=$(remote "docker logs --tail 20 $C 2>&1" || true)
  remote "docker rm -f $C >/dev/null 2>&1; if docker container inspect $P >/dev/null 2>&1; then docker rename $P $C; fi" || true
  [ -z "$TRUST_CHANGED" ] || trust_run restore < /dev/null >/dev/null 2>&1 || say "could not put the previous trust file back"
  remote "if docker container inspect $C >/dev/null 2>&1; then docker start $C >/dev/null; fi" || true
  printf '%s\n' "$logs" >&2
  die "$1; the previous container, if any, runs again"
}
# A container that could not be started puts the old one back on the host, in the same session.
NEW=$(remote "
  docker rm -f $P >/dev/null 2>&1 || true
  if docker container inspect $C >/dev/null 2>&1; then
    docker stop -t 30 $C >/dev/null && docker rename $C $P || exit 1
  fi
  docker run -d --name $C --restart unless-stopped --network host \
    -v $(q "$SOCKET"):/var/run/docker.sock -v ferry-data:/var/lib/ferry $TLS_MOUNT \
    --env-file $(q "$ENV_FILE") --label io.ferry.bootstrap=$(q "$VERSION") $(q "$IMAGE") || {
    docker rm -f $C >/dev/null 2>&1
    if docker container inspect $P >/dev/null 2>&1; then docker rename $P $C && docker start $C >/dev/null; fi
    exit 1
  }
" 2>&1) || {
  [ -z "$TRUST_CHANGED" ] || trust_run restore < /dev/null >/dev/null 2>&1 || say "could not put the previous trust file back"
  die "$TARGET: docker run failed: $(tail -n 3 <<< "$NEW"); the previous container, if any, runs again"
}
NEW=$(tail -n 1 <<< "$NEW")

# Asked from inside the container (both receiver images have /usr/local/bin/node), so the host
# needs no curl and the port need not be reachable from here. Over loopback the probe does not
# check the certificate: who the receiver is, the signed identity below proves.
JS='fetch(process.argv[1]).then(r=>r.text()).then(t=>{process.stdout.write(t);process.exit(0)},()=>process.exit(1))'
inside() { remote "docker exec -e NODE_TLS_REJECT_UNAUTHORIZED=0 $C /usr/local/bin/node -e $(q "$JS") $(q "$1")"; }
deadline=$((SECONDS + WAIT))
health=''
while :; do
  health=$(inside "$LOCAL/healthz" 2>/dev/null) && [ -n "$health" ] && break
  health=''
  running=$(remote "docker container inspect -f '{{.State.Running}}' $C" 2>/dev/null || true)
  if [ "$running" != true ] && [ $((SECONDS + 5)) -lt "$deadline" ]; then sleep 2; fi
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 1
done
if [ -z "$health" ] || [[ $health != *'"status":"ok"'* ]]; then
  put_back "the receiver on $TARGET did not answer $LOCAL/healthz within ${WAIT}s (its last log lines above)"
fi

# --------------------------------------------------------------------------- identity --
# The receiver's host key, from its signed identity (docs/protocol.md §3.7), checked here with
# openssl: the payload is signed by the key it names, over our challenge, for this host id.
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" <<< "$2" | head -n 1; }
unhex() { local h=$1 out='' i; for ((i = 0; i < ${#h}; i += 2)); do out+="\\x${h:i:2}"; done; printf '%b' "$out"; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bootstrap.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
challenge=$(openssl rand -base64 16 | tr '+/' '-_' | tr -d '=\n')
answer=$(inside "$LOCAL/v1/identity?challenge=$challenge" 2>/dev/null) || answer=''
payload=$(field payload "$answer") signature=$(field signature "$answer")
[ "$(field type "$answer")" = ferry.identity/v1 ] && [[ $payload =~ ^[A-Za-z0-9+/]+={0,2}$ ]] && [[ $signature =~ ^[0-9a-f]{128}$ ]] \
  || put_back "the receiver on $TARGET answers no signed identity at $LOCAL/v1/identity: is $IMAGE a receiver with host keys?"
identity=$(printf '%s' "$payload" | openssl base64 -d -A)
public=$(field publicKey "$identity")
[[ $public =~ ^[A-Za-z0-9+/]{43}=$ ]] || put_back "the receiver's identity names no Ed25519 key"
{ unhex 302a300506032b6570032100; printf '%s' "$public" | openssl base64 -d -A; } > "$WORK/host.der"
{ printf 'FERRY-SIGNED-V1\nferry.identity/v1\n'; printf '%s' "$payload" | openssl base64 -d -A; } > "$WORK/identity.msg"
unhex "$signature" > "$WORK/identity.sig"
openssl pkeyutl -verify -pubin -keyform DER -inkey "$WORK/host.der" -rawin -in "$WORK/identity.msg" -sigfile "$WORK/identity.sig" >/dev/null 2>&1 \
  && [ "$(field challenge "$identity")" = "$challenge" ] && [ "$(field host "$identity")" = "$HOST_ID" ] \
  || put_back "the receiver on $TARGET did not prove its identity (signature, challenge or host id wrong)"
HOST_KEY=SHA256:$(printf '%s' "$public" | openssl base64 -d -A | openssl dgst -sha256 -binary | openssl base64 -A | tr -d '=')
# The Ferry version it runs, as its signed identity names it (printed only if it looks like one).
RUNNING=$(field version "$identity")
[[ $RUNNING =~ ^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$ ]] || RUNNING=unknown

remote "docker rm -f $P >/dev/null 2>&1 || true"
[ -z "$TRUST_CHANGED" ] || trust_run commit < /dev/null >/dev/null 2>&1 || true

say "the receiver on $TARGET is up: $health"
printf 'url        %s\nhost id    %s\nhost key   %s\nversion    %s\ncontainer  %s (%s)\n' "$URL" "$HOST_ID" "$HOST_KEY" "$RUNNING" "$CONTAINER" "${NEW:0:12}"
sed -n 's/^trusts=/trusts     /p' <<< "$trust"
say "senders pin this receiver with --host-key $HOST_KEY (ferry push, deploy/ferry-push.sh)"
if [ -n "$REGISTRY" ]; then
  if [ -n "$JOIN_TOKEN" ]; then say "the receiver enrolls its host key with $REGISTRY at its first registration (labels: ${LABELS:-none})"
  else say "the receiver registers itself with $REGISTRY (labels: ${LABELS:-none}); a host key the registry has not enrolled needs --join-token"; fi
fi
