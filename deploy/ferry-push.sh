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
#   --key-id ID                the signing key's id (or FERRY_KEY_ID)
#   --key-file PATH            its Ed25519 private key, PKCS#8 PEM as `openssl genpkey -algorithm
#                              ed25519` or `ferry key new` write it (or FERRY_KEY_FILE; FERRY_KEY
#                              may hold the PEM itself). The key is only ever passed to openssl
#                              as a file, never on a command line
#   --grant-file PATH          the key's grant, sent with every request as X-Ferry-Grant (or
#                              FERRY_GRANT_FILE; FERRY_GRANT may hold the grant itself), for a
#                              receiver that trusts the grant's issuer rather than the key
#   --host-key SHA256:…        the receiver's host key fingerprint: refuse a receiver that cannot
#                              prove it holds that key (FERRY_ERR_HOST_KEY_MISMATCH)
#   --env K=V                  container environment variable; repeat for more
#   --health URL|tcp://HOST:PORT|cmd   health check, run by the receiver on the target host
#   --health-interval MS       pause between probes (receiver default 1000)
#   --health-retries N         probes before giving up (receiver default 30)
#   --network host|bridge|none container network (default bridge)
#   --resumable-threshold BYTES  packages of at least BYTES go over the resumable upload
#                              (docs/protocol.md §10; default 67108864 = 64 MiB)
#   --part-size BYTES          resumable part size (default 33554432 = 32 MiB)
#   --json                     print the receiver's answer as one JSON line (stdout)
#   --registry URL             after a successful deployment, record it at the registry as the
#                              service's desired state on that host (or FERRY_REGISTRY_URL), the
#                              same record `ferry push` makes: PUT /v1/desired/HOST/NAME, signed
#                              with the same key, each env value replaced by its keyed digest
#                              (hmac-sha256:…, under a key derived from the signing key; docs/
#                              registry.md), and the config hash the receiver answered. A registry
#                              that refuses or cannot be reached is a warning: the deployment stands
#
# It first asks the receiver who it is (GET /v1/identity with a fresh challenge) and checks the
# answer's Ed25519 signature with openssl: the host id it proves is the audience every request is
# signed for. Prints the receiver's deployment record; on failure prints the error code
# (FERRY_ERR_…) and message and exits 1 (2: usage, 3: the receiver cannot be reached). Temporary
# files go to TMPDIR.
#
# FERRY_PUSH_TEST_CORRUPT is a test hook that MUST NOT be set otherwise: 1 flips one byte of the
# package after it was hashed (the receiver's digest check), signature flips one hex digit of
# every request's signature (the receiver's signature check).
set -euo pipefail
umask 077

PROG=ferry-push
EMPTY_DIGEST=blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
JSON=0

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
usage() { printf '%s: %s\nusage: deploy/ferry-push.sh IMAGE URL NAME [--key-id ID --key-file PATH] [--grant-file PATH] [--host-key SHA256:…] [--env K=V]… [--health URL] [--network host|bridge|none] [--resumable-threshold BYTES] [--registry URL] [--json]\n' "$PROG" "$1" >&2; exit 2; }
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
# canonical METHOD PATH TIMESTAMP NONCE DIGEST KEY-ID AUDIENCE [OFFSET]: the canonical string of
# §3.1, nine lines, no trailing newline.
canonical() {
  printf 'FERRY-ED25519-V1\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "${8:-}"
}
# ed25519_sign KEY-FILE MESSAGE-FILE: the Ed25519 signature of the file's bytes, 128 lowercase hex.
# openssl signs Ed25519 in one pass over a file it can size: not from a pipe.
ed25519_sign() {
  openssl pkeyutl -sign -inkey "$1" -rawin -in "$2" | od -An -v -tx1 | tr -d ' \n'
}
# sign METHOD PATH DIGEST [OFFSET]: sets HDR to the signed headers (and the grant) as curl arguments.
sign() {
  local ts nonce sig
  ts=$(date +%s); nonce=$(openssl rand -hex 16)
  canonical "$1" "$2" "$ts" "$nonce" "$3" "$KEY_ID" "$AUDIENCE" "${4:-}" > "$WORK/canonical"
  sig=$(ed25519_sign "$KEY_FILE" "$WORK/canonical") || sig=''
  [[ $sig =~ ^[0-9a-f]{128}$ ]] || fail FERRY_ERR_CONFIG "openssl could not sign with $KEY_FILE"
  if [ "${FERRY_PUSH_TEST_CORRUPT:-}" = signature ]; then
    case ${sig:0:1} in 0) sig=1${sig:1} ;; *) sig=0${sig:1} ;; esac
  fi
  HDR=(-H "X-Ferry-Key-Id: $KEY_ID" -H "X-Ferry-Timestamp: $ts" -H "X-Ferry-Nonce: $nonce"
       -H "X-Ferry-Content-Digest: $3" -H "X-Ferry-Audience: $AUDIENCE" -H "X-Ferry-Signature: $sig")
  [ -z "$GRANT" ] || HDR+=(-H "X-Ferry-Grant: $GRANT")
}

# unhex HEX: the bytes the hex digits stand for.
unhex() {
  local h=$1 out='' i
  for ((i = 0; i < ${#h}; i += 2)); do out+="\\x${h:i:2}"; done
  printf '%b' "$out"
}

# hex: stdin's bytes as lowercase hex.
hex() {
  od -An -v -tx1 | tr -d ' \n'
}

# hmac_sha256 KEY-HEX: HMAC-SHA256 (RFC 2104) of stdin, as hex. bash XORs the key into the pads
# itself, so the key is on no command line (openssl's -hmac and -macopt would put it there).
hmac_sha256() {
  local key=$1 i byte ipad='' opad='' inner
  [ "${#key}" -le 128 ] || fail FERRY_ERR_INTERNAL "an HMAC key longer than a SHA-256 block"
  while [ "${#key}" -lt 128 ]; do key+=0; done
  for ((i = 0; i < 128; i += 2)); do
    byte=$((16#${key:i:2}))
    printf -v ipad '%s\\x%02x' "$ipad" $((byte ^ 0x36))
    printf -v opad '%s\\x%02x' "$opad" $((byte ^ 0x5c))
  done
  inner=$({ printf '%b' "$ipad"; cat; } | openssl dgst -sha256 -binary | hex)
  { printf '%b' "$opad"; unhex "$inner"; } | openssl dgst -sha256 -binary | hex
}

# env_digests: sets DIGESTS_JSON to the env object the registry keeps, each value replaced by
# hmac-sha256:HEX of "NAME\0VALUE" under HKDF-SHA256(the key's PKCS#8 DER, no salt, info "ferry
# env digest v1", 32 bytes) — what `ferry push` records (docs/registry.md), so both digest alike.
env_digests() {
  local prk key kv
  DIGESTS_JSON=''
  [ "${#ENVS[@]}" -gt 0 ] || return 0
  # HKDF-Extract with an empty salt: HMAC under a zero key, of the key's DER.
  prk=$(openssl pkey -in "$KEY_FILE" -outform DER | hmac_sha256 '')
  # HKDF-Expand, one block: T(1) = HMAC(PRK, info || 0x01).
  key=$(printf 'ferry env digest v1\x01' | hmac_sha256 "$prk")
  for kv in "${ENVS[@]}"; do
    DIGESTS_JSON+="${DIGESTS_JSON:+,}\"${kv%%=*}\":\"hmac-sha256:$(printf '%s\0%s' "${kv%%=*}" "${kv#*=}" | hmac_sha256 "$key")\""
  done
}

# identity: asks GET /v1/identity with a fresh challenge and checks the signed answer (§3.6): the
# payload is signed by the key it names, over our challenge, and, with --host-key, that key is the
# one expected. Sets AUDIENCE (the host id) and HOST_FP (the host key's fingerprint).
identity() {
  local challenge type payload signature public
  challenge=$(openssl rand -base64 16 | tr '+/' '-_' | tr -d '=\n')
  request "$WORK/identity" "$URL/v1/identity?challenge=$challenge"
  [ "$STATUS" = 200 ] || fail FERRY_ERR_BAD_RESPONSE "$URL/v1/identity answered HTTP $STATUS: not a Ferry receiver that proves its identity"
  type=$(field type "$WORK/identity"); payload=$(field payload "$WORK/identity"); signature=$(field signature "$WORK/identity")
  [ "$type" = ferry.identity/v1 ] && [[ $payload =~ ^[A-Za-z0-9+/]+={0,2}$ ]] && [[ $signature =~ ^[0-9a-f]{128}$ ]] \
    || fail FERRY_ERR_BAD_RESPONSE "$URL/v1/identity: not a signed identity"
  printf '%s' "$payload" | openssl base64 -d -A > "$WORK/identity.payload"
  public=$(field publicKey "$WORK/identity.payload")
  [[ $public =~ ^[A-Za-z0-9+/]{43}=$ ]] || fail FERRY_ERR_BAD_RESPONSE "$URL/v1/identity: the identity names no Ed25519 public key"
  { unhex 302a300506032b6570032100; printf '%s' "$public" | openssl base64 -d -A; } > "$WORK/host.der"
  { printf 'FERRY-SIGNED-V1\nferry.identity/v1\n'; cat "$WORK/identity.payload"; } > "$WORK/identity.msg"
  unhex "$signature" > "$WORK/identity.sig"
  openssl pkeyutl -verify -pubin -keyform DER -inkey "$WORK/host.der" -rawin -in "$WORK/identity.msg" -sigfile "$WORK/identity.sig" >/dev/null 2>&1 \
    || fail FERRY_ERR_BAD_RESPONSE "$URL/v1/identity: the identity's signature does not verify"
  [ "$(field challenge "$WORK/identity.payload")" = "$challenge" ] \
    || fail FERRY_ERR_BAD_RESPONSE "$URL/v1/identity answers another challenge (a replayed answer)"
  HOST_FP=SHA256:$(printf '%s' "$public" | openssl base64 -d -A | openssl dgst -sha256 -binary | openssl base64 -A | tr -d '=')
  [ "$(field fingerprint "$WORK/identity.payload")" = "$HOST_FP" ] \
    || fail FERRY_ERR_BAD_RESPONSE "$URL/v1/identity names a fingerprint that is not its key's"
  if [ -n "$HOST_KEY" ] && [ "$HOST_FP" != "$HOST_KEY" ]; then
    fail FERRY_ERR_HOST_KEY_MISMATCH "$URL proved host key $HOST_FP, not the expected $HOST_KEY"
  fi
  AUDIENCE=$(field host "$WORK/identity.payload")
  [[ $AUDIENCE =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] || fail FERRY_ERR_BAD_RESPONSE "$URL/v1/identity names no host id"
}

# ---------------------------------------------------------------------------------- arguments --
IMAGE='' URL='' NAME='' NETWORK=bridge HEALTH='' HEALTH_INTERVAL='' HEALTH_RETRIES=''
THRESHOLD=67108864 PART=33554432 ENVS=()
KEY_ID=${FERRY_KEY_ID:-} KEY_FILE=${FERRY_KEY_FILE:-} GRANT_FILE=${FERRY_GRANT_FILE:-} HOST_KEY='' GRANT=''
REGISTRY=${FERRY_REGISTRY_URL:-}
positional=()
while [ "$#" -gt 0 ]; do
  case $1 in
    --key) usage "--key is gone: requests are signed with an Ed25519 key file, --key-file PATH (openssl genpkey -algorithm ed25519)" ;;
    --key-id|--key-file|--grant-file|--host-key|--env|--health|--health-interval|--health-retries|--network|--resumable-threshold|--part-size|--registry)
      [ "$#" -ge 2 ] || usage "$1 needs a value"
      case $1 in
        --key-id) KEY_ID=$2 ;; --key-file) KEY_FILE=$2 ;; --grant-file) GRANT_FILE=$2 ;; --host-key) HOST_KEY=$2 ;;
        --env) ENVS+=("$2") ;; --health) HEALTH=$2 ;;
        --health-interval) HEALTH_INTERVAL=$2 ;; --health-retries) HEALTH_RETRIES=$2 ;;
        --network) NETWORK=$2 ;; --resumable-threshold) THRESHOLD=$2 ;; --part-size) PART=$2 ;;
        --registry) REGISTRY=$2 ;;
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
[ -n "$KEY_ID" ] && { [ -n "$KEY_FILE" ] || [ -n "${FERRY_KEY:-}" ]; } \
  || usage "a signing key is required: --key-id ID --key-file PATH, or FERRY_KEY_ID and FERRY_KEY_FILE"
[[ $KEY_ID =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] || usage "--key-id: letters, digits, '.', '_' and '-', at most 128"
[ -z "$HOST_KEY" ] || [[ $HOST_KEY =~ ^SHA256:[A-Za-z0-9+/]{43}$ ]] || usage "--host-key takes a fingerprint, SHA256: and 43 base64 characters"
[[ $URL =~ ^https?://[^/]+$ ]] || usage "URL must be http(s)://host:port (got '$URL')"
REGISTRY=${REGISTRY%/}
[ -z "$REGISTRY" ] || [[ $REGISTRY =~ ^https?://[^/]+$ ]] || usage "--registry must be http(s)://host:port (got '$REGISTRY')"
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

# The key: a file openssl reads. PEM text from FERRY_KEY goes to a file of our own (0600 by the
# umask), written by printf, a builtin, so it is on no command line either.
if [ -z "$KEY_FILE" ]; then
  KEY_FILE=$WORK/key.pem
  printf '%s\n' "$FERRY_KEY" > "$KEY_FILE"
fi
[ -r "$KEY_FILE" ] || usage "the key file $KEY_FILE cannot be read"
[ "$(openssl pkey -in "$KEY_FILE" -noout -text_pub 2>/dev/null | head -n 1)" = 'ED25519 Public-Key:' ] \
  || usage "$KEY_FILE is not an Ed25519 private key in PEM (make one with: openssl genpkey -algorithm ed25519 -out KEY.pem)"
# The grant travels as base64url of the grant file's bytes: whatever JSON the file holds is what
# the receiver parses, and the grant's own payload is signed as base64 inside it.
if [ -n "$GRANT_FILE" ] || [ -n "${FERRY_GRANT:-}" ]; then
  if [ -z "$GRANT_FILE" ]; then GRANT_FILE=$WORK/grant; printf '%s' "$FERRY_GRANT" > "$GRANT_FILE"; fi
  [ -r "$GRANT_FILE" ] || usage "the grant file $GRANT_FILE cannot be read"
  if [ "$(tr -d ' \t\r\n' < "$GRANT_FILE" | head -c 1)" = '{' ]; then
    GRANT=$(openssl base64 -A < "$GRANT_FILE" | tr '+/' '-_' | tr -d '=')
  else
    GRANT=$(tr -d ' \t\r\n' < "$GRANT_FILE")
  fi
  # (A bound as in {1,8192} would make bash's regex compile for the better part of a minute.)
  [[ $GRANT =~ ^[A-Za-z0-9_-]+$ ]] && [ "${#GRANT}" -le 8192 ] || usage "$GRANT_FILE is not a grant (its JSON, or the base64url of it, at most 8192 characters)"
fi

# request FILE CURL-ARGS…: runs curl, body to FILE, answer headers to FILE.h, the status to
# STATUS. No answer at all is FERRY_ERR_RECEIVER_UNREACHABLE (exit 3).
request() {
  local out=$1 rc=0; shift
  STATUS=$(curl -sS -o "$out" -D "$out.h" -w '%{http_code}' "$@" 2> "$WORK/curl.err") || rc=$?
  if [ "$rc" != 0 ] && [ "${STATUS:-000}" = 000 ]; then
    fail FERRY_ERR_RECEIVER_UNREACHABLE "$URL: $(tr -d '\n' < "$WORK/curl.err")" 3
  fi
}
# service_json ENV-JSON: the manifest's service object with the given env members (values, or
# their digests for the registry).
service_json() { printf '{"name":"%s","env":{%s},"network":"%s"%s}' "$NAME" "$1" "$NETWORK" "$health_json"; }
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" "$2" | head -n 1; }
header() { tr -d '\r' < "$2.h" | sed -n "s/^$1: *//Ip" | tail -n 1; }

# record_desired ANSWER: records the completed deployment at the registry (--registry) as the
# service's desired state on the host, as `ferry push` does. Never fails the push: the deployment
# already happened, so a refusal or an unreachable registry is a warning.
record_desired() {
  # The host id the receiver proved names the record; the request is signed for the registry,
  # whose id is the audience sign() uses while this function runs.
  local host=$AUDIENCE config registry_id status code AUDIENCE
  config=$(field configHash "$1")
  [[ $config =~ ^sha256:[0-9a-f]{64}$ ]] || { say "warning: $NAME was deployed, but $URL did not answer its config hash: not recorded at $REGISTRY"; return 0; }
  status=$(curl -sS -o "$WORK/registry" -w '%{http_code}' "$REGISTRY/healthz" 2> "$WORK/curl.err") || true
  registry_id=$(field host "$WORK/registry")
  if [ "$status" != 200 ] || ! [[ $registry_id =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]]; then
    say "warning: $NAME was deployed, but the registry at $REGISTRY could not be asked who it is (HTTP ${status:-000}$(tr -d '\n' < "$WORK/curl.err" | sed 's/^/: /')): not recorded"
    return 0
  fi
  env_digests
  printf '{"deploymentId":"%s","image":"%s","imageId":"%s","configHash":"%s","service":%s,"targetUrl":"%s"}' \
    "$DEPLOYMENT_ID" "$(json_escape "$IMAGE")" "$ID" "$config" "$(service_json "$DIGESTS_JSON")" "$URL" > "$WORK/desired.json"
  AUDIENCE=$registry_id
  sign PUT "/v1/desired/$host/$NAME" "blake3:$(b3sum --no-names "$WORK/desired.json")"
  status=$(curl -sS -o "$WORK/registry" -w '%{http_code}' -X PUT "$REGISTRY/v1/desired/$host/$NAME" "${HDR[@]}" \
    -H 'Content-Type: application/json' --data-binary "@$WORK/desired.json" 2> "$WORK/curl.err") || true
  if [ "$status" = 200 ]; then say "recorded as the desired state of $NAME on $host at $REGISTRY"; return 0; fi
  code=$(grep -o '"code":"FERRY_ERR_[A-Z_]*"' "$WORK/registry" | head -n 1 | cut -d'"' -f4)
  say "warning: $NAME was deployed, but the registry at $REGISTRY did not record it: ${code:-HTTP ${status:-000}}$(tr -d '\n' < "$WORK/curl.err" | sed 's/^/: /')"
}

# finish STATUS FILE: prints the receiver's answer and exits with its outcome.
finish() {
  local status=$1 body=$2 code message
  if [ "$status" = 200 ] && grep -q '"state":"COMPLETED"' "$body"; then
    [ -z "$REGISTRY" ] || record_desired "$body"
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
identity
say "$URL is $AUDIENCE, host key $HOST_FP"

ID=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null) || fail FERRY_ERR_IMAGE_NOT_FOUND "$IMAGE is not on the local engine${DOCKER_HOST:+ ($DOCKER_HOST)}"
LAYERS=$(docker image inspect -f '{{json .RootFS.Layers}}' "$ID")
say "packaging $IMAGE ($ID)"
# By id: the archive names no tags; the receiver tags IMAGE itself (§5.2).
docker save "$ID" | zstd -q -3 -T0 -o "$WORK/package" || fail FERRY_ERR_DOCKER "docker save $ID failed"
SIZE=$(stat -c %s "$WORK/package")
DIGEST=blake3:$(b3sum --no-names "$WORK/package")

DEPLOYMENT_ID=$(cat /proc/sys/kernel/random/uuid)
printf '{"schema":"ferry.manifest/v1","deploymentId":"%s","createdAt":"%s","image":{"ref":"%s","id":"%s","diffIds":%s},"package":{"format":"docker-archive","compression":"zstd","size":%s,"digest":"%s"},"service":%s}' \
  "$DEPLOYMENT_ID" "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" "$(json_escape "$IMAGE")" "$ID" "$LAYERS" \
  "$SIZE" "$DIGEST" "$(service_json "$env_json")" > "$WORK/manifest.json"
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
