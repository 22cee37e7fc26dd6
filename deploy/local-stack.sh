#!/usr/bin/env bash
# deploy/local-stack.sh - the services Ferry runs against, on loopback.
#
# Usage: deploy/local-stack.sh up | down [--purge] | status | env | install PACKAGE[:COMMAND]...
#
#   up       install what is missing (Debian packages) and start what is not
#            running; idempotent: a second `up` restarts only what died, or
#            what runs with other settings (a NATS without authentication,
#            from an older stack, is restarted with it).
#            Writes $FERRY_STACK_DIR/stack.env (0600: it holds the NATS passwords).
#   down     stop every daemon this script started (SIGTERM, bounded wait,
#            then SIGKILL) and remove their pidfiles. Containers and images
#            stay in the engines' data dirs.
#            --purge: also unmount whatever is left mounted under the state
#            dir and delete it.
#   status   show what runs; exit 0 if everything is up, 3 otherwise.
#   env      print stack.env, passwords included: for
#            `eval "$(deploy/local-stack.sh env)"`. Scripts read the file as
#            data instead (ferry_load_env in deploy/lib/safe-dir.sh).
#   install  install the Debian packages named that are missing (one whose
#            COMMAND, a name or a path, is present counts as there): what the
#            tests and the bench need beyond the stack, e.g. openssh-server:/usr/sbin/sshd.
#
# What `up` starts (all local, nothing listens beyond 127.0.0.1):
#   build engine    dockerd, socket $FERRY_STACK_DIR/build.sock
#   target engine   dockerd, socket $FERRY_STACK_DIR/target.sock
#   nats            nats-server -js on 127.0.0.1:$FERRY_STACK_NATS_PORT, JetStream
#                   store under the state dir, monitoring port off, users and
#                   permissions from deploy/nats/ferry.conf; the passwords are made
#                   at the first `up` and kept in $FERRY_STACK_DIR/nats.secrets (0600)
#   redis           redis-server on 127.0.0.1:$FERRY_STACK_REDIS_PORT, no persistence
# and the stack.env it writes (PW: that user's password):
#   export FERRY_BUILD_DOCKER_HOST=unix:///tmp/ferry-stack/build.sock
#   export FERRY_TARGET_DOCKER_HOST=unix:///tmp/ferry-stack/target.sock
#   export FERRY_NATS_URL=nats://ferry-publisher:PW@127.0.0.1:14222
#   export FERRY_NATS_READER_URL=nats://ferry-reader:PW@127.0.0.1:14222
#   export FERRY_NATS_REGISTRY_URL=nats://ferry-registry:PW@127.0.0.1:14222
#   export FERRY_NATS_ADMIN_URL=nats://ferry-admin:PW@127.0.0.1:14222
#   export FERRY_REDIS_URL=redis://127.0.0.1:16379
# Every value is plain ([A-Za-z0-9._:/@%+=,-]), so the file reads the same as data and
# sourced.
#
# The state dir is created by this script with mode 0700; an existing one must be a
# real directory (not a link) of the user running it, that nobody else can write to
# (deploy/lib/safe-dir.sh); anything else is refused before it is used.
#
# The two dockerds run side by side, each with its own data-root, exec-root,
# pidfile, socket, config file (an empty one, so /etc/docker/daemon.json does
# not apply) and containerd namespace. Each dockerd (20.10, Debian docker.io)
# starts its own containerd with its socket under its exec-root, so they do
# not clash; the distinct --containerd-namespace values also keep them apart
# should a system containerd be running (dockerd would then share it). No
# iptables. The build engine has no bridge; the target engine has a Linux
# bridge of its own ($FERRY_STACK_BRIDGE_SUBNET.1/24), so containers of routed
# services run on the bridge network with their port published on 127.0.0.1
# (by docker-proxy, as there are no NAT rules); the others use --network host.
# An engine started before it had its bridge gets it at its next start.
# Storage driver overlay2, falling back to vfs when overlay2 does not start;
# the choice is remembered per engine in $FERRY_STACK_DIR/<engine>/driver.
#
# Using an existing Docker engine instead of starting two:
#   - if DOCKER_HOST is set (and FERRY_STACK_USE_EXISTING_DOCKER is not 0),
#     that engine is used as both the build and the target engine;
#   - else if FERRY_STACK_USE_EXISTING_DOCKER=1 and /var/run/docker.sock
#     answers, that engine is used for both;
#   otherwise the two dockerds are started. nats and redis are started in
#   every case. FERRY_STACK_USE_EXISTING_DOCKER=0 always starts the dockerds.
#
# Environment:
#   FERRY_STACK_DIR                 state dir (default /tmp/ferry-stack; keep it
#                                   short: unix socket paths must be < 108 chars)
#   FERRY_STACK_NATS_PORT           default 14222
#   FERRY_STACK_REDIS_PORT          default 16379
#   FERRY_STACK_USE_EXISTING_DOCKER see above
#   FERRY_STACK_BRIDGE_SUBNET       the target engine's bridge, first three octets
#                                   of a /24 (default 10.199.0)
#   FERRY_STACK_START_TIMEOUT       seconds to wait for a daemon to answer (default 60)
#   FERRY_STACK_STOP_TIMEOUT        seconds to wait for a daemon to exit before
#                                   SIGKILL (default 30)
#
# Logs: $FERRY_STACK_DIR/{build,target,nats,redis}.log. Needs root for the
# package installs and the dockerds. Progress goes to stderr, one short line
# per step; any failure exits non-zero with a message (and the daemon's log tail).
set -euo pipefail

PROG=local-stack
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/lib/safe-dir.sh
. "$HERE/lib/safe-dir.sh"
NATS_CONFIG=$HERE/nats/ferry.conf
NATS_SECRETS_FILE_NAME=nats.secrets
# The users of deploy/nats/ferry.conf and the stack.env variable each one's URL goes to.
NATS_USERS="publisher:FERRY_NATS_URL reader:FERRY_NATS_READER_URL registry:FERRY_NATS_REGISTRY_URL admin:FERRY_NATS_ADMIN_URL"

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: deploy/local-stack.sh up | down [--purge] | status | env | install PACKAGE[:COMMAND]...
EOF
  exit 2
}

# ---------------------------------------------------------------- settings --

S=${FERRY_STACK_DIR:-/tmp/ferry-stack}
case $S in /*) ;; *) S=$PWD/$S ;; esac
while [ "${#S}" -gt 1 ] && [ "${S%/}" != "$S" ]; do S=${S%/}; done
case $S in
  /|*[!A-Za-z0-9._/-]*) die "FERRY_STACK_DIR must be an absolute path of [A-Za-z0-9._/-], not / (got '$S')" ;;
esac

NATS_PORT=${FERRY_STACK_NATS_PORT:-14222}
REDIS_PORT=${FERRY_STACK_REDIS_PORT:-16379}
START_TIMEOUT=${FERRY_STACK_START_TIMEOUT:-60}
BRIDGE_SUBNET=${FERRY_STACK_BRIDGE_SUBNET:-10.199.0}
[[ $BRIDGE_SUBNET =~ ^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){2}$ ]] \
  || die "FERRY_STACK_BRIDGE_SUBNET must be three octets, e.g. 10.199.0 (got '$BRIDGE_SUBNET')"
# One bridge per state dir (a name of at most 15 characters), so two stacks never share one.
BRIDGE=fst$(printf '%s' "$S" | cksum | cut -d' ' -f1 | cut -c1-8)
STOP_TIMEOUT=${FERRY_STACK_STOP_TIMEOUT:-30}
for v in NATS_PORT REDIS_PORT START_TIMEOUT STOP_TIMEOUT; do
  case ${!v} in ''|*[!0-9]*) die "FERRY_STACK_$v must be a number (got '${!v}')" ;; esac
done
[ "$NATS_PORT" -ge 1 ] && [ "$NATS_PORT" -le 65535 ] || die "bad NATS port $NATS_PORT"
[ "$REDIS_PORT" -ge 1 ] && [ "$REDIS_PORT" -le 65535 ] || die "bad redis port $REDIS_PORT"
[ "$NATS_PORT" != "$REDIS_PORT" ] || die "NATS and redis ports are the same ($NATS_PORT)"

ENV_FILE=$S/stack.env
NATS_SECRETS=$S/$NATS_SECRETS_FILE_NAME
MARKER=$S/.ferry-stack
ENGINES="build target"

# The longest unix socket below the state dir is containerd's debug socket.
longest="$S/target/exec/containerd/containerd-debug.sock"
[ "${#longest}" -lt 108 ] \
  || die "FERRY_STACK_DIR is too long: unix socket paths under it would exceed 107 chars ($longest)"

unset DOCKER_CONTEXT

# ----------------------------------------------------------------- helpers --

need_root() {
  [ "$(id -u)" = 0 ] || die "$1 needs root (run as root or with sudo)"
}

# alive PID: the process exists and is not a zombie (a killed daemon whose
# parent has not reaped it yet still answers kill -0).
alive() {
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# pid_of PIDFILE COMM: print the pid if the process is alive and its comm matches.
pid_of() {
  local pidfile=$1 comm=$2 pid c
  [ -s "$pidfile" ] || return 1
  pid=$(tr -dc '0-9' < "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] || return 1
  alive "$pid" || return 1
  c=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  case $c in "$comm"*) printf '%s\n' "$pid" ;; *) return 1 ;; esac
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

port_owner() {
  if command -v ss >/dev/null 2>&1; then
    ss -Hltnp "sport = :$1" 2>/dev/null | head -n 3 || true
  fi
}

log_tail() {
  local log=$1
  if [ -s "$log" ]; then
    printf '%s: --- last lines of %s ---\n' "$PROG" "$log" >&2
    tail -n 25 "$log" >&2 || true
    printf '%s: ---\n' "$PROG" >&2
  fi
}

# launch LOG CMD...: start CMD detached (own session, stdin /dev/null, output
# appended to LOG); sets LAUNCHED_PID.
launch() {
  local log=$1; shift
  printf '\n==== %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >> "$log"
  # 9>&-: the daemon must not inherit (and so keep holding) the stack lock.
  setsid "$@" < /dev/null >> "$log" 2>&1 9>&- &
  LAUNCHED_PID=$!
}

# wait_ready PID TIMEOUT CHECK...: 0 once CHECK succeeds, 1 if PID died, 2 on timeout.
wait_ready() {
  local pid=$1 limit=$2 start; shift 2
  start=$SECONDS
  while :; do
    if "$@"; then return 0; fi
    alive "$pid" || { "$@" && return 0; return 1; }
    [ $((SECONDS - start)) -lt "$limit" ] || return 2
    sleep 0.3
  done
}

# stop_pid NAME PID: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL.
stop_pid() {
  local name=$1 pid=$2 start
  kill -TERM "$pid" 2>/dev/null || return 0
  start=$SECONDS
  while alive "$pid"; do
    if [ $((SECONDS - start)) -ge "$STOP_TIMEOUT" ]; then
      say "$name (pid $pid) still running after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      local k=0
      while alive "$pid" && [ $k -lt 50 ]; do sleep 0.1; k=$((k + 1)); done
      alive "$pid" && die "$name (pid $pid) does not die even on SIGKILL"
      break
    fi
    sleep 0.2
  done
  return 0
}

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
  local dir=$1
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
    | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- | uniq
}

unmount_under() {
  local dir=$1 m
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    umount -l "$m" 2>/dev/null && say "unmounted $m" || say "warning: could not unmount $m"
  done < <(mounts_under "$dir")
}

# ---------------------------------------------------------------- packages --

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# ensure_packages OWN_DOCKER [PACKAGE:COMMAND ...]: installs what is missing of the stack's
# packages, or of the ones named. OWN_DOCKER: 1 = dockerd and its daemons too, 0 = the docker CLI,
# - = no Docker at all. An empty COMMAND checks the package only.
ensure_packages() {
  local own_docker=$1 missing=() want
  shift
  local wants=("$@")
  [ "${#wants[@]}" -gt 0 ] || wants=(nats-server:nats-server redis-server:redis-server zstd:zstd b3sum:b3sum \
                                     busybox-static: curl:curl haproxy:haproxy wrk:wrk socat:socat iproute2:ip skopeo:skopeo)
  for want in "${wants[@]}"; do
    local pkg=${want%%:*} cmd=${want#*:}
    if pkg_installed "$pkg"; then continue; fi
    if [ -n "$cmd" ] && command -v "$cmd" >/dev/null 2>&1; then continue; fi
    missing+=("$pkg")
  done
  if [ "$own_docker" = 1 ]; then
    # dockerd plus its containerd and runc; docker.io brings all three.
    if ! { command -v dockerd >/dev/null 2>&1 && command -v containerd >/dev/null 2>&1 \
           && command -v runc >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; }; then
      pkg_installed docker.io || missing+=(docker.io)
    fi
  elif [ "$own_docker" = 0 ]; then
    command -v docker >/dev/null 2>&1 || pkg_installed docker.io || missing+=(docker.io)
  fi
  [ "${#missing[@]}" -gt 0 ] || return 0

  need_root "installing ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
  say "installing ${missing[*]}"
  # Keep the packages' maintainer scripts from starting system-wide services
  # (a redis on 6379, a nats...): we start our own.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && added_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  } > "$S/apt.log" 2>&1 || rc=$?
  [ "$added_policy" = 1 ] && rm -f "$policy"
  if [ "$rc" != 0 ]; then
    log_tail "$S/apt.log"
    die "apt-get failed (exit $rc) installing ${missing[*]}; full log in $S/apt.log"
  fi
  say "installed ${missing[*]}"
}

# ----------------------------------------------------------------- engines --

engine_sock() { printf '%s/%s.sock\n' "$S" "$1"; }

engine_answers() {
  timeout 10 docker -H "$1" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# existing_docker: print the host of an engine to use instead of our own, if any.
existing_docker() {
  local use=${FERRY_STACK_USE_EXISTING_DOCKER:-}
  [ "$use" = 0 ] && return 1
  if [ -n "${DOCKER_HOST:-}" ]; then
    printf '%s\n' "$DOCKER_HOST"
    return 0
  fi
  if [ "$use" = 1 ]; then
    if [ -S /var/run/docker.sock ] && command -v docker >/dev/null 2>&1 \
       && engine_answers unix:///var/run/docker.sock; then
      printf 'unix:///var/run/docker.sock\n'
      return 0
    fi
    say "FERRY_STACK_USE_EXISTING_DOCKER=1 but /var/run/docker.sock does not answer; starting our own engines"
  fi
  return 1
}

# bridge_mac: a locally administered unicast address for the bridge, from its name.
bridge_mac() {
  printf '%s' "$BRIDGE" | cksum | cut -d' ' -f1 | awk '{ printf "02:fe:%02x:%02x:%02x:%02x\n", int($1/16777216)%256, int($1/65536)%256, int($1/256)%256, $1%256 }'
}

fix_bridge_mac() {
  if [ "$(cat "/sys/class/net/$BRIDGE/addr_assign_type" 2>/dev/null)" != 3 ]; then
    ip link set dev "$BRIDGE" address "$(bridge_mac)" || die "ip link set $BRIDGE address failed"
  fi
}

# ensure_bridge: the target engine's Linux bridge, made when missing (idempotent).
ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "making bridge $BRIDGE ($BRIDGE_SUBNET.1/24) for the target engine"
    ip link add "$BRIDGE" type bridge || die "ip link add $BRIDGE type bridge failed"
  fi
  # A bridge whose address nobody set takes the lowest of its ports' addresses, so it changes as
  # containers come and go; containers keep the old one for the gateway in their ARP cache and their
  # answers are lost until it expires (tens of seconds). Docker sets its own bridges' address for
  # this reason; this bridge gets a fixed, locally administered one (addr_assign_type 3: set).
  fix_bridge_mac
  ip -4 addr show dev "$BRIDGE" | grep -q "inet $BRIDGE_SUBNET.1/24" \
    || ip addr add "$BRIDGE_SUBNET.1/24" dev "$BRIDGE" || die "ip addr add $BRIDGE_SUBNET.1/24 dev $BRIDGE failed"
  ip link set "$BRIDGE" up
}

remove_bridge() {
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "removing bridge $BRIDGE"
    ip link del "$BRIDGE" || true
  fi
}

launch_dockerd() {
  local name=$1 driver=$2 dir=$S/$1 bridge=none
  mkdir -p "$dir/data" "$dir/exec"
  [ -s "$dir/daemon.json" ] || printf '{}\n' > "$dir/daemon.json"
  if [ "$name" = target ]; then ensure_bridge; bridge=$BRIDGE; fi
  launch "$S/$name.log" dockerd \
    --config-file "$dir/daemon.json" \
    --storage-driver="$driver" \
    --iptables=false --ip-masq=false --bridge="$bridge" \
    --data-root "$dir/data" --exec-root "$dir/exec" \
    --host "unix://$(engine_sock "$name")" \
    --pidfile "$S/$name.pid" \
    --containerd-namespace "ferry-$name" \
    --containerd-plugins-namespace "ferry-$name-plugins"
}

start_engine() {
  local name=$1 dir=$S/$1 sock pid host driver rc
  sock=$(engine_sock "$name"); host=unix://$sock
  if pid=$(pid_of "$S/$name.pid" dockerd); then
    if engine_answers "$host"; then
      say "$name engine already running (pid $pid)"
      # Not restarted under whoever uses it: the bridge comes with its next start (down, then up).
      if [ "$name" = target ] && ! docker -H "$host" network inspect bridge >/dev/null 2>&1; then
        say "note: the target engine runs without its bridge network; it gets it at its next start"
      fi
      # A bridge made before its address was fixed gets it now (setting it disturbs nothing).
      if [ "$name" = target ] && ip link show "$BRIDGE" >/dev/null 2>&1; then fix_bridge_mac; fi
      return 0
    fi
    say "$name engine (pid $pid) does not answer; waiting"
    rc=0; wait_ready "$pid" "$START_TIMEOUT" engine_answers "$host" || rc=$?
    [ "$rc" = 0 ] && { say "$name engine answers (pid $pid)"; return 0; }
    say "$name engine (pid $pid) still does not answer; restarting it"
    stop_engine "$name"
  fi
  stop_engine_leftovers "$name"
  rm -f "$S/$name.pid"

  driver=$(cat "$dir/driver" 2>/dev/null || true)
  [ -n "$driver" ] || driver=overlay2
  while :; do
    say "starting $name engine (dockerd, $driver) on $host"
    launch_dockerd "$name" "$driver"
    pid=$LAUNCHED_PID
    rc=0; wait_ready "$pid" "$START_TIMEOUT" engine_answers "$host" || rc=$?
    if [ "$rc" = 0 ]; then
      printf '%s\n' "$driver" > "$dir/driver"
      say "$name engine up (pid $pid, $(docker -H "$host" version --format '{{.Server.Version}}' 2>/dev/null))"
      return 0
    fi
    if [ "$rc" = 2 ]; then
      say "$name engine did not answer within ${START_TIMEOUT}s; stopping it"
      stop_pid "$name engine" "$pid"
    fi
    stop_engine_leftovers "$name"
    if [ "$driver" = overlay2 ]; then
      say "$name engine failed with overlay2; retrying with vfs"
      log_tail "$S/$name.log"
      driver=vfs
      continue
    fi
    log_tail "$S/$name.log"
    die "$name engine (dockerd) failed to start; log: $S/$name.log"
  done
}

# Processes a dead dockerd may leave behind: its containerd and shims, the
# netns mount under its exec-root, a stale socket.
stop_engine_leftovers() {
  local name=$1 dir=$S/$1 pid addr p
  if pid=$(pid_of "$dir/exec/containerd/containerd.pid" containerd); then
    say "stopping leftover containerd of $name engine (pid $pid)"
    stop_pid "containerd ($name)" "$pid"
  fi
  addr="$dir/exec/containerd/containerd.sock"
  for p in /proc/[0-9]*; do
    case $(cat "$p/comm" 2>/dev/null || true) in containerd-shim*) ;; *) continue ;; esac
    if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "$addr"; then
      say "killing leftover shim ${p#/proc/} of $name engine"
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  # Container processes orphaned by a killed engine: their cgroup path names
  # the id of one of this engine's containers.
  local ids
  ids=$(ls "$dir/data/containers" 2>/dev/null | grep -E '^[0-9a-f]{64}$' || true)
  if [ -n "$ids" ]; then
    for p in /proc/[0-9]*; do
      if grep -qF "$ids" "$p/cgroup" 2>/dev/null; then
        say "killing leftover container process ${p#/proc/} of $name engine"
        kill -KILL "${p#/proc/}" 2>/dev/null || true
      fi
    done
  fi
  [ -d "$dir/exec" ] && unmount_under "$dir/exec"
  rm -f "$(engine_sock "$name")"
}

stop_engine() {
  local name=$1 pid
  if pid=$(pid_of "$S/$name.pid" dockerd); then
    say "stopping $name engine (pid $pid)"
    stop_pid "$name engine" "$pid"
  fi
  stop_engine_leftovers "$name"
  rm -f "$S/$name.pid"
}

# -------------------------------------------------------------------- nats --

# nats_password USER: the password of ferry-USER from nats.secrets (made by nats_secrets).
nats_password() {
  local var
  var=FERRY_NATS_${1^^}_PASSWORD
  printf '%s\n' "${NATS_PASSWORDS[$var]:?no NATS password for $1}"
}

# nats_secrets: loads the NATS passwords into NATS_PASSWORDS, making the missing ones on the way:
# 128 random bits in hex behind a "p". nats-server reads an environment variable that a config
# refers to as a config value, so a password must be a plain word (one starting with a digit may
# parse as a number); hex needs no escaping in a URL either.
declare -A NATS_PASSWORDS=()
nats_secrets() {
  local lines line user pair var changed=0
  NATS_PASSWORDS=()
  if [ -e "$NATS_SECRETS" ] || [ -L "$NATS_SECRETS" ]; then
    lines=$(ferry_env_lines "$NATS_SECRETS") || die "cannot use $NATS_SECRETS; delete it to make new NATS passwords"
    while IFS= read -r line; do
      if [ -n "$line" ]; then NATS_PASSWORDS[${line%%=*}]=${line#*=}; fi
    done <<< "$lines"
  fi
  for pair in $NATS_USERS; do
    user=${pair%%:*}
    var=FERRY_NATS_${user^^}_PASSWORD
    if ! [[ ${NATS_PASSWORDS[$var]:-} =~ ^p[0-9a-f]{32}$ ]]; then
      NATS_PASSWORDS[$var]=p$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
      changed=1
    fi
  done
  [ "$changed" = 1 ] || return 0
  rm -f "$NATS_SECRETS.tmp"
  (
    umask 077
    for var in "${!NATS_PASSWORDS[@]}"; do printf 'export %s=%s\n' "$var" "${NATS_PASSWORDS[$var]}"; done > "$NATS_SECRETS.tmp"
  )
  mv -f "$NATS_SECRETS.tmp" "$NATS_SECRETS"
  say "made NATS passwords in $NATS_SECRETS"
}

# nats_settings: what the running server must match: address, config and passwords (as a digest).
nats_settings() {
  printf '127.0.0.1:%s auth:%s\n' "$NATS_PORT" "$(cat "$NATS_CONFIG" "$NATS_SECRETS" | sha256sum | cut -c1-16)"
}

# nats_answers: JetStream is on, authentication is required, and the admin user gets in with its
# password (a server started with other passwords does not). The password goes through the
# environment, never on a command line.
nats_answers() {
  local reply
  # shellcheck disable=SC2016 # expanded by the inner bash
  reply=$(NATS_CHECK_USER=ferry-admin NATS_CHECK_PASS=$(nats_password admin) timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    IFS= read -r info <&3 || exit 1
    case $info in INFO*"\"jetstream\":true"*) ;; *) exit 1 ;; esac
    case $info in INFO*"\"auth_required\":true"*) ;; *) exit 1 ;; esac
    printf "CONNECT {\"verbose\":false,\"user\":\"%s\",\"pass\":\"%s\"}\r\nPING\r\n" "$NATS_CHECK_USER" "$NATS_CHECK_PASS" >&3
    IFS= read -r line <&3 && printf "%s\n" "$line"' "$NATS_PORT" 2>/dev/null) || return 1
  case $reply in PONG*) return 0 ;; *) return 1 ;; esac
}

# start_loopback NAME BIN PORT PORT_VARIABLE ANSWERS_FN SETTINGS COMMAND...: starts a server of
# ours on 127.0.0.1:PORT unless it already runs with SETTINGS and answers; its pidfile, settings
# marker and log live under $S/NAME.*. A port held by something not ours is an error naming it.
start_loopback() {
  local name=$1 bin=$2 port=$3 port_variable=$4 answers=$5 conf=$6
  shift 6
  local pid rc k
  if pid=$(pid_of "$S/$name.pid" "$bin"); then
    if [ "$(cat "$S/$name.conf" 2>/dev/null || true)" != "$conf" ]; then
      say "$name (pid $pid) runs with other settings; restarting it"
      stop_loopback "$name" "$bin"
    elif "$answers"; then
      say "$name already running (pid $pid, port $port)"
      return 0
    else
      say "$name (pid $pid) is not answering on port $port; restarting it"
      stop_loopback "$name" "$bin"
    fi
  fi
  rm -f "$S/$name.pid"
  if port_open "$port"; then
    die "port 127.0.0.1:$port is already in use by something that is not ours: $(port_owner "$port") (set $port_variable)"
  fi
  command -v "$bin" >/dev/null 2>&1 || die "$bin not found"
  mkdir -p "$S/$name"
  say "starting $name on 127.0.0.1:$port"
  launch "$S/$name.log" "$@"
  pid=$LAUNCHED_PID
  rc=0; wait_ready "$pid" "$START_TIMEOUT" "$answers" || rc=$?
  if [ "$rc" != 0 ]; then
    [ "$rc" = 2 ] && stop_pid "$name" "$pid"
    log_tail "$S/$name.log"
    die "$bin failed to start; log: $S/$name.log"
  fi
  # redis writes its pidfile a moment after it starts answering.
  k=0
  while ! pid_of "$S/$name.pid" "$bin" >/dev/null && [ $k -lt 50 ]; do sleep 0.1; k=$((k + 1)); done
  pid_of "$S/$name.pid" "$bin" >/dev/null || printf '%s\n' "$pid" > "$S/$name.pid"
  printf '%s\n' "$conf" > "$S/$name.conf"
  say "$name up (pid $pid)"
}

# stop_loopback NAME BIN: stops what start_loopback started, if it runs.
stop_loopback() {
  local name=$1 bin=$2 pid
  if pid=$(pid_of "$S/$name.pid" "$bin"); then
    say "stopping $name (pid $pid)"
    stop_pid "$name" "$pid"
  fi
  rm -f "$S/$name.pid"
}

start_nats() {
  local pair user var
  [ -r "$NATS_CONFIG" ] || die "missing $NATS_CONFIG"
  nats_secrets
  # ferry.conf reads the passwords from nats-server's environment (private to its user), so they
  # never appear on a command line or in the log.
  for pair in $NATS_USERS; do
    user=${pair%%:*}; var=FERRY_NATS_${user^^}_PASSWORD
    export "$var=${NATS_PASSWORDS[$var]}"
  done
  start_loopback nats nats-server "$NATS_PORT" FERRY_STACK_NATS_PORT nats_answers "$(nats_settings)" \
    nats-server -c "$NATS_CONFIG" -js -sd "$S/nats" -n ferry-stack -a 127.0.0.1 -p "$NATS_PORT" -P "$S/nats.pid"
  for pair in $NATS_USERS; do
    user=${pair%%:*}; unset "FERRY_NATS_${user^^}_PASSWORD"
  done
}

stop_nats() { stop_loopback nats nats-server; }

# ------------------------------------------------------------------- redis --

redis_answers() {
  local reply
  reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null) || return 1
  [ "$reply" = "+PONG" ]
}

start_redis() {
  start_loopback redis redis-server "$REDIS_PORT" FERRY_STACK_REDIS_PORT redis_answers "127.0.0.1:$REDIS_PORT" \
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
    --protected-mode yes --save '' --appendonly no --daemonize no \
    --pidfile "$S/redis.pid" --dir "$S/redis" --logfile ''
}

stop_redis() { stop_loopback redis redis-server; }

# ---------------------------------------------------------------- commands --

# own_state_dir: $S made by us, or one of ours that nobody else can write to; else refuse.
own_state_dir() {
  ferry_own_dir "$S" adopt || die "the state dir $S is not safe to use (see above)"
}

lock() {
  own_state_dir
  exec 9> "$S/.lock"
  if ! flock -n 9; then
    say "waiting for another local-stack.sh (lock $S/.lock)"
    flock -w 300 9 || die "another local-stack.sh still holds $S/.lock after 300s"
  fi
}

write_env() {
  local build=$1 target=$2 tmp=$ENV_FILE.tmp pair user var value
  local lines=("FERRY_BUILD_DOCKER_HOST=$build" "FERRY_TARGET_DOCKER_HOST=$target")
  for pair in $NATS_USERS; do
    user=${pair%%:*}; var=${pair#*:}
    lines+=("$var=nats://ferry-$user:$(nats_password "$user")@127.0.0.1:$NATS_PORT")
  done
  lines+=("FERRY_REDIS_URL=redis://127.0.0.1:$REDIS_PORT")
  # Readers take the file as data, so a value that would need quoting is refused here.
  for value in "${lines[@]}"; do
    [[ ${value#*=} =~ $FERRY_ENV_VALUE ]] || die "cannot write ${value%%=*} to $ENV_FILE: '${value#*=}' has characters outside [A-Za-z0-9._:/@%+=,-]"
  done
  # A new file each time (not one left by an older version, with its mode): 0600.
  rm -f "$tmp"
  (umask 077; printf 'export %s\n' "${lines[@]}" > "$tmp")
  mv -f "$tmp" "$ENV_FILE"
}

# preflight_ports: fail before starting anything if a port we need is taken
# by something other than our own daemon.
preflight_ports() {
  local svc port comm
  for svc in nats:$NATS_PORT:nats-server redis:$REDIS_PORT:redis-server; do
    IFS=: read -r svc port comm <<< "$svc"
    pid_of "$S/$svc.pid" "$comm" >/dev/null && continue
    if port_open "$port"; then
      die "port 127.0.0.1:$port ($svc) is already in use by something that is not ours: $(port_owner "$port") (set FERRY_STACK_$(tr a-z A-Z <<< "$svc")_PORT)"
    fi
  done
}

cmd_up() {
  lock
  : > "$MARKER"
  preflight_ports
  local existing="" build target
  existing=$(existing_docker) || existing=""
  if [ -n "$existing" ]; then
    ensure_packages 0
    say "using the existing Docker engine $existing for build and target"
    engine_answers "$existing" || die "the Docker engine at $existing does not answer (docker -H $existing version)"
    build=$existing; target=$existing
  else
    need_root "starting dockerd"
    ensure_packages 1
    local e
    for e in $ENGINES; do start_engine "$e"; done
    build=unix://$(engine_sock build); target=unix://$(engine_sock target)
  fi
  start_nats
  start_redis
  write_env "$build" "$target"
  say "stack is up; environment in $ENV_FILE (NATS passwords included; deploy/local-stack.sh env prints it)"
}

cmd_down() {
  local purge=0
  case ${1:-} in
    '') ;;
    --purge) purge=1 ;;
    *) usage ;;
  esac
  if [ ! -e "$S" ] && [ ! -L "$S" ]; then
    say "nothing to stop ($S does not exist)"
    return 0
  fi
  own_state_dir
  if [ "$purge" = 1 ] && [ ! -e "$MARKER" ]; then
    die "$S has no $MARKER; not deleting a dir this script did not create"
  fi
  lock
  stop_redis
  stop_nats
  local e
  for e in target build; do
    if [ -e "$S/$e.pid" ] || [ -d "$S/$e" ]; then stop_engine "$e"; fi
  done
  remove_bridge
  rm -f "$S/nats.conf" "$S/redis.conf"
  if [ "$purge" = 1 ]; then
    unmount_under "$S"
    if [ -n "$(mounts_under "$S")" ]; then
      die "still mounted under $S: $(mounts_under "$S" | tr '\n' ' ')"
    fi
    rm -rf -- "$S"
    say "stack stopped; $S deleted"
  else
    say "stack stopped"
  fi
}

cmd_status() {
  local all=0 pid host e existing="" line
  if [ -e "$S" ] || [ -L "$S" ]; then own_state_dir; fi
  if [ -s "$ENV_FILE" ]; then
    line=$(ferry_env_lines "$ENV_FILE") || die "cannot read $ENV_FILE"
    existing=$(sed -n 's/^FERRY_BUILD_DOCKER_HOST=//p' <<< "$line")
  fi
  for e in $ENGINES; do
    host=unix://$(engine_sock "$e")
    if pid=$(pid_of "$S/$e.pid" dockerd); then
      if engine_answers "$host"; then
        printf '%-7s running  pid %-7s %s (dockerd %s, %s, %s containers, %s images)\n' "$e" "$pid" "$host" \
          "$(docker -H "$host" version --format '{{.Server.Version}}' 2>/dev/null)" \
          "$(docker -H "$host" info --format '{{.Driver}}' 2>/dev/null)" \
          "$(docker -H "$host" info --format '{{.Containers}}' 2>/dev/null)" \
          "$(docker -H "$host" info --format '{{.Images}}' 2>/dev/null)"
      else
        printf '%-7s BROKEN   pid %-7s %s does not answer\n' "$e" "$pid" "$host"; all=3
      fi
    elif [ -n "$existing" ] && [ "$existing" != "unix://$(engine_sock build)" ]; then
      if engine_answers "$existing"; then
        printf '%-7s existing %s\n' "$e" "$existing"
      else
        printf '%-7s DOWN     existing engine %s does not answer\n' "$e" "$existing"; all=3
      fi
    else
      printf '%-7s stopped\n' "$e"; all=3
    fi
  done
  if pid=$(pid_of "$S/nats.pid" nats-server) && [ -s "$NATS_SECRETS" ] && nats_secrets && nats_answers; then
    printf '%-7s running  pid %-7s nats://127.0.0.1:%s (JetStream, authentication on, store %s/nats)\n' nats "$pid" "$NATS_PORT" "$S"
  elif pid=$(pid_of "$S/nats.pid" nats-server); then
    printf '%-7s BROKEN   pid %-7s does not answer with JetStream and our users (an older stack? run up)\n' nats "$pid"; all=3
  else
    printf '%-7s stopped\n' nats; all=3
  fi
  if pid=$(pid_of "$S/redis.pid" redis-server) && redis_answers; then
    printf '%-7s running  pid %-7s redis://127.0.0.1:%s\n' redis "$pid" "$REDIS_PORT"
  else
    printf '%-7s stopped\n' redis; all=3
  fi
  return "$all"
}

cmd_install() {
  local want
  for want in "$@"; do
    case $want in *[!A-Za-z0-9.+:/_-]*|:*) die "install takes PACKAGE[:COMMAND] arguments (got '$want')" ;; esac
  done
  own_state_dir
  ensure_packages - "$@"
}

cmd_env() {
  [ -e "$S" ] || die "no $S: run deploy/local-stack.sh up first"
  own_state_dir
  [ -s "$ENV_FILE" ] || die "no $ENV_FILE: run deploy/local-stack.sh up first"
  local lines
  lines=$(ferry_env_lines "$ENV_FILE") || die "cannot read $ENV_FILE"
  mapfile -t lines <<< "$lines"
  printf 'export %s\n' "${lines[@]}"
}

[ "$#" -ge 1 ] || usage
cmd=$1; shift
case $cmd in
  up)     [ "$#" = 0 ] || usage; cmd_up ;;
  down)   [ "$#" -le 1 ] || usage; cmd_down "$@" ;;
  status) [ "$#" = 0 ] || usage; cmd_status ;;
  env)    [ "$#" = 0 ] || usage; cmd_env ;;
  install) [ "$#" -ge 1 ] || usage; cmd_install "$@" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
