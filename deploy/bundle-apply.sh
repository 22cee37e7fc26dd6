#!/usr/bin/env bash
# Applies a Ferry bundle on a host where Ferry is not installed: GNU tar, zstd, sha256sum,
# openssl (1.1.1 or later, for Ed25519), docker, grep and coreutils; curl for http health checks.
#
#   bundle-apply.sh --key vendor.pub.pem [--work DIR] app.ferry
#
# The bundle must be signed by the key in vendor.pub.pem (a PEM public key: see docs/bundles.md).
# Everything is checked before anything is loaded: the archive's listing (only regular files with
# the layout's names), the Ed25519 signature of ferry/release.json, index.json's digest, every
# blob's SHA-256, each layer's decompressed SHA-256 against its signed diff id. Then each image is
# loaded as a docker-archive and proven by its id, and each service's container is started phase
# after phase, health-checked, and on failure removed with the previous container started again.
#
# Nothing from the bundle is sourced or executed, and no name from it reaches a path unless it
# matched its pattern. JSON: ferry/release.json is read only after its signature verified, by a
# small tokenizer (grep -o) that knows the fixed fields Ferry writes; no jq.
#
# Exit 0: every service running and healthy. 1: refused or failed (the message says which).
# 2: wrong usage or a tool missing.
set -euo pipefail
umask 077
export LC_ALL=C

die() { printf 'bundle-apply: %s\n' "$*" >&2; exit 1; }
usage() { printf 'usage: bundle-apply.sh --key PUBLIC_KEY.pem [--work DIR] BUNDLE\n' >&2; exit 2; }
say() { printf '%s\n' "$*"; }

key=''
work_parent="${TMPDIR:-/var/tmp}"
bundle=''
while [ $# -gt 0 ]; do
  case "$1" in
    --key) [ $# -ge 2 ] || usage; key="$2"; shift 2 ;;
    --work) [ $# -ge 2 ] || usage; work_parent="$2"; shift 2 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) [ -z "$bundle" ] || usage; bundle="$1"; shift ;;
  esac
done
[ -n "$key" ] && [ -n "$bundle" ] || usage
for tool in tar zstd sha256sum openssl docker grep sed sort uniq mktemp head wc cut tr rm mkdir cat timeout sleep; do
  command -v "$tool" >/dev/null 2>&1 || { printf 'bundle-apply: needs %s on PATH\n' "$tool" >&2; exit 2; }
done
[ -f "$bundle" ] || die "$bundle: no such file"
[ -f "$key" ] || die "$key: no such key file"

# Our own directory, 0700, made by mktemp: never a directory the bundle or anyone else chose.
work="$(mktemp -d "$work_parent/ferry-bundle-apply.XXXXXXXX")"
trap 'rm -rf -- "$work"' EXIT
chmod 700 "$work"

# --- 1. The listing: only the layout's regular files, each once, before a byte is extracted. ---
# GNU tar's verbose listing: type and mode, owner/group, size, date, time, name. A link adds
# " -> target" or " link to target"; a device, FIFO or directory has another type letter; names
# are printed escaped. Every line must match this whole pattern, so any of these is refused.
name_re='(oci-layout|index\.json|ferry/release\.json|ferry/signature|blobs/sha256/[0-9a-f]{64})'
head_re='[-rwxsStT]{9} [^ ]+ +[0-9]+ [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}'
line_re="^(-${head_re} ${name_re}|d${head_re} (blobs/|blobs/sha256/|ferry/))\$"
tar --quoting-style=escape -tvf "$bundle" > "$work/listing" 2>"$work/tar.err" || die "not a tar archive: $(head -c 300 "$work/tar.err")"
entries="$(wc -l < "$work/listing")"
[ "$entries" -ge 5 ] && [ "$entries" -le 100000 ] || die "FERRY_ERR_BUNDLE_MALFORMED: $entries entries"
if bad="$(grep -Evm1 "$line_re" "$work/listing")"; then
  die "FERRY_ERR_UNSAFE_ARCHIVE: an entry outside the bundle's layout (absolute path, '..', link, device, FIFO or unknown name): $bad"
fi
sed -E 's/^([^ ]+ +){5}//' "$work/listing" | grep -v '/$' > "$work/names"
if dup="$(sort "$work/names" | uniq -d | head -n1)" && [ -n "$dup" ]; then die "FERRY_ERR_UNSAFE_ARCHIVE: $dup is in the archive twice"; fi
for required in oci-layout index.json ferry/release.json ferry/signature; do
  grep -qxF "$required" "$work/names" || die "FERRY_ERR_BUNDLE_MALFORMED: no $required"
done

mkdir -m 700 "$work/b"
tar -xf "$bundle" -C "$work/b" --no-same-owner --no-same-permissions --no-overwrite-dir
# The file may have changed since it was listed: what is on disk is checked again.
if odd="$(cd "$work/b" && find . -mindepth 1 ! -type f ! -type d -print -quit)" && [ -n "$odd" ]; then die "FERRY_ERR_UNSAFE_ARCHIVE: $odd is not a regular file"; fi
if odd="$(cd "$work/b" && find . -type f | sed 's|^\./||' | grep -Evxm1 "$name_re")"; then die "FERRY_ERR_UNSAFE_ARCHIVE: $odd"; fi
b="$work/b"

# --- 2. The signature over release.json's exact bytes, with the key given (not the bundle's). ---
sig_json="$(head -c 4096 "$b/ferry/signature")"
case "$sig_json" in
  *'"scheme":"FERRY-SIGNED-V1"'*'"type":"ferry.bundle/v1"'*) ;;
  *) die 'FERRY_ERR_BUNDLE_SIGNATURE: ferry/signature is not a FERRY-SIGNED-V1 ferry.bundle/v1 signature' ;;
esac
sig_b64="$(printf '%s' "$sig_json" | sed -n 's/.*"signature":"\([A-Za-z0-9+/=]*\)".*/\1/p')"
[ -n "$sig_b64" ] || die 'FERRY_ERR_BUNDLE_SIGNATURE: no signature in ferry/signature'
printf '%s' "$sig_b64" | openssl base64 -d -A > "$work/signature.bin"
{ printf 'FERRY-SIGNED-V1\nferry.bundle/v1\n'; cat "$b/ferry/release.json"; } > "$work/message"
openssl pkeyutl -verify -pubin -inkey "$key" -rawin -in "$work/message" -sigfile "$work/signature.bin" >/dev/null 2>&1 \
  || die "FERRY_ERR_BUNDLE_SIGNATURE: the bundle is not signed by the key in $key"
say "signature: good (key $key)"

# --- 3. release.json, now trusted: flattened to path<TAB>token lines. ---
[ "$(wc -c < "$b/ferry/release.json")" -le 4194304 ] || die 'FERRY_ERR_BUNDLE_MALFORMED: release.json is too large'
declare -A J=() LEN=()
flatten() {
  local -a stack=() keys=()
  local -a idx=()
  local tok prefix depth=0 expect_key=0 key='' k i
  while IFS= read -r tok; do
    case "$tok" in
      ','|':'|'}'|']') ;;
      *)
        if [ "$expect_key" = 1 ]; then key="${tok:1:${#tok}-2}"; expect_key=0; continue; fi
        prefix=''
        for ((i = 1; i < depth; i++)); do prefix+="${prefix:+.}${keys[i]}"; done
        if [ "$depth" -gt 0 ] && [ "${stack[depth-1]}" = a ]; then k="${idx[depth-1]}"; LEN["$prefix"]=$((k + 1)); else k="$key"; fi ;;
    esac
    case "$tok" in
      '{'|'[')
        [ "$depth" -eq 0 ] || keys[depth]="$k"
        depth=$((depth + 1)); idx[depth-1]=0
        if [ "$tok" = '{' ]; then stack[depth-1]=o; expect_key=1; else stack[depth-1]=a; fi ;;
      '}'|']') depth=$((depth - 1)) ;;
      ',') if [ "${stack[depth-1]}" = a ]; then idx[depth-1]=$((idx[depth-1] + 1)); else expect_key=1; fi ;;
      ':') ;;
      *) J["$prefix${prefix:+.}$k"]="$tok" ;;
    esac
  done < <(grep -oE '"([^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null|[][{}:,]' "$1")
}
# A JSON string token's value, its escapes decoded; a number or literal as it is.
jstr() {
  local t="$1" out='' c
  case "$t" in \"*\") t="${t:1:${#t}-2}" ;; *) printf '%s' "$t"; return ;; esac
  while [ -n "$t" ]; do
    c="${t%%\\*}"; out+="$c"; t="${t:${#c}}"
    [ -n "$t" ] || break
    case "${t:1:1}" in
      '"') out+='"' ;; '\') out+='\' ;; '/') out+='/' ;; b) out+=$'\b' ;; f) out+=$'\f' ;;
      n) out+=$'\n' ;; r) out+=$'\r' ;; t) out+=$'\t' ;;
      u) out+="$(printf "\\u${t:2:4}")"; t="${t:4}" ;;
      *) die 'FERRY_ERR_BUNDLE_MALFORMED: a bad escape in release.json' ;;
    esac
    t="${t:2}"
  done
  printf '%s' "$out"
}
get() { [ -n "${J[$1]+x}" ] && jstr "${J[$1]}"; }
has() { [ -n "${J[$1]+x}" ]; }
# Names of the keys directly under an object path (env names, label keys).
keys_of() { local p; for p in "${!J[@]}"; do case "$p" in "$1".*) p="${p#"$1".}"; case "$p" in *.*) ;; *) printf '%s\n' "$p" ;; esac ;; esac; done | sort; }
count_of() { printf '%s' "${LEN[$1]:-0}"; }
flatten "$b/ferry/release.json"

[ "$(get schema)" = 'ferry.bundle/v1' ] || die 'FERRY_ERR_BUNDLE_MALFORMED: release.json is not ferry.bundle/v1'
has base.releaseId && die "FERRY_ERR_BUNDLE_BASE_MISSING: a differential bundle (over release $(get base.releaseId)): apply a full bundle, or use ferry bundle apply"
has base.inventory.host && die "FERRY_ERR_BUNDLE_BASE_MISSING: a differential bundle (for the inventory of $(get base.inventory.host)): apply a full bundle, or use ferry bundle apply"
release_id="$(get release.id)"
say "release $release_id of $(get release.project)"

# --- 4. Digests: index.json is the one release.json signs; every blob is named by its SHA-256. ---
sha() { sha256sum "$1" | cut -d' ' -f1; }
[ "sha256:$(sha "$b/index.json")" = "$(get index.digest)" ] || die 'FERRY_ERR_BUNDLE_DIGEST: index.json is not the one release.json signs'
if [ -d "$b/blobs/sha256" ]; then
  (cd "$b/blobs/sha256" && for f in *; do printf '%s  %s\n' "$f" "$f"; done | sha256sum -c --quiet --status) \
    || die "FERRY_ERR_BUNDLE_DIGEST: a blob does not match its name: $(cd "$b/blobs/sha256" && for f in *; do printf '%s  %s\n' "$f" "$f"; done | sha256sum -c --quiet 2>/dev/null | head -n1)"
fi
blob() { local d="$1"; [[ "$d" =~ ^sha256:[0-9a-f]{64}$ ]] || die "FERRY_ERR_BUNDLE_MALFORMED: $d is not a digest"; printf '%s' "$b/blobs/sha256/${d#sha256:}"; }
services="$(count_of release.services)"
[ "$services" -ge 1 ] || die 'FERRY_ERR_BUNDLE_MALFORMED: no services'
for ((s = 0; s < services; s++)); do
  p="release.services.$s"
  name="$(get "$p.name")"
  [[ "$name" =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]] || die "FERRY_ERR_BUNDLE_MALFORMED: service name $name"
  for d in "$(get "$p.image.manifest")" "$(get "$p.image.id")"; do [ -f "$(blob "$d")" ] || die "FERRY_ERR_BUNDLE_MALFORMED: $name: no blob $d"; done
  grep -qF "\"digest\":\"$(get "$p.image.manifest")\"" "$b/index.json" || die "FERRY_ERR_BUNDLE_MALFORMED: index.json does not list $name's manifest"
  grep -qF "\"digest\":\"$(get "$p.image.id")\"" "$(blob "$(get "$p.image.manifest")")" || die "FERRY_ERR_BUNDLE_MALFORMED: $name's manifest does not name its config"
  layers="$(count_of "$p.image.layers")"
  for ((l = 0; l < layers; l++)); do
    d="$(get "$p.image.layers.$l.digest")"
    [ -f "$(blob "$d")" ] || die "FERRY_ERR_BUNDLE_MALFORMED: $name: no layer $d"
    grep -qF "\"digest\":\"$d\"" "$(blob "$(get "$p.image.manifest")")" || die "FERRY_ERR_BUNDLE_MALFORMED: $name's manifest does not name layer $d"
  done
  # What this script cannot do as the receiver would is refused before anything changes.
  for field in capAdd privileged pid ipc devices securityOpt route strategy canary drain; do
    case "$field=$(get "$p.spec.$field" || true)" in privileged=false|pid=private|ipc=private|strategy=stop-first) continue ;; esac
    if has "$p.spec.$field" || [ "$(count_of "$p.spec.$field")" -gt 0 ] || [ -n "$(keys_of "$p.spec.$field")" ]; then
      die "$name: the spec's $field is not supported by bundle-apply.sh (it supports env, network, ports, volumes, restart, labels, command, entrypoint, user, memory, cpus, health): use ferry bundle apply"
    fi
  done
done
say "blobs: every SHA-256 checked; $services service(s)"

# --- 5. Each image as a docker-archive: decompressed, checked against its diff id, loaded, proven. ---
for ((s = 0; s < services; s++)); do
  p="release.services.$s"
  name="$(get "$p.name")"; ref="$(get "$p.image.ref")"; id="$(get "$p.image.id")"
  [[ "$ref" =~ ^[a-z0-9][a-z0-9._/:-]{0,254}$ ]] || die "FERRY_ERR_BUNDLE_MALFORMED: image reference $ref"
  if [ "$(docker image inspect --format '{{.Id}}' "$id" 2>/dev/null || true)" = "$id" ]; then
    docker tag "$id" "$ref"; say "  $name: $ref already held ($id)"; continue
  fi
  a="$work/archive-$s"; mkdir -m 700 "$a"
  cp "$(blob "$id")" "$a/${id#sha256:}.json"
  layers="$(count_of "$p.image.layers")"; chain=''; names=''
  for ((l = 0; l < layers; l++)); do
    diff="$(get "$p.image.layers.$l.diffId")"
    [[ "$diff" =~ ^sha256:[0-9a-f]{64}$ ]] || die "FERRY_ERR_BUNDLE_MALFORMED: diff id $diff"
    if [ -z "$chain" ]; then chain="$diff"; else chain="sha256:$(printf '%s %s' "$chain" "$diff" | sha256sum | cut -d' ' -f1)"; fi
    mkdir -p "$a/${chain#sha256:}"
    zstd -q -d -c "$(blob "$(get "$p.image.layers.$l.digest")")" > "$a/${chain#sha256:}/layer.tar" || die "FERRY_ERR_BUNDLE_DIGEST: $name: layer $l does not decompress"
    [ "sha256:$(sha "$a/${chain#sha256:}/layer.tar")" = "$diff" ] || die "FERRY_ERR_BUNDLE_DIGEST: $name: layer $l does not decompress to its signed diff id $diff"
    names+="${names:+,}\"${chain#sha256:}/layer.tar\""
  done
  tag="$ref"; case "${ref##*/}" in *:*) ;; *) tag="$ref:latest" ;; esac
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":[%s]}]' "${id#sha256:}" "$tag" "$names" > "$a/manifest.json"
  tar -cf - -C "$a" . | docker load -q >/dev/null || die "$name: docker load failed"
  rm -rf -- "$a"
  loaded="$(docker image inspect --format '{{.Id}}' "$ref")"
  [ "$loaded" = "$id" ] || die "FERRY_ERR_BUNDLE_DIGEST: $name: the engine loaded $loaded, not the signed $id"
  say "  $name: loaded $ref ($id)"
done

# --- 6. The services, phase after phase: swap, health check, roll back on failure. ---
health_ok() { # $1 spec path, $2 container
  local h="$1.health" type tries interval timeout status url host port n
  type="$(get "$h.type" || true)"
  [ -n "$type" ] || { [ "$(docker inspect --format '{{.State.Running}}' "$2")" = true ]; return; }
  tries="$(get "$h.retries" || echo 30)"; interval="$(get "$h.intervalMs" || echo 1000)"; timeout="$(get "$h.timeoutMs" || echo 2000)"
  sleep "$(( $(get "$h.startPeriodMs" || echo 0) / 1000 ))"
  for ((n = 0; n < tries; n++)); do
    [ "$(docker inspect --format '{{.State.Running}}' "$2")" = true ] || return 1
    case "$type" in
      http)
        url="$(get "$h.url")"
        status="$(curl -s -o /dev/null -m "$(( (timeout + 999) / 1000 ))" -w '%{http_code}' -- "$url" || true)"
        if has "$h.expectStatus"; then [ "$status" = "$(get "$h.expectStatus")" ] && return 0
        elif [ "$status" -ge 200 ] 2>/dev/null && [ "$status" -lt 400 ]; then return 0; fi ;;
      tcp)
        host="$(get "$h.host")"; port="$(get "$h.port")"
        [[ "$host" =~ ^[A-Za-z0-9.:_-]+$ && "$port" =~ ^[0-9]+$ ]] || return 1
        timeout "$(( (timeout + 999) / 1000 ))" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null && return 0 ;;
      cmd) [ "$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$2")" = healthy ] && return 0 ;;
      *) return 1 ;;
    esac
    sleep "$(( interval / 1000 )).$(printf '%03d' $(( interval % 1000 )))"
  done
  return 1
}

run_args() { # fills args[] from the spec at $1
  local p="$1.spec" k n i
  args=(--network "$(get "$p.network" || echo bridge)")
  while IFS= read -r k; do [ -n "$k" ] && args+=(-e "$k=$(get "$p.env.$k")"); done < <(keys_of "$p.env")
  while IFS= read -r k; do [ -n "$k" ] && args+=(--label "$k=$(get "$p.labels.$k")"); done < <(keys_of "$p.labels")
  n="$(count_of "$p.ports")"; for ((i = 0; i < n; i++)); do args+=(-p "$(get "$p.ports.$i")"); done
  n="$(count_of "$p.volumes")"; for ((i = 0; i < n; i++)); do args+=(-v "$(get "$p.volumes.$i")"); done
  has "$p.restart" && args+=(--restart "$(get "$p.restart")")
  has "$p.user" && args+=(--user "$(get "$p.user")")
  has "$p.memory" && args+=(--memory "$(get "$p.memory")")
  has "$p.cpus" && args+=(--cpus "$(get "$p.cpus")")
  if has "$p.health.type" && [ "$(get "$p.health.type")" = cmd ]; then
    args+=(--health-interval "$(get "$p.health.intervalMs")ms" --health-timeout "$(get "$p.health.timeoutMs")ms" --health-retries "$(get "$p.health.retries")")
  fi
  cmd=()
  n="$(count_of "$p.entrypoint")"
  if [ "$n" -gt 0 ]; then args+=(--entrypoint "$(get "$p.entrypoint.0")"); for ((i = 1; i < n; i++)); do cmd+=("$(get "$p.entrypoint.$i")"); done
  fi
  n="$(count_of "$p.command")"; for ((i = 0; i < n; i++)); do cmd+=("$(get "$p.command.$i")"); done
}

deploy_service() { # $1 index; returns 1 after rolling back
  local p="release.services.$1" name ref old='' new
  name="$(get "$p.name")"; ref="$(get "$p.image.ref")"
  run_args "$p"
  if docker container inspect "$name" >/dev/null 2>&1; then
    old="$name.ferry-previous"
    docker rm -f "$old" >/dev/null 2>&1 || true
    docker rename "$name" "$old"
    docker stop "$old" >/dev/null
  fi
  if new="$(docker run -d --name "$name" --label ferry.service="$name" --label ferry.release="$release_id" "${args[@]}" "$ref" "${cmd[@]}" 2>"$work/run.err")" && health_ok "$p.spec" "$name"; then
    [ -z "$old" ] || docker rm -f "$old" >/dev/null
    say "  $name  COMPLETED  ${new:0:12}"
    return 0
  fi
  say "  $name  FAILED  $(head -c 300 "$work/run.err")" >&2
  docker rm -f "$name" >/dev/null 2>&1 || true
  if [ -n "$old" ]; then
    docker rename "$old" "$name" && docker start "$name" >/dev/null && say "  $name  ROLLED_BACK (the previous container runs again)"
  else
    say "  $name  ROLLED_BACK (no previous container)"
  fi
  return 1
}

phases="$(count_of release.phases)"
for ((f = 0; f < phases; f++)); do
  say "phase $((f + 1)) $(get "release.phases.$f.name")"
  for ((s = 0; s < services; s++)); do
    [ "$(get "release.services.$s.phase")" = "$f" ] || continue
    deploy_service "$s" || die "release $release_id failed at phase $((f + 1)); earlier phases stay deployed"
  done
done
say "release $release_id applied"
