#!/usr/bin/env bash
# deploy/ferry-push.sh - push and deploy an image to a Ferry receiver with docker, zstd, b3sum,
# openssl and curl only: the shell fallback for when the ferry CLI is not at hand. It speaks
# docs/protocol.md (version 1) and nothing else.
#
# Usage: deploy/ferry-push.sh IMAGE URL NAME [options]
#
#   IMAGE   image on the local engine (DOCKER_HOST), also the ref it is tagged as on the target
#   URL     receiver base URL, e.g. http://10.0.0.5:7701
#   NAME    service (container) name on the target
#
# Options:
#   --key-id ID --key SECRET   signing key (prefer FERRY_KEY_ID / FERRY_KEY in the environment:
#                              an argument is visible to other local users in ps)
#   --env K=V                  container environment variable; repeat for more
#   --health URL|tcp://HOST:PORT|cmd   health check, run by the receiver on the target host
#   --health-interval MS       pause between probes (receiver default 1000)
#   --health-retries N         probes before giving up (receiver default 30)
#   --network host|bridge|none container network (default bridge)
#   --resumable-threshold BYTES  packages of at least BYTES go over the resumable upload
#                              (docs/protocol.md §10; default 67108864 = 64 MiB)
#   --part-size BYTES          resumable part size (default 33554432 = 32 MiB)
#   --json                     print the receiver's answer as one JSON line (stdout)
#
# Prints the receiver's deployment record; on failure prints the error code (FERRY_ERR_…) and
# message and exits 1 (2: usage, 3: the receiver cannot be reached). Temporary files go to TMPDIR.
#
# FERRY_PUSH_TEST_CORRUPT=1 flips one byte of the package after it was hashed: a test hook for
# the receiver's digest check. It MUST NOT be set otherwise.
set -euo pipefail
umask 077

PROG=ferry-push
EMPTY_DIGEST=blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
JSON=0

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
usage() { printf '%s: %s\nusage: deploy/ferry-push.sh IMAGE URL NAME [--key-id ID --key SECRET] [--env K=V]… [--health URL] [--network host|bridge|none] [--resumable-threshold BYTES] [--json]\n' "$PROG" "$1" >&2; exit 2; }
# fail CODE MESSAGE [EXIT]: the one way out on failure, the code first so scripts can match it.
fail() {
  if [ "$JSON" = 1 ]; then printf '{"error":{"code":"%s","message":"%s"}}\n' "$1" "$(json_escape "$2")"; fi
  printf '%s: %s: %s\n' "$PROG" "$1" "$2" >&2
  exit "${3:-1}"
}

# json_escape STRING: the body of a JSON string literal.
json_escape() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}; s=${s//$'\t'/\\t}
  case $s in *[$'\x01'-$'\x1f']*) usage "control characters are not allowed in values" ;; esac
  printf '%s' "$s"
}

# ------------------------------------------------------------------ signing (docs/protocol.md §3) --
# sign METHOD PATH DIGEST [OFFSET]: sets HDR to the six signed headers as curl arguments. The
# HMAC is computed from two SHA-256 passes (RFC 2104) so the secret never appears on a command
# line, where `openssl dgst -hmac SECRET` would show it to every local user.
hmac() {  # KEY < MESSAGE → lowercase hex HMAC-SHA256
  local LC_ALL=C k=$1 h='' i ip='' op=''
  if ((${#k} > 64)); then h=$(printf '%s' "$k" | openssl dgst -sha256 -hex | awk '{print $NF}')
  else for ((i = 0; i < ${#k}; i++)); do printf -v h '%s%02x' "$h" "'${k:i:1}"; done; fi
  h+=$(printf '%0128d' 0)
  for ((i = 0; i < 128; i += 2)); do
    printf -v ip '%s\\x%02x' "$ip" $((0x${h:i:2} ^ 0x36)); printf -v op '%s\\x%02x' "$op" $((0x${h:i:2} ^ 0x5c))
  done
  { printf "$op"; { printf "$ip"; cat; } | openssl dgst -sha256 -binary; } | openssl dgst -sha256 -hex | awk '{print $NF}'
}
sign() {
  local ts nonce sig
  ts=$(date +%s); nonce=$(openssl rand -hex 16)
  sig=$(printf 'FERRY-HMAC-SHA256-V1\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s' "$1" "$2" "$ts" "$nonce" "$3" "$KEY_ID" "$AUDIENCE" "${4:-}" | hmac "$KEY")
  HDR=(-H "X-Ferry-Key-Id: $KEY_ID" -H "X-Ferry-Timestamp: $ts" -H "X-Ferry-Nonce: $nonce"
       -H "X-Ferry-Content-Digest: $3" -H "X-Ferry-Audience: $AUDIENCE" -H "X-Ferry-Signature: $sig")
}

# ---------------------------------------------------------------------------------- arguments --
IMAGE='' URL='' NAME='' NETWORK=bridge HEALTH='' HEALTH_INTERVAL='' HEALTH_RETRIES=''
THRESHOLD=67108864 PART=33554432 ENVS=()
KEY_ID=${FERRY_KEY_ID:-} KEY=${FERRY_KEY:-}
positional=()
while [ "$#" -gt 0 ]; do
  case $1 in
    --key-id|--key|--env|--health|--health-interval|--health-retries|--network|--resumable-threshold|--part-size)
      [ "$#" -ge 2 ] || usage "$1 needs a value"
      case $1 in
        --key-id) KEY_ID=$2 ;; --key) KEY=$2 ;; --env) ENVS+=("$2") ;; --health) HEALTH=$2 ;;
        --health-interval) HEALTH_INTERVAL=$2 ;; --health-retries) HEALTH_RETRIES=$2 ;;
        --network) NETWORK=$2 ;; --resumable-threshold) THRESHOLD=$2 ;; --part-size) PART=$2 ;;
      esac
      shift 2 ;;
    --json) JSON=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; positional+=("$@"); break ;;
    -*) usage "unknown option $1" ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ "${#positional[@]}" = 3 ] || usage "IMAGE, URL and NAME are required"
IMAGE=${positional[0]} URL=${positional[1]%/} NAME=${positional[2]}
[ -n "$KEY_ID" ] && [ -n "$KEY" ] || usage "a signing key is required: --key-id ID --key SECRET, or FERRY_KEY_ID and FERRY_KEY"
[[ $URL =~ ^https?://[^/]+$ ]] || usage "URL must be http(s)://host:port (got '$URL')"
[[ $NAME =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]] || usage "NAME must be lowercase letters, digits, - and _, at most 63 (got '$NAME')"
case $NETWORK in host|bridge|none) ;; *) usage "--network must be host, bridge or none" ;; esac
for n in THRESHOLD PART HEALTH_INTERVAL HEALTH_RETRIES; do
  [[ ${!n} =~ ^([1-9][0-9]*)?$ ]] || usage "--$(tr 'A-Z_' 'a-z-' <<< "$n") must be a positive whole number"
done
env_json=''
for kv in "${ENVS[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage "--env takes KEY=VALUE (got '${kv%%=*}')"
  env_json+="${env_json:+,}\"${kv%%=*}\":\"$(json_escape "${kv#*=}")\""
done
timing="${HEALTH_INTERVAL:+,\"intervalMs\":$HEALTH_INTERVAL}${HEALTH_RETRIES:+,\"retries\":$HEALTH_RETRIES}"
case $HEALTH in
  '') health_json='' ;;
  cmd) health_json=",\"health\":{\"type\":\"cmd\"$timing}" ;;
  tcp://*:*) health_json=",\"health\":{\"type\":\"tcp\",\"host\":\"$(json_escape "${HEALTH#tcp://}" | sed 's/:[0-9]*$//; s/^\[//; s/\]$//')\",\"port\":${HEALTH##*:}$timing}" ;;
  http://*|https://*) health_json=",\"health\":{\"type\":\"http\",\"url\":\"$(json_escape "$HEALTH")\"$timing}" ;;
  *) usage "--health takes an http(s):// URL, tcp://HOST:PORT or cmd" ;;
esac

for tool in docker zstd b3sum openssl curl; do
  command -v "$tool" >/dev/null 2>&1 || fail FERRY_ERR_USAGE "$tool is required but not installed" 2
done

# ------------------------------------------------------------------------------------ helpers --
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-push.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# request FILE CURL-ARGS…: runs curl, body to FILE, answer headers to FILE.h, the status to
# STATUS. No answer at all is FERRY_ERR_RECEIVER_UNREACHABLE (exit 3).
request() {
  local out=$1 rc=0; shift
  STATUS=$(curl -sS -o "$out" -D "$out.h" -w '%{http_code}' "$@" 2> "$WORK/curl.err") || rc=$?
  if [ "$rc" != 0 ] && [ "${STATUS:-000}" = 000 ]; then
    fail FERRY_ERR_RECEIVER_UNREACHABLE "$URL: $(tr -d '\n' < "$WORK/curl.err")" 3
  fi
}
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" "$2" | head -n 1; }
header() { tr -d '\r' < "$2.h" | sed -n "s/^$1: *//Ip" | tail -n 1; }

# finish STATUS FILE: prints the receiver's answer and exits with its outcome.
finish() {
  local status=$1 body=$2 code message
  if [ "$status" = 200 ] && grep -q '"state":"COMPLETED"' "$body"; then
    if [ "$JSON" = 1 ]; then cat "$body"; echo
    else
      say "$NAME is running $IMAGE on $(field host "$body")"
      printf 'deployment %s\ncontainer  %s\nstate      COMPLETED\n' "$(field deploymentId "$body")" "$(field containerId "$body")"
    fi
    exit 0
  fi
  code=$(grep -o '"code":"FERRY_ERR_[A-Z_]*"' "$body" | head -n 1 | cut -d'"' -f4)
  message=$(grep -o '"message":"[^"]*"' "$body" | head -n 1 | cut -d'"' -f4)
  if [ -z "$code" ]; then code=FERRY_ERR_BAD_RESPONSE; message="HTTP $status: $(head -c 200 "$body" | tr -d '\n')"; fi
  if [ "$JSON" = 1 ]; then cat "$body"; echo; fi
  printf '%s: %s: %s\n' "$PROG" "$code" "${message:-HTTP $status}" >&2
  exit 1
}

# ---------------------------------------------------------------------------------- package --
request "$WORK/healthz" "$URL/healthz"
AUDIENCE=$(field host "$WORK/healthz")
[ "$STATUS" = 200 ] && [ -n "$AUDIENCE" ] || fail FERRY_ERR_BAD_RESPONSE "$URL/healthz answered $STATUS without a host id"

ID=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null) || fail FERRY_ERR_IMAGE_NOT_FOUND "$IMAGE is not on the local engine${DOCKER_HOST:+ ($DOCKER_HOST)}"
LAYERS=$(docker image inspect -f '{{json .RootFS.Layers}}' "$ID")
say "packaging $IMAGE ($ID)"
# By id: the archive names no tags; the receiver tags IMAGE itself (§5.2).
docker save "$ID" | zstd -q -3 -T0 -o "$WORK/package" || fail FERRY_ERR_DOCKER "docker save $ID failed"
SIZE=$(stat -c %s "$WORK/package")
DIGEST=blake3:$(b3sum --no-names "$WORK/package")

printf '{"schema":"ferry.manifest/v1","deploymentId":"%s","createdAt":"%s","image":{"ref":"%s","id":"%s","diffIds":%s},"package":{"format":"docker-archive","compression":"zstd","size":%s,"digest":"%s"},"service":{"name":"%s","env":{%s},"network":"%s"%s}}' \
  "$(cat /proc/sys/kernel/random/uuid)" "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" "$(json_escape "$IMAGE")" "$ID" "$LAYERS" \
  "$SIZE" "$DIGEST" "$NAME" "$env_json" "$NETWORK" "$health_json" > "$WORK/manifest.json"
MANIFEST_DIGEST=blake3:$(b3sum --no-names "$WORK/manifest.json")

if [ "${FERRY_PUSH_TEST_CORRUPT:-}" = 1 ]; then
  last=$(tail -c 1 "$WORK/package" | od -An -tu1 | tr -d ' ')
  printf "\\x$(printf '%02x' $((last ^ 1)))" | dd of="$WORK/package" bs=1 seek=$((SIZE - 1)) conv=notrunc status=none
fi

# ------------------------------------------------------------------------ one-shot (§5) --
if [ "$SIZE" -lt "$THRESHOLD" ]; then
  say "uploading $SIZE bytes to $URL (one-shot)"
  sign POST /v1/packages "$MANIFEST_DIGEST"
  request "$WORK/answer" "$URL/v1/packages" "${HDR[@]}" -H 'Expect: 100-continue' \
    -F "manifest=<$WORK/manifest.json;type=application/json" \
    -F "package=@$WORK/package;type=application/octet-stream;filename=package"
  finish "$STATUS" "$WORK/answer"
fi

# ----------------------------------------------------------------------- resumable (§10) --
sign POST /v1/uploads "$MANIFEST_DIGEST"
request "$WORK/answer" "$URL/v1/uploads" "${HDR[@]}" -H 'Content-Type: application/json' --data-binary "@$WORK/manifest.json"
case $STATUS in 200|201) ;; *) finish "$STATUS" "$WORK/answer" ;; esac
UPLOAD=$(field uploadId "$WORK/answer")
OFFSET=$(field offset "$WORK/answer")
[[ $UPLOAD =~ ^[0-9a-f]{32}$ ]] && [[ $OFFSET =~ ^[0-9]+$ ]] || fail FERRY_ERR_BAD_RESPONSE "the create answer has no upload id"
say "resumable upload $UPLOAD: $SIZE bytes in parts of $PART from offset $OFFSET"
failures=0
while [ "$OFFSET" -lt "$SIZE" ]; do
  len=$((SIZE - OFFSET < PART ? SIZE - OFFSET : PART))
  dd if="$WORK/package" of="$WORK/part" iflag=skip_bytes,count_bytes skip="$OFFSET" count="$len" bs=1M status=none
  sign PATCH "/v1/uploads/$UPLOAD" "blake3:$(b3sum --no-names "$WORK/part")" "$OFFSET"
  request "$WORK/answer" -X PATCH "$URL/v1/uploads/$UPLOAD" "${HDR[@]}" -T "$WORK/part" \
    -H "Upload-Offset: $OFFSET" -H 'Content-Type: application/offset+octet-stream'
  next=$(header Upload-Offset "$WORK/answer")
  if [ "$STATUS" = 204 ]; then OFFSET=${next:-$((OFFSET + len))}; failures=0; continue; fi
  # A part that did not land (busy, wrong offset, damaged on the way, disk full, 5xx) is sent
  # again from the receiver's offset; anything else is final, and so is a 422 without
  # details.offset: the whole file does not match the manifest (§10.4).
  case $STATUS in
    409|507|5??) ;;
    422) grep -q '"offset":' "$WORK/answer" || finish "$STATUS" "$WORK/answer" ;;
    *) finish "$STATUS" "$WORK/answer" ;;
  esac
  failures=$((failures + 1))
  [ "$failures" -lt 6 ] || finish "$STATUS" "$WORK/answer"
  say "part at $OFFSET: HTTP $STATUS, resuming from ${next:-$OFFSET}"
  OFFSET=${next:-$OFFSET}
  sleep "$failures"
done
sign POST "/v1/uploads/$UPLOAD/deploy" "$EMPTY_DIGEST"
request "$WORK/answer" -X POST "$URL/v1/uploads/$UPLOAD/deploy" "${HDR[@]}"
finish "$STATUS" "$WORK/answer"
